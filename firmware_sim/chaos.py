"""The chaos harness (``onecard-sim soak``): the whole chain under load while faults land.

Real processes, so that ``kill -9`` is real: a private mosquitto from ``broker init``,
``onecard-central serve`` and one ``onecard-edge run`` per site, each edge reaching the
broker through its own :class:`~firmware_sim.faultproxy.FaultProxy` and keeping its data on
a small tmpfs (so its disk can be filled). The terminals — a door, an attendance clock, two
tills and a recharge kiosk per site — run in this process and log every decision they were
told (:mod:`firmware_sim.invariants`).

A seeded controller injects, one after another, ``kill -9`` of an edge, of central and of
the broker, every network fault of the proxy, a full disk at an edge, and central killed as
it starts a feed snapshot for a newly installed site; alongside, terminal links are cut
(doors and clocks buffer and upload later) and terminal clocks jump. After the last fault
the harness waits for the chain to converge and checks the books
(:func:`firmware_sim.invariants.check`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pwd
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from central import master
from central.adapters.sqlite_store import CentralStore
from central.provision import add_site, init_broker
from firmware_sim.chain_demo import free_port, tls_ready
from firmware_sim.faultproxy import FaultProxy, Mode
from firmware_sim.invariants import SoakLog, Verdict, check
from firmware_sim.link import LinkClosedError, ReplyTimeoutError
from firmware_sim.terminals import (
    AttendanceClock,
    DoorReader,
    Outcome,
    PosTerminal,
    RechargeKiosk,
    Terminal,
    TerminalSettings,
)
from protocol import auth
from protocol.terminal import Body, Tap

BIN = Path(sys.executable).parent
KINDS = {
    "DOOR-01": "door",
    "CLOCK-01": "attendance",
    "POS-01": "pos",
    "POS-02": "pos",
    "KIOSK-01": "recharge",
}
#: The faults of the main lane (one at a time) and of the terminal lane (alongside).
INFRA_FAULTS = (
    "edge_kill9",
    "central_kill9",
    "broker_kill9",
    "net_drop",
    "net_delay",
    "net_stall",
    "net_reset",
    "net_half_open",
    "disk_full",
    "central_kill9_in_snapshot",
)
TERMINAL_FAULTS = ("terminal_cut", "clock_jump")
ALL_FAULTS = INFRA_FAULTS + TERMINAL_FAULTS
TMPFS_BYTES = 256 * 1024 * 1024
#: The edge's ``[store] reserve_mb``: below it money is refused ``disk_full``.
RESERVE_MB = 8
#: A clock jump larger than the policy's ``clock_skew_s`` (300 s), so central must flag it.
CLOCK_JUMP_MS = 900_000
START_TIMEOUT_S = 30.0
#: A running edge whose status.json is older than this is hung.
HUNG_AFTER_S = 30.0


@dataclass(slots=True)
class SoakSettings:
    """One soak run."""

    duration_s: float = 600.0
    sites: int = 2
    seed: int = 2026
    #: Enough that a new site's snapshot takes a moment to send (central is killed in it).
    members: int = 1200
    #: After the traffic stops: how long the chain may take to converge.
    converge_timeout_s: float = 180.0
    keep_dir_on_failure: bool = True


def member_uid(i: int) -> str:
    """The i-th member's card."""
    return f"0900{i:010X}"


# -- processes ------------------------------------------------------------------------------


