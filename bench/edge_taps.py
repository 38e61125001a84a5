"""Tap→decision latency and throughput of a real ``onecard-edge`` process, with a baseline.

Run from the repository root::

    .venv/bin/python bench/edge_taps.py [--duration S] [--terminals N] [--rate R] [--quick]

What it does, all in one run on one machine:

1. **Baseline** — a bare aiosqlite loop at the edge's durability (WAL, ``synchronous=FULL``):
   per "tap" ``BEGIN IMMEDIATE``, SELECT a card by its indexed UID, INSERT a ~200-byte row,
   ``COMMIT``. Measured paced at the scenario A rate (per-op latency) and back to back
   (sequential ops/s), before and after the edge scenarios (a shared VM's disk drifts); the
   overhead ratios use the faster of the two. This is the floor of one durable tap.
2. **Edge** — seeds a temporary site (keyed-mode POS terminals, a card population with large
   balances so every sale is approved and writes money records) with ``onecard-edge seed``,
   then starts ``onecard-edge run`` as a *separate process* on a loopback port with
   ``log.level = "warning"`` (the per-tap canonical line is an info line; see ``--info-row``).
   The simulators run in other processes, so they do not share the edge's GIL. Every
   scenario gets a fresh copy of the seeded site (an empty outbox).
3. **Scenario A** — ``--terminals`` POS terminals at ``--rate`` taps/s in total for
   ``--duration`` s: p50/p95/p99/max of TAP sent → DECISION received at the simulator. Every
   DECISION leaves the edge only after its records are committed (group commit, fsync).
4. **Scenario B** — a ramp of total rates over ``--ramp-terminals`` terminals spread over
   ``--clients`` client processes; the highest step that is *sustained* (achieved ≥ 95 % of
   the offered rate, no failures) with p99 ≤ 50 ms is the edge's sustained throughput.

The load generator is closed-loop per terminal (a till waits for its DECISION before the next
sale), so a saturated edge shows up as an achieved rate below the offered one. The client
processes compete with the edge for the same CPUs; the table shows both CPU shares.

Prints a table and ends with one line ``BENCH {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiosqlite

from firmware_sim.load import LoadReport, build_terminals, run_load
from firmware_sim.terminals import Fleet
from protocol import auth

SITE = "BENCH-01"
AMOUNT_FEN = 100
BALANCE_FEN = 500_000_000  # ¥5,000,000 (the protocol caps a balance at 10^9 fen): never short
#: A ramp step is sustained when it achieves this share of the offered rate, with no failures.
SUSTAINED_SHARE = 0.95
TARGET_A_P99_MS = 5.0
TARGET_A_RATE = 200.0
TARGET_A_TERMINALS = 20
TARGET_RAMP_RATE = 2000.0
TARGET_RAMP_P99_MS = 50.0
EDGE_START_TIMEOUT_S = 30.0
EDGE_STOP_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 30.0
FULL_RAMP = (500, 1000, 1500, 2000, 2500, 3000, 4000)
QUICK_RAMP = (500, 1000, 2000)


# -- the site -------------------------------------------------------------------------------


def card_uids(count: int) -> list[str]:
    """``count`` distinct 7-byte card UIDs, the form the seed validates."""
    return [f"B0{i:012X}" for i in range(1, count + 1)]


def make_seed(terminal_keys: dict[str, bytes], cards: Sequence[str]) -> dict[str, Any]:
    """A seed with keyed-mode POS terminals and one rich cardholder per card."""
    persons = [
        {"id": f"P{i:06d}", "name": f"持卡人{i}", "kind": "staff"} for i in range(len(cards))
    ]
    return {
        "site": SITE,
        "policy": {"site": SITE},
        "persons": persons,
        "cards": [
            {"uid": uid, "person_id": p["id"]} for uid, p in zip(cards, persons, strict=True)
        ],
        "accounts": [{"person_id": p["id"], "cash_fen": BALANCE_FEN} for p in persons],
        "terminals": [
            {"id": tid, "kind": "pos", "key_hex": key.hex(), "config": {"pos_mode": "keyed"}}
            for tid, key in sorted(terminal_keys.items())
        ],
    }


def edge_command() -> list[str]:
    """The installed ``onecard-edge`` next to this interpreter (the venv's)."""
    exe = Path(sys.executable).with_name("onecard-edge")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("onecard-edge")
    if found is None:
        raise SystemExit("onecard-edge is not installed: run `make setup` first")
    return [found]


def clean_env() -> dict[str, str]:
    """The environment without ONECARD_EDGE_* overrides, so the temp config is what runs."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ONECARD_EDGE_")}


def write_config(site_dir: Path, log_level: str) -> Path:
    """An edge.toml for the site in ``site_dir``, on a free loopback port."""
    path = site_dir / "edge.toml"
    path.write_text(
        f'site = "{SITE}"\n'
        f'data_dir = "{site_dir / "data"}"\n'
        "[terminals]\n"
        'listen = "127.0.0.1:0"\n'
        "[log]\n"
        f'level = "{log_level}"\n'
        'format = "json"\n',
        encoding="utf-8",
    )
    return path


def seed_site(site_dir: Path, seed: dict[str, Any]) -> str:
    """Load the seed with ``onecard-edge seed`` (the way a site is set up before HQ)."""
    site_dir.mkdir(parents=True)
    seed_path = site_dir / "seed.json"
    seed_path.write_text(json.dumps(seed, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run(  # noqa: S603 - our own CLI with arguments we built
        [*edge_command(), "seed", str(seed_path), "--config", str(write_config(site_dir, "info"))],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"onecard-edge seed failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip().rsplit(": loaded ", 1)[-1]


def copy_site(seeded: Path, site_dir: Path) -> Path:
    """A fresh copy of the seeded site (empty outbox), so scenarios don't inherit records."""
    shutil.copytree(seeded / "data", site_dir / "data")
    return site_dir


@dataclass
class EdgeProcess:
    """A running ``onecard-edge run``; use :func:`running_edge`."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def cpu_s(self) -> float:
        """User + system CPU seconds the edge has used so far (Linux; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the edge wrote to stderr."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running_edge(site_dir: Path, log_level: str) -> Iterator[EdgeProcess]:
    """Start ``onecard-edge run`` on the site in ``site_dir``, wait until it serves, and always
    stop it (SIGTERM, then SIGKILL after a timeout)."""
    config = write_config(site_dir, log_level)
    status = site_dir / "data" / "status.json"
    status.unlink(missing_ok=True)
    log_path = site_dir / "edge.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI with arguments we built
            [*edge_command(), "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=clean_env(),
        )
    edge = EdgeProcess(proc, 0, log_path)
    try:
        edge.port = _wait_for_port(edge, status)
        yield edge
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=EDGE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=EDGE_STOP_TIMEOUT_S)


def _wait_for_port(edge: EdgeProcess, status: Path) -> int:
    # The daemon writes status.json (with its pid and TCP port) once it serves; reading the
    # port from there avoids racing another process for a "free" port.
    deadline = time.monotonic() + EDGE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if edge.proc.poll() is not None:
            raise RuntimeError(f"onecard-edge exited ({edge.proc.returncode}):\n{edge.log_tail()}")
        with contextlib.suppress(OSError, ValueError):
            snapshot = json.loads(status.read_bytes())
            if snapshot.get("pid") == edge.proc.pid and snapshot.get("tcp_port"):
                return int(snapshot["tcp_port"])
        time.sleep(0.05)
    raise RuntimeError(f"onecard-edge not serving after {EDGE_START_TIMEOUT_S:g} s")


# -- client processes ---------------------------------------------------------------------


def _client_main(conn: Connection, connect: str, keys: dict[str, str], cards: list[str]) -> None:
    """Entry point of a client process: connect terminals, then run steps on command."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_client(conn, connect, keys, cards))


async def _client(conn: Connection, connect: str, keys: dict[str, str], cards: list[str]) -> None:
    loop = asyncio.get_running_loop()
    terminals = build_terminals("pos", connect, {t: bytes.fromhex(k) for t, k in keys.items()})
    fleet = Fleet(terminals)
    try:
        await fleet.connect_all()
        conn.send(("ready", None))
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                return
            _, rate, duration_s, start_at, seed = command
            await asyncio.sleep(max(0.0, start_at - time.time()))
            cpu_before = time.process_time()
            report = await run_load(
                terminals, cards, rate=rate, duration_s=duration_s, amount_fen=AMOUNT_FEN, seed=seed
            )
            conn.send(
                (
                    "report",
                    {
                        "duration_s": report.duration_s,
                        "latencies_ms": report.latencies_ms,
                        "approved": report.approved,
                        "declined": report.declined,
                        "failed": report.failed,
                        "codes": report.codes,
                        "cpu_s": time.process_time() - cpu_before,
                    },
                )
            )
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
        conn.send(("error", repr(exc)))
    finally:
        await fleet.close_all()


@dataclass
class StepResult:
    """One measured load step, merged over the client processes."""

    report: LoadReport
    wall_s: float
    edge_cpu_pct: float
    client_cpu_pct: float

    def row(self) -> dict[str, Any]:
        """Flat figures for the table and the BENCH line."""
        figures: dict[str, Any] = self.report.summary()
        figures["edge_cpu_pct"] = round(self.edge_cpu_pct, 1)
        figures["client_cpu_pct"] = round(self.client_cpu_pct, 1)
        figures["codes"] = dict(sorted(self.report.codes.items()))
        return figures

    def sustained(self) -> bool:
        """Achieved (nearly) the offered rate without failures."""
        report = self.report
        return report.failed == 0 and report.achieved_rate >= SUSTAINED_SHARE * report.target_rate


@dataclass
class ClientPool:
    """Client processes, each holding a share of the terminals connected to the edge."""

    edge: EdgeProcess
    keys: dict[str, bytes]
    cards: list[str]
    processes: int
    _procs: list[Any] = field(default_factory=list)
    _conns: list[Connection] = field(default_factory=list)
    _shares: list[int] = field(default_factory=list)
    _steps: int = 0

    def __enter__(self) -> ClientPool:
        ctx = multiprocessing.get_context("spawn")
        ids = sorted(self.keys)
        connect = f"tcp://127.0.0.1:{self.edge.port}"
        try:
            for i in range(self.processes):
                mine = {tid: self.keys[tid].hex() for tid in ids[i :: self.processes]}
                if not mine:
                    continue
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_client_main,
                    args=(child, connect, mine, self.cards),
                    name=f"edge-taps-client-{i}",
                    daemon=True,
                )
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
                self._shares.append(len(mine))
            for conn in self._conns:
                self._expect(conn, "ready", CLIENT_TIMEOUT_S)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._procs.clear()
        self._conns.clear()

    @property
    def terminals(self) -> int:
        """Terminals connected over all client processes."""
        return sum(self._shares)

    def _expect(self, conn: Connection, kind: str, timeout_s: float) -> Any:
        if not conn.poll(timeout_s):
            raise RuntimeError(f"client process silent for {timeout_s:g} s\n{self.edge.log_tail()}")
        got, payload = conn.recv()
        if got != kind:
            raise RuntimeError(f"client process: {got} {payload}\n{self.edge.log_tail()}")
        return payload

    def step(self, rate: float, duration_s: float) -> StepResult:
        """Offer ``rate`` taps/s in total for ``duration_s``; merge what the clients saw."""
        self._steps += 1
        start_at = time.time() + 0.3  # every client starts its schedule at the same instant
        edge_cpu = self.edge.cpu_s()
        for i, conn in enumerate(self._conns):
            share = rate * self._shares[i] / self.terminals
            conn.send(("run", share, duration_s, start_at, self._steps * 1000 + i))
        reports = [self._expect(c, "report", duration_s + CLIENT_TIMEOUT_S) for c in self._conns]
        wall_s = max(r["duration_s"] for r in reports)
        merged = LoadReport(duration_s=wall_s, target_rate=rate, terminals=self.terminals)
        for r in reports:
            merged.latencies_ms.extend(r["latencies_ms"])
            merged.approved += r["approved"]
            merged.declined += r["declined"]
            merged.failed += r["failed"]
            for code, n in r["codes"].items():
                merged.codes[code] = merged.codes.get(code, 0) + n
        # The edge's CPU over the step's whole window (start offset included: it is idle then).
        edge_cpu_pct = (self.edge.cpu_s() - edge_cpu) / (wall_s + 0.3) * 100
        client_cpu_pct = sum(r["cpu_s"] for r in reports) / wall_s * 100
        return StepResult(merged, wall_s, edge_cpu_pct, client_cpu_pct)


def terminal_keys(prefix: str, count: int) -> dict[str, bytes]:
    """Fresh keys for ``count`` POS terminals named ``{prefix}001``…"""
    return {f"{prefix}{i:03d}": auth.new_key() for i in range(1, count + 1)}


# -- the baseline ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Baseline:
    """The bare aiosqlite loop's figures."""

    paced: LoadReport
    ops: int
    seconds: float

    @property
    def ops_per_s(self) -> float:
        """Sequential lookup + insert + commit operations per second."""
        return self.ops / self.seconds


async def run_baseline(
    path: Path, cards: Sequence[str], *, rate: float, paced_s: float, flat_out_s: float
) -> Baseline:
    """SELECT by indexed uid + INSERT ~200 bytes + COMMIT, one at a time, WAL + FULL."""
    rng = random.Random(7)
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute(
            "CREATE TABLE cards (uid TEXT PRIMARY KEY, person_id TEXT NOT NULL,"
            " cash_fen INTEGER NOT NULL) WITHOUT ROWID"
        )
        await db.execute(
            "CREATE TABLE taps (seq INTEGER PRIMARY KEY, uid TEXT NOT NULL,"
            " amount INTEGER NOT NULL, at_ms INTEGER NOT NULL, payload TEXT NOT NULL)"
        )
        await db.execute("BEGIN IMMEDIATE")
        await db.executemany(
            "INSERT INTO cards VALUES (?, ?, ?)",
            [(uid, f"P{i:06d}", BALANCE_FEN) for i, uid in enumerate(cards)],
        )
        await db.execute("COMMIT")

        async def one_tap() -> float:
            uid = rng.choice(cards)
            started = time.perf_counter()
            await db.execute("BEGIN IMMEDIATE")
            async with db.execute(
                "SELECT person_id, cash_fen FROM cards WHERE uid = ?", (uid,)
            ) as cursor:
                row = await cursor.fetchone()
            assert row is not None
            payload = json.dumps(
                {"site": SITE, "card_uid": uid, "person": row[0], "amount": AMOUNT_FEN}
            ).ljust(200)
            await db.execute(
                "INSERT INTO taps (uid, amount, at_ms, payload) VALUES (?, ?, ?, ?)",
                (uid, AMOUNT_FEN, time.time_ns() // 1_000_000, payload),
            )
            await db.execute("COMMIT")
            return (time.perf_counter() - started) * 1000

        for _ in range(20):  # warm-up
            await one_tap()
        paced = LoadReport(duration_s=paced_s, target_rate=rate, terminals=1)
        started = time.perf_counter()
        next_at = started
        while next_at < started + paced_s:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            paced.latencies_ms.append(await one_tap())
            paced.approved += 1
            next_at += 1 / rate
        paced.duration_s = time.perf_counter() - started

        ops = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < flat_out_s:
            await one_tap()
            ops += 1
    return Baseline(paced=paced, ops=ops, seconds=elapsed)


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """What to run (from the command line)."""

    duration_s: float
    terminals: int
    rate: float
    cards: int
    ramp: tuple[float, ...]
    step_s: float
    ramp_terminals: int
    clients: int
    info_row: bool
    quick: bool

    @property
    def warm_up_s(self) -> float:
        """Load before each measurement that is not counted (connections, caches)."""
        return 0.5 if self.quick else 1.0


@dataclass
class Results:
    """Everything one run measured."""

    seeded: str
    #: 1-minute load averages at the start and the end: other work on the machine skews it all.
    load: tuple[float, float]
    #: The baseline before and after the edge scenarios (the disk's speed drifts on shared VMs).
    baselines: tuple[Baseline, Baseline]
    a: StepResult
    info: StepResult | None
    steps: list[StepResult]


def parse_args(argv: list[str] | None) -> Settings:
    """The command line, with the defaults of a full or a ``--quick`` run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, help="scenario A seconds (default 10)")
    parser.add_argument("--terminals", type=int, default=20, help="scenario A terminals")
    parser.add_argument("--rate", type=float, default=200.0, help="scenario A total taps/s")
    parser.add_argument("--cards", type=int, default=2000, help="card population")
    parser.add_argument("--ramp", help="comma-separated ramp rates in taps/s")
    parser.add_argument("--step", type=float, help="seconds per ramp step (default 4)")
    parser.add_argument("--ramp-terminals", type=int, default=100, help="terminals in the ramp")
    parser.add_argument("--clients", type=int, default=2, help="client processes in the ramp")
    parser.add_argument(
        "--info-row",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="repeat scenario A with log.level=info (default: on; off with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 20 s)")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    if args.ramp:
        try:
            ramp = tuple(float(r) for r in args.ramp.split(","))
        except ValueError:
            parser.error("--ramp takes comma-separated numbers, e.g. 500,1000,2000")
    else:
        ramp = QUICK_RAMP if quick else FULL_RAMP
    settings = Settings(
        duration_s=args.duration or (2.0 if quick else 10.0),
        terminals=args.terminals,
        rate=args.rate,
        cards=args.cards,
        ramp=ramp,
        step_s=args.step or (1.5 if quick else 4.0),
        ramp_terminals=args.ramp_terminals,
        clients=args.clients,
        info_row=(not quick) if args.info_row is None else args.info_row,
        quick=quick,
    )
    if min(settings.duration_s, settings.step_s, settings.rate, *settings.ramp) <= 0:
        parser.error("durations and rates must be positive")
    if min(settings.terminals, settings.ramp_terminals, settings.clients, settings.cards) < 1:
        parser.error("--terminals, --ramp-terminals, --clients and --cards must be at least 1")
    return settings


def run_scenario_a(
    site_dir: Path, keys: dict[str, bytes], cards: list[str], settings: Settings, log_level: str
) -> StepResult:
    """Scenario A on a fresh edge: one client process drives ``keys``' terminals."""
    with running_edge(site_dir, log_level) as edge, ClientPool(edge, keys, cards, 1) as pool:
        pool.step(settings.rate, settings.warm_up_s)
        return pool.step(settings.rate, settings.duration_s)


def run_ramp(
    site_dir: Path, keys: dict[str, bytes], cards: list[str], settings: Settings
) -> list[StepResult]:
    """Scenario B: the ramp, stopping once the edge is clearly saturated."""
    steps: list[StepResult] = []
    with (
        running_edge(site_dir, "warning") as edge,
        ClientPool(edge, keys, cards, settings.clients) as pool,
    ):
        pool.step(settings.ramp[0], settings.warm_up_s)
        for rate in settings.ramp:
            result = pool.step(rate, settings.step_s)
            steps.append(result)
            if result.report.achieved_rate < 0.8 * rate or result.report.percentile(99) > 1000:
                break  # saturated well past the targets: further steps would only queue more
    return steps


def run(settings: Settings) -> Results:
    """Baseline, then each scenario against a fresh copy of one seeded site; always cleans up."""
    cards = card_uids(settings.cards)
    a_keys = terminal_keys("POS-A", settings.terminals)
    info_keys = terminal_keys("POS-L", settings.terminals) if settings.info_row else {}
    ramp_keys = terminal_keys("POS-R", settings.ramp_terminals)
    workdir = Path(tempfile.mkdtemp(prefix="onecard-edge-taps-"))

    def baseline(name: str) -> Baseline:
        return asyncio.run(
            run_baseline(
                workdir / f"baseline-{name}.db",
                cards,
                rate=settings.rate,
                paced_s=1.0 if settings.quick else min(settings.duration_s, 5.0),
                flat_out_s=1.0 if settings.quick else 3.0,
            )
        )

    load_start = os.getloadavg()[0]
    try:
        before = baseline("before")
        seeded_dir = workdir / "seeded"
        seeded = seed_site(seeded_dir, make_seed(a_keys | info_keys | ramp_keys, cards))
        a = run_scenario_a(copy_site(seeded_dir, workdir / "a"), a_keys, cards, settings, "warning")
        info = None
        if settings.info_row:
            site = copy_site(seeded_dir, workdir / "info")
            info = run_scenario_a(site, info_keys, cards, settings, "info")
        steps = run_ramp(copy_site(seeded_dir, workdir / "ramp"), ramp_keys, cards, settings)
        after = baseline("after")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Results(seeded, (load_start, os.getloadavg()[0]), (before, after), a, info, steps)


def print_step_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """One table of load steps."""
    print(title)
    header = (
        f"{'':<12} {'offered/s':>9} {'achieved/s':>10} {'taps':>7} {'not ok':>6} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'edge CPU':>8} {'clients':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, r in rows:
        print(
            f"{label:<12} {r['target_rate']:>9,.0f} {r['achieved_rate']:>10,.1f} "
            f"{r['taps']:>7,} {r['failed'] + r['declined']:>6} {r['p50_ms']:>8.2f} "
            f"{r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} "
            f"{r['edge_cpu_pct']:>7.0f}% {r['client_cpu_pct']:>7.0f}%"
        )
    print()


def report(settings: Settings, results: Results) -> dict[str, Any]:
    """Print the tables and verdicts; return the BENCH figures."""
    a_row = results.a.row()
    # Ratios against the faster of the two baseline runs: the conservative choice for the edge.
    fastest = min(results.baselines, key=lambda b: b.paced.percentile(50))
    base_p50, base_p99 = fastest.paced.percentile(50), fastest.paced.percentile(99)
    base_ops = max(b.ops_per_s for b in results.baselines)
    sustained = [
        s for s in results.steps if s.sustained() and s.report.percentile(99) <= TARGET_RAMP_P99_MS
    ]
    best = max(sustained, key=lambda s: s.report.target_rate, default=None)
    max_rate = best.report.target_rate if best else 0.0
    max_achieved = best.report.achieved_rate if best else 0.0
    ratio_latency = a_row["p50_ms"] / base_p50 if base_p50 else 0.0
    ratio_throughput = max_achieved / base_ops if base_ops else 0.0
    target_a_met = (
        a_row["p99_ms"] <= TARGET_A_P99_MS
        and results.a.sustained()
        and settings.rate >= TARGET_A_RATE
        and settings.terminals >= TARGET_A_TERMINALS
    )
    target_ramp_met = max_rate >= TARGET_RAMP_RATE
    cpus = os.cpu_count()

    print(
        f"edge_taps: onecard-edge in its own process; site {SITE} seeded with {results.seeded}; "
        f"keyed POS sales of {AMOUNT_FEN} fen over {settings.cards:,} cards; "
        f"Python {platform.python_version()}, {cpus} CPUs"
    )
    print(
        "latency = TAP sent → DECISION received at the simulator; a DECISION leaves the edge "
        "only after its records are committed (WAL, synchronous=FULL, group commit). "
        "Edge log.level=warning unless noted; each scenario starts from a fresh copy of the "
        "seeded site (empty outbox)."
    )
    print(
        f"The simulators run in separate processes on the same {cpus} CPUs as the edge: the "
        "'clients' column (% of one CPU) is CPU the edge could not use. Load average at start "
        f"{results.load[0]:.2f}, at end {results.load[1]:.2f} (anything else running skews "
        "every figure)."
    )
    print()
    print(
        "baseline: bare aiosqlite, WAL + synchronous=FULL; per op BEGIN IMMEDIATE, SELECT by "
        f"indexed uid, INSERT ~200 B, COMMIT; one at a time, paced at {settings.rate:g}/s, then "
        "back to back; run before and after the edge scenarios"
    )
    for name, baseline in zip(("before", "after"), results.baselines, strict=True):
        paced = baseline.paced.summary()
        print(
            f"  {name:<6} paced: {paced['taps']:,} ops, p50 {paced['p50_ms']:.2f} ms, p95 "
            f"{paced['p95_ms']:.2f} ms, p99 {paced['p99_ms']:.2f} ms, max {paced['max_ms']:.2f} ms;"
            f" back to back {baseline.ops_per_s:,.0f} ops/s"
        )
    print()
    rows = [(f"A {settings.terminals} term", a_row)]
    if results.info is not None:
        rows.append(("A log=info", results.info.row()))
    print_step_table(f"scenario A: {settings.terminals} terminals, {settings.duration_s:g} s", rows)
    print_step_table(
        f"scenario B: ramp over {settings.ramp_terminals} terminals in {settings.clients} "
        f"client processes, {settings.step_s:g} s per step",
        [
            (f"B step {i + 1}{'*' if any(s is t for t in sustained) else ''}", s.row())
            for i, s in enumerate(results.steps)
        ],
    )
    print(
        f"* sustained: achieved ≥ {SUSTAINED_SHARE:.0%} of the offered rate, nothing failed, "
        f"p99 ≤ {TARGET_RAMP_P99_MS:g} ms"
    )
    print(
        f"highest sustained step with p99 ≤ {TARGET_RAMP_P99_MS:g} ms: {max_rate:,.0f} taps/s "
        f"offered, {max_achieved:,.0f} achieved" + ("" if best else " (no step qualified)")
    )
    print(
        f"overhead vs the faster baseline: p50 at {settings.rate:g}/s {a_row['p50_ms']:.2f} / "
        f"{base_p50:.2f} ms = {ratio_latency:.2f}x; sustained taps/s {max_achieved:,.0f} / "
        f"{base_ops:,.0f} ops/s = {ratio_throughput:.2f}x (group commit can exceed 1)"
    )
    print(
        f"target p99 ≤ {TARGET_A_P99_MS:g} ms at {TARGET_A_RATE:g} taps/s over "
        f"{TARGET_A_TERMINALS} terminals: {'MET' if target_a_met else 'NOT MET'} "
        f"(p99 {a_row['p99_ms']:.2f} ms)"
    )
    print(
        f"target ≥ {TARGET_RAMP_RATE:,.0f} taps/s sustained with p99 ≤ {TARGET_RAMP_P99_MS:g} ms: "
        f"{'MET' if target_ramp_met else 'NOT MET'} ({max_rate:,.0f} taps/s)"
    )

    summary: dict[str, Any] = {
        "name": "edge_taps",
        "python": platform.python_version(),
        "cpus": cpus,
        "loadavg_start": round(results.load[0], 2),
        "loadavg_end": round(results.load[1], 2),
        "quick": settings.quick,
        "cards": settings.cards,
        "log_level": "warning",
        "a_duration_s": settings.duration_s,
        **{f"a_{k}": v for k, v in a_row.items() if k != "codes"},
        "baseline_paced_rate": settings.rate,
        "baseline_p50_ms": round(base_p50, 3),
        "baseline_p99_ms": round(base_p99, 3),
        "baseline_ops_per_s": round(base_ops, 1),
        **{
            f"baseline_{name}_{key}": value
            for name, b in zip(("before", "after"), results.baselines, strict=True)
            for key, value in (
                ("p50_ms", round(b.paced.percentile(50), 3)),
                ("p99_ms", round(b.paced.percentile(99), 3)),
                ("ops_per_s", round(b.ops_per_s, 1)),
            )
        },
        "ramp_terminals": settings.ramp_terminals,
        "ramp_clients": settings.clients,
        "ramp_step_s": settings.step_s,
        "ramp": [{k: v for k, v in s.row().items() if k != "codes"} for s in results.steps],
        "max_sustained_rate": max_rate,
        "max_sustained_achieved_rate": round(max_achieved, 1),
        "ratio_p50_latency": round(ratio_latency, 2),
        "ratio_throughput": round(ratio_throughput, 2),
        "target_a_p99_5ms_met": target_a_met,
        "target_2000_taps_s_met": target_ramp_met,
    }
    if results.info is not None:
        summary.update({f"info_{k}": v for k, v in results.info.row().items() if k != "codes"})
    return summary


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds through every ``finally``: the edge is stopped, the client
    # processes are stopped and the temporary sites are deleted, as on Ctrl-C.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    summary = report(settings, run(settings))
    print("BENCH " + json.dumps(summary, sort_keys=True, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