@dataclass(eq=False)
class Daemon:
    """A child process the harness may kill -9 and restart; a supervisor restarts it when it
    dies on its own (as systemd's ``Restart=always`` would) and counts that."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = False
    unexpected_exits: int = 0
    restarts: int = 0

    def start(self) -> None:
        """Spawn it (its output appended to ``log_path``)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own argv
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.wanted = True

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL, and no restart until :meth:`start`."""
        self.wanted = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (then SIGKILL after ``timeout``)."""
        self.wanted = False
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def supervise(self) -> None:
        """Restart a process that should be running but is not."""
        if self.wanted and not self.running:
            self.unexpected_exits += 1
            self.restarts += 1
            self.start()

    def log_text(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _running(daemon: Daemon | None) -> Daemon:
    if daemon is None:
        raise RuntimeError("the daemon was never started")
    return daemon


async def _until(what: str, predicate: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# -- terminals that log what they were told -------------------------------------------------


class _Logged(Terminal):
    """Logs every record number sent and every decision shown (see :class:`SoakLog`)."""

    soak: SoakLog
    site_id: str

    async def tap_card(self, tap: Tap) -> Outcome:
        """Note the rec as sent, then what the terminal was told."""
        self.soak.sent(self.site_id, self.id, tap.rec)
        outcome = await super().tap_card(tap)
        self.soak.told(self.site_id, self.id, self.kind, outcome, skewed=self.clock_skew_ms != 0)
        return outcome


class ChaosDoor(_Logged, DoorReader):
    """A door reader that logs."""


class ChaosClock(_Logged, AttendanceClock):
    """An attendance clock that logs."""


class ChaosPos(_Logged, PosTerminal):
    """A till that logs (its resent TAP after a reconnect included)."""


class ChaosKiosk(_Logged, RechargeKiosk):
    """A kiosk that logs every phase sent and every commit's result, keyed by pay_ref."""

    async def _phase(self, body: Body) -> Any:
        self.soak.sent(self.site_id, self.id, int(getattr(body, "rec", 0)))
        return await super()._phase(body)

    async def _commit(self, pending: Any, started: float) -> Outcome:
        self.soak.paid(self.site_id, pending.pay_ref, pending.amount)
        outcome = await super()._commit(pending, started)
        self.soak.committed(
            self.site_id, self.id, pending.pay_ref, outcome, skewed=self.clock_skew_ms != 0
        )
        return outcome


CLASSES: dict[str, type[Terminal]] = {
    "door": ChaosDoor,
    "attendance": ChaosClock,
    "pos": ChaosPos,
    "recharge": ChaosKiosk,
}


@dataclass(eq=False)
class SimTerminal:
    """A terminal and its driver's state: cut off until ``cut_until``."""

    site: str
    terminal: Terminal
    cut_until: float = 0.0


# -- one site -------------------------------------------------------------------------------


@dataclass(eq=False)
class SiteRig:
    """One site: its proxy, tmpfs data dir, edge daemon and terminals."""

    site: str
    home: Path
    proxy: FaultProxy
    edge: Daemon
    tcp_port: int
    mounted: bool = False
    terminals: list[SimTerminal] = field(default_factory=list)
    joined: bool = False

    @property
    def data_dir(self) -> Path:
        """The edge's data dir (a tmpfs when mounting works)."""
        return self.home / "data"

    @property
    def database(self) -> Path:
        """The edge's SQLite file."""
        return self.data_dir / "edge.db"

    @property
    def ballast(self) -> Path:
        """The file that fills the disk."""
        return self.data_dir / "ballast"

    def status(self) -> dict[str, Any] | None:
        """The edge's last status.json (None before the first)."""
        try:
            result: dict[str, Any] = json.loads((self.data_dir / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return result

    def disk_use_mib(self) -> tuple[float, float]:
        """(database, WAL) sizes in MiB: how much of its disk the edge needed."""
        sizes = []
        for path in (self.database, self.database.with_name("edge.db-wal")):
            try:
                sizes.append(round(path.stat().st_size / 2**20, 1))
            except OSError:
                sizes.append(0.0)
        return sizes[0], sizes[1]

    def outbox(self) -> tuple[int, float | None]:
        """(unacked records, age in s of the oldest) read from the edge's database."""
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=2)
            ) as conn:
                count, oldest = conn.execute(
                    "SELECT count(*), min(created_ms) FROM outbox WHERE acked = 0"
                ).fetchone()
        except sqlite3.Error:
            return -1, None
        age = None if oldest is None else max(0.0, time.time() - oldest / 1000)
        return int(count), age


# -- the harness ----------------------------------------------------------------------------


class Soak:
    """Builds the chain, drives traffic and faults, then checks convergence and the books."""

    def __init__(self, settings: SoakSettings, out: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.out = out
        self.rng = random.Random(settings.seed)
        self.base = Path(tempfile.mkdtemp(prefix="onecard-soak-"))
        self.base.chmod(0o711)  # mosquitto's own user must reach its directory
        self.log = SoakLog()
        self.regular = [f"SOAK-{i + 1:02d}" for i in range(settings.sites)]
        late_count = max(1, int(settings.duration_s // 300))
        self.late = [f"LATE-{i + 1:02d}" for i in range(late_count)]
        self.keys = {
            (site, tid): auth.new_key() for site in self.regular + self.late for tid in KINDS
        }
        self.rigs: dict[str, SiteRig] = {}
        self.broker: Daemon | None = None
        self.central: Daemon | None = None
        self.broker_port = 0
        self.stop_traffic = asyncio.Event()
        self.stop_all = asyncio.Event()
        self.faults: Counter[str] = Counter()
        self.not_injected: dict[str, str] = {}
        self.fault_log: list[tuple[float, str, str]] = []
        self.last_fault_end = 0.0
        self.max_outbox_age_s = 0.0
        self.snapshot_interrupted = 0
        self.hung: set[str] = set()
        self._payments = itertools.count(1)
        self._site_of: dict[Terminal, str] = {}
        self.started = 0.0

    # -- set-up -----------------------------------------------------------------------------

    @property
    def broker_dir(self) -> Path:
        """Where ``broker init`` wrote the broker's files."""
        return self.base / "broker"

    @property
    def central_db(self) -> Path:
        """Central's database."""
        return self.base / "central.db"

    def _provision(self) -> None:
        self.broker_port = free_port()
        init_broker(
            self.broker_dir,
            hostnames=["localhost", "127.0.0.1"],
            port=self.broker_port,
            tls_bind="127.0.0.1",
        )
        bundles = self.base / "bundles"
        bundles.mkdir()
        for site in self.regular + self.late:
            bundle = add_site(
                self.broker_dir,
                site,
                broker_url=f"mqtts://localhost:{self.broker_port}",
                out=bundles,
            )
            home = self.base / site
            (home / "data").mkdir(parents=True)
            (home / "terminals").mkdir()
            with tarfile.open(bundle) as tar:
                member = tar.extractfile("mqtt.password")
                if member is None:
                    raise RuntimeError("bundle without a password")
                (home / "mqtt.password").write_text(member.read().decode().strip())
        if os.geteuid() == 0:
            user = pwd.getpwnam("mosquitto")
            for path in [self.broker_dir, *self.broker_dir.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)

    def _seed(self) -> master.CentralSeed:
        members = self.settings.members
        persons = [{"id": f"M{i}", "name": f"会员{i}"} for i in range(members)]
        sites = {
            site: {
                "policy": {"site": site},
                "terminals": [
                    {
                        "id": tid,
                        "kind": kind,
                        "key_hex": self.keys[(site, tid)].hex(),
                        "config": {"pos_mode": "keyed"} if kind == "pos" else {},
                    }
                    for tid, kind in KINDS.items()
                ],
                "door_groups": [{"id": "MAIN"}],
                "doors": [{"id": "D1", "group_id": "MAIN", "terminal_id": "DOOR-01"}],
                "time_zones": [{"id": "24H", "weekly": {str(d): [[0, 1440]] for d in range(7)}}],
                "access_levels": [{"id": "ALL", "door_group_id": "MAIN", "time_zone_id": "24H"}],
            }
            for site in self.regular + self.late
        }
        return msgspec.convert(
            {
                "persons": persons,
                "cards": [{"uid": member_uid(i), "person_id": f"M{i}"} for i in range(members)],
                "accounts": [{"person_id": f"M{i}", "cash_fen": 5_000_000} for i in range(members)],
                "access_grants": [
                    {"person_id": p["id"], "access_level_id": "ALL"} for p in persons
                ],
                "sites": sites,
            },
            master.CentralSeed,
            strict=False,
        )

    async def _start_broker(self) -> None:
        if self.broker is None:
            self.broker = Daemon(
                "mosquitto",
                [
                    shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                    "-c",
                    str(self.broker_dir / "mosquitto.conf"),
                ],
                self.base / "mosquitto.console.log",
            )
        self.broker.start()
        ca = self.broker_dir / "ca.crt"
        await _until("mosquitto", lambda: tls_ready(ca, self.broker_port), START_TIMEOUT_S)

    def _central_daemon(self) -> Daemon:
        return Daemon(
            "central",
            [
                str(BIN / "onecard-central"),
                "serve",
                "--db",
                str(self.central_db),
                "--broker-url",
                f"mqtts://localhost:{self.broker_port}",
                "--password-file",
                str(self.broker_dir / "central.password"),
                "--ca-file",
                str(self.broker_dir / "ca.crt"),
                "--log-level",
                "info",
            ],
            self.base / "central.log",
        )

    async def _start_central(self) -> None:
        if self.central is None:
            self.central = self._central_daemon()
        before = self.central.log_text().count("central.connected")
        self.central.start()
        await _until(
            "central to connect",
            lambda: (
                self.central is not None
                and self.central.log_text().count("central.connected") > before
            ),
            START_TIMEOUT_S,
        )

    def _mount(self, rig: SiteRig) -> None:
        argv = ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(rig.data_dir)]
        result = subprocess.run(  # noqa: S603 - mount(8) from PATH, as an operator runs it
            argv,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0:
            rig.mounted = True
        else:
            reason = (result.stderr or result.stdout).strip() or f"mount exit {result.returncode}"
            self.not_injected["disk_full"] = f"cannot mount a tmpfs: {reason}"[:120]

    async def _make_rig(self, site: str) -> SiteRig:
        home = self.base / site
        proxy = FaultProxy("127.0.0.1", self.broker_port)
        await proxy.start()
        tcp_port = free_port()
        config = home / "edge.toml"
        edge = Daemon(
            f"edge {site}",
            [str(BIN / "onecard-edge"), "run", "--config", str(config)],
            home / "edge.log",
        )
        rig = SiteRig(site, home, proxy, edge, tcp_port)
        self._mount(rig)
        config.write_text(
            f'site = "{site}"\ndata_dir = "{rig.data_dir}"\n\n'
            f'[terminals]\nlisten = "127.0.0.1:{tcp_port}"\nheartbeat_s = 5\n\n'
            f'[mqtt]\nurl = "mqtts://localhost:{proxy.port}"\n'
            f'password_file = "{home / "mqtt.password"}"\n'
            f'ca_file = "{self.broker_dir / "ca.crt"}"\n'
            "keepalive_s = 5\noffline_after_s = 20\n\n"
            '[log]\nlevel = "info"\nformat = "json"\n\n[metrics]\nlisten = ""\n\n'
            # The tmpfs is small: a reserve well inside it, so only the ballast trips it.
            f"[store]\nreserve_mb = {RESERVE_MB}\n"
        )
        self.rigs[site] = rig
        return rig

    async def _start_edge(self, rig: SiteRig) -> None:
        rig.edge.start()

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", rig.tcp_port), timeout=0.2).close()
            except OSError:
                return False
            return True

        await _until(f"{rig.site}'s edge to listen", listening, START_TIMEOUT_S)

    async def _snapshot_applied(self, rig: SiteRig, within: float = 60) -> None:
        def has_terminals() -> bool:
            status = rig.status()
            return status is not None and len(status.get("terminals", [])) == len(KINDS)

        await _until(f"{rig.site}'s snapshot from HQ", has_terminals, within)

    def _make_terminals(self, rig: SiteRig) -> None:
        for tid, kind in KINDS.items():
            cls = CLASSES[kind]
            term = cls(
                TerminalSettings(
                    tid,
                    self.keys[(rig.site, tid)],
                    f"tcp://127.0.0.1:{rig.tcp_port}",
                    state_file=rig.home / "terminals" / f"{tid}.json",
                    retry_s=1.0,
                    retries=2,
                )
            )
            term.soak = self.log  # type: ignore[attr-defined]
            self._site_of[term] = rig.site
            term.site_id = rig.site  # type: ignore[attr-defined]
            rig.terminals.append(SimTerminal(rig.site, term))
        rig.joined = True

    # -- traffic ----------------------------------------------------------------------------

    async def _drive(self, sim: SimTerminal, rng: random.Random) -> None:
        """Keep one terminal connected (unless cut) and transacting until the traffic stops;
        afterwards keep it connected so its buffers and pending work drain."""
        term = sim.terminal
        while not self.stop_all.is_set():
            now = time.monotonic()
            cut = now < sim.cut_until
            if cut and term.online:
                await term.close()
            if not cut and not term.online:
                try:
                    async with asyncio.timeout(15):
                        await term.connect()
                except Exception:  # noqa: BLE001 - refused, reset, timed out: retry as firmware does
                    await term.close()
                    await asyncio.sleep(0.5)
                    continue
            if self.stop_traffic.is_set():
                await asyncio.sleep(0.2)
                continue
            try:
                await self._act(term, rng)
            except (LinkClosedError, ReplyTimeoutError, OSError):
                await term.close()
            except Exception as exc:  # noqa: BLE001 - a terminal bug must not stop the soak
                self.log.errors.append(f"{sim.site}/{term.id}: {type(exc).__name__}: {exc}")
                await term.close()
            await asyncio.sleep(rng.uniform(0.25, 0.6))
        await term.close()

    async def _act(self, term: Terminal, rng: random.Random) -> None:
        uid = member_uid(rng.randrange(self.settings.members))
        if isinstance(term, PosTerminal):
            await term.sale(uid, amount=rng.choice([150, 350, 800, 1200, 2500]))
        elif isinstance(term, RechargeKiosk):
            if rng.random() < 0.4:
                # Every site has a KIOSK-01: the payment reference names the site too, as a
                # real acquirer's would be unique (a shared one is a real duplicate payment).
                ref = f"{self._site_of[term]}-{term.id}-{next(self._payments)}-{self.settings.seed}"
                await term.recharge(uid, rng.choice([1000, 5000, 10000]), pay_ref=ref)
        elif isinstance(term, AttendanceClock):
            await term.punch(uid)
        elif isinstance(term, DoorReader):
            await term.tap(uid)

    async def _sample(self) -> None:
        """Every second: the oldest unsynced record's age at each edge (the figure the
        report gives as the maximum outbox age)."""
        while not self.stop_all.is_set():
            for rig in self.rigs.values():
                _, age = await asyncio.to_thread(rig.outbox)
                if age is not None:
                    self.max_outbox_age_s = max(self.max_outbox_age_s, age)
                self._check_alive(rig)
            await asyncio.sleep(1)

    def _check_alive(self, rig: SiteRig) -> None:
        """An edge whose process runs but whose status.json has not moved for 30 s is hung
        (its tasks died while the process lives on): no supervisor would restart it."""
        status = rig.status()
        if status is None or not rig.edge.running or rig.site in self.hung:
            return
        if time.time() - float(status.get("written_at", time.time())) > HUNG_AFTER_S:
            self.hung.add(rig.site)
            self.log.errors.append(
                f"edge {rig.site} hung: running, status.json not written for {HUNG_AFTER_S} s"
            )
            self.out(f"  !! edge {rig.site} is hung (process alive, status stale)")

    async def _supervise(self) -> None:
        while not self.stop_all.is_set():
            for daemon in self._daemons():
                daemon.supervise()
            await asyncio.sleep(0.5)

    def _daemons(self) -> list[Daemon]:
        return [d for d in (self.broker, self.central) if d is not None] + [
            r.edge for r in self.rigs.values() if r.joined or r.edge.wanted
        ]

    # -- faults -----------------------------------------------------------------------------

    def _schedule(self, budget_s: float) -> list[str]:
        """Every infra fault kind once in a shuffled round, then more rounds while they fit
        (about 12 s each)."""
        kinds: list[str] = []
        per_fault = 12.0
        rounds = 0
        while (len(kinds) + len(INFRA_FAULTS)) * per_fault <= budget_s or rounds == 0:
            round_ = list(INFRA_FAULTS)
            self.rng.shuffle(round_)
            kinds.extend(round_)
            rounds += 1
        snapshots = [k for k in kinds if k == "central_kill9_in_snapshot"]
        # One late site per snapshot fault: drop the extra ones.
        for _ in range(len(snapshots) - len(self.late)):
            kinds.remove("central_kill9_in_snapshot")
        return kinds

    def _note(self, kind: str, detail: str) -> None:
        self.faults[kind] += 1
        at = time.monotonic() - self.started
        self.fault_log.append((at, kind, detail))
        self.out(f"  {at:6.1f} s  {kind:<26} {detail}")

    async def _infra_lane(self, deadline: float) -> None:
        kinds = self._schedule(deadline - time.monotonic())
        slot = (deadline - time.monotonic()) / max(1, len(kinds))
        for kind in kinds:
            slot_end = time.monotonic() + slot
            if self.stop_traffic.is_set():
                return
            if kind in self.not_injected:
                continue
            hold = self.rng.uniform(0.25, 0.5) * slot
            await getattr(self, f"_fault_{kind}")(hold)
            self.last_fault_end = time.monotonic()
            await asyncio.sleep(max(0.0, slot_end - time.monotonic()))

    def _pick_site(self) -> SiteRig:
        return self.rigs[self.rng.choice(self.regular)]

    async def _fault_edge_kill9(self, hold: float) -> None:
        rig = self._pick_site()
        rig.edge.kill9()
        self._note("edge_kill9", f"{rig.site}, restarted after {min(hold, 3):.1f} s")
        await asyncio.sleep(min(hold, 3))
        await self._start_edge(rig)

    async def _fault_central_kill9(self, hold: float) -> None:
        _running(self.central).kill9()
        self._note("central_kill9", f"restarted after {min(hold, 4):.1f} s")
        await asyncio.sleep(min(hold, 4))
        await self._start_central()

    async def _fault_broker_kill9(self, hold: float) -> None:
        _running(self.broker).kill9()
        self._note("broker_kill9", f"restarted after {min(hold, 4):.1f} s")
        await asyncio.sleep(min(hold, 4))
        await self._start_broker()

    async def _net(self, mode: Mode, hold: float, **kw: int) -> None:
        rig = self._pick_site()
        rig.proxy.set_mode(mode, **kw)
        extra = f" {kw['delay_ms']} ms" if kw else ""
        self._note(f"net_{mode}", f"{rig.site}{extra} for {hold:.1f} s")
        await asyncio.sleep(hold)
        rig.proxy.set_mode(Mode.PASS)

    async def _fault_net_drop(self, hold: float) -> None:
        await self._net(Mode.DROP, hold)

    async def _fault_net_delay(self, hold: float) -> None:
        await self._net(Mode.DELAY, hold, delay_ms=self.rng.choice([200, 500, 1500]))

    async def _fault_net_stall(self, hold: float) -> None:
        await self._net(Mode.STALL, hold)

    async def _fault_net_reset(self, hold: float) -> None:
        await self._net(Mode.RESET, hold)

    async def _fault_net_half_open(self, hold: float) -> None:
        await self._net(Mode.HALF_OPEN, hold)

    async def _fault_disk_full(self, hold: float) -> None:
        rig = self._pick_site()
        if not rig.mounted:
            return
        stat = os.statvfs(rig.data_dir)
        free = stat.f_bavail * stat.f_frsize
        fd = os.open(rig.ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, free)
            with contextlib.suppress(OSError):  # tmpfs rounds: fill the last pages too
                while os.write(fd, bytes(65536)):
                    pass
        finally:
            os.close(fd)
        self._note("disk_full", f"{rig.site}: {free // 1024} KiB filled for {hold:.1f} s")
        await asyncio.sleep(hold)
        rig.ballast.unlink(missing_ok=True)

    async def _fault_central_kill9_in_snapshot(self, _hold: float) -> None:
        """A new site goes live; central is killed the moment it sees the site's birth,
        i.e. as it starts sending that site's snapshot. Restarted, it must send it again."""
        site = next((s for s in self.late if not self.rigs[s].joined), None)
        central = _running(self.central)
        if site is None:
            return
        rig = self.rigs[site]
        offset = central.log_path.stat().st_size
        await self._start_edge(rig)
        rig.edge.wanted = True
        seen = ""
        deadline = time.monotonic() + 20
        with central.log_path.open("r", errors="replace") as central_log:
            central_log.seek(offset)
            # Polled tightly: the snapshot of a site takes central only some tens of ms.
            while time.monotonic() < deadline:
                seen += central_log.read()
                if any('"site.online"' in ln and site in ln for ln in seen.splitlines()):
                    break
                await asyncio.sleep(0.002)
            central.kill9()
            seen += central_log.read()
        completed = any('"feed.snapshot"' in ln and site in ln for ln in seen.splitlines())
        self.snapshot_interrupted += not completed
        self._note(
            "central_kill9_in_snapshot",
            f"{site} went live; central killed "
            + ("after the snapshot was out" if completed else "during its snapshot"),
        )
        await asyncio.sleep(1)
        await self._start_central()
        await self._snapshot_applied(rig)
        self._make_terminals(rig)
        for sim in rig.terminals:
            self._drivers.append(asyncio.create_task(self._drive(sim, self._term_rng())))

    def _term_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(32))

    async def _terminal_lane(self, deadline: float) -> None:
        """Link cuts and clock jumps, alongside the infra faults."""
        while time.monotonic() < deadline - 5 and not self.stop_traffic.is_set():
            joined = [r for r in self.rigs.values() if r.joined and r.terminals]
            rig = self.rng.choice(joined)
            sim = self.rng.choice(rig.terminals)
            kind = self.rng.choice(TERMINAL_FAULTS)
            if self.faults["terminal_cut"] == 0:
                kind = "terminal_cut"
            elif self.faults["clock_jump"] == 0:
                kind = "clock_jump"
            hold = self.rng.uniform(4, 10)
            if kind == "terminal_cut":
                sim.cut_until = time.monotonic() + hold
                self._note(kind, f"{rig.site}/{sim.terminal.id} for {hold:.1f} s")
                await asyncio.sleep(hold)
            else:
                jump = self.rng.choice([CLOCK_JUMP_MS, -CLOCK_JUMP_MS])
                sim.terminal.clock_skew_ms = jump
                self.log.jumped.add(f"{rig.site}/{sim.terminal.id}")
                self._note(
                    kind, f"{rig.site}/{sim.terminal.id} {jump // 1000:+d} s for {hold:.1f} s"
                )
                await asyncio.sleep(hold)
                sim.terminal.clock_skew_ms = 0
            self.last_fault_end = max(self.last_fault_end, time.monotonic())
            await asyncio.sleep(self.rng.uniform(2, 6))

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> Verdict:
        """Build, soak, converge, check; always tear down."""
        self._drivers: list[asyncio.Task[None]] = []
        try:
            return await self._run()
        finally:
            await self._teardown()

    async def _run(self) -> Verdict:
        s = self.settings
        self.out(
            f"soak: {s.sites} sites (+{len(self.late)} going live midway), "
            f"{s.duration_s:.0f} s, seed {s.seed}; in {self.base}"
        )
        await asyncio.to_thread(self._provision)
        await self._start_broker()
        async with CentralStore.open(self.central_db) as store:
            seed = self._seed()
            await store.run(lambda conn: master.apply_seed(conn, seed, batch="soak"))
        await self._start_central()
        for site in self.regular + self.late:
            await self._make_rig(site)
        for site in self.regular:
            await self._start_edge(self.rigs[site])
        for site in self.regular:
            await self._snapshot_applied(self.rigs[site])
            self._make_terminals(self.rigs[site])
        self.out(
            "chain up: mosquitto, central, "
            + ", ".join(
                f"{r.site} (edge via proxy :{r.proxy.port})" for r in self.rigs.values() if r.joined
            )
        )
        background = [
            asyncio.create_task(self._supervise()),
            asyncio.create_task(self._sample()),
        ]
        for rig in self.rigs.values():
            for sim in rig.terminals:
                self._drivers.append(asyncio.create_task(self._drive(sim, self._term_rng())))
        self.started = time.monotonic()
        deadline = self.started + s.duration_s
        quiet = min(10.0, s.duration_s * 0.08)
        self.out("faults:")
        try:
            await asyncio.gather(
                self._infra_lane(deadline - quiet), self._terminal_lane(deadline - quiet)
            )
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            self.stop_traffic.set()
            self.out(f"traffic stopped after {time.monotonic() - self.started:.0f} s; converging …")
            converged_after = await self._converge()
            disk = {site: rig.disk_use_mib() for site, rig in self.rigs.items() if rig.joined}
            verdict = await asyncio.to_thread(
                check,
                self.log,
                central_db=self.central_db,
                edges={r.site: r.database for r in self.rigs.values() if r.joined},
                buffers=self._buffers(),
            )
        finally:
            self.stop_all.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, *self._drivers, return_exceptions=True)
        verdict.faults = dict(self.faults)
        verdict.not_injected = dict(self.not_injected)
        verdict.max_outbox_age_s = round(self.max_outbox_age_s, 1)
        verdict.converge_s = converged_after
        verdict.duration_s = s.duration_s
        verdict.unexpected_exits = {
            d.name: d.unexpected_exits for d in self._daemons() if d.unexpected_exits
        }
        verdict.snapshot_interrupted = self.snapshot_interrupted
        verdict.edge_disk_mib = disk
        for kind in ALL_FAULTS:
            if not self.faults[kind] and kind not in self.not_injected:
                verdict.failures.append(f"fault kind {kind} was never injected")
        return verdict

    def _buffers(self) -> dict[str, int]:
        """Work still held by terminals: buffered records, open recharges, unanswered taps."""
        held: dict[str, int] = {}
        for rig in self.rigs.values():
            for sim in rig.terminals:
                state = sim.terminal.store.state
                count = len(state.buffered) + len(state.pending_recharges)
                count += state.pending_tap is not None
                if count:
                    held[f"{rig.site}/{sim.terminal.id}"] = count
        return held

    async def _converge(self) -> float | None:
        """Seconds from the last fault until every outbox is drained and every terminal has
        handed in its buffers; None if that did not happen in time."""
        deadline = time.monotonic() + self.settings.converge_timeout_s
        while time.monotonic() < deadline:
            depths = [
                (await asyncio.to_thread(r.outbox))[0] for r in self.rigs.values() if r.joined
            ]
            if all(d == 0 for d in depths) and not self._buffers():
                return round(time.monotonic() - self.last_fault_end, 1)
            await asyncio.sleep(0.25)
        return None

    async def _teardown(self) -> None:
        for rig in self.rigs.values():
            for sim in rig.terminals:
                with contextlib.suppress(Exception):
                    await sim.terminal.close()
        for daemon in [r.edge for r in self.rigs.values()] + [
            d for d in (self.central, self.broker) if d is not None
        ]:
            await asyncio.to_thread(daemon.stop)
        for rig in self.rigs.values():
            await rig.proxy.close()
            if rig.mounted:
                await asyncio.to_thread(
                    subprocess.run,
                    ["umount", "-l", str(rig.data_dir)],
                    check=False,
                )

    def cleanup(self, *, keep: bool) -> None:
        """Delete the run's directory (kept, and said so, when asked to)."""
        if keep:
            self.out(f"kept {self.base} (logs of every process)")
            return
        shutil.rmtree(self.base, ignore_errors=True)


def _quiet_closed_links(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A request abandoned when its link closed leaves a LinkClosedError nobody reads:
    expected thousands of times in a soak, so not printed; anything else is."""
    if isinstance(context.get("exception"), LinkClosedError):
        return
    loop.default_exception_handler(context)


async def run_soak(settings: SoakSettings, out: Callable[[str], None] = print) -> Verdict:
    """Run one soak and print its table; the verdict says whether every invariant held."""
    from edge_agent.logs import configure_logging  # noqa: PLC0415 - only the CLI needs it

    configure_logging("warning", "console")
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_closed_links)
    soak = Soak(settings, out)
    verdict: Verdict | None = None
    try:
        verdict = await soak.run()
    finally:
        ok = verdict is not None and verdict.ok
        soak.cleanup(keep=settings.keep_dir_on_failure and not ok)
    for line in verdict.table():
        out(line)
    out("SOAK " + json.dumps(verdict.summary(), sort_keys=True))
    return verdict
