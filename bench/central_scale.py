"""Central at 500 sites: backlogs drained at once into SQLite, PostgreSQL, two workers.

Run from the repository root::

    .venv/bin/python bench/central_scale.py [--sites 500] [--records-per-site 200]
        [--modes a,b,c] [--rounds 5] [--loaders 1]

Modes, all in one run, each on a fresh private mosquitto (TLS, ACL, per-site passwords as
``onecard-central broker init`` / ``site add`` write them; ``tests/central/broker.py``) and a
fresh database:

- **(a)** SQLite, one ``onecard-central serve`` worker;
- **(b)** PostgreSQL (a private cluster from ``tests/central/postgres.py``, a new database
  per mode), one worker;
- **(c)** the same with two workers (``--worker w1`` and ``--worker w2``) sharing the uplink
  through MQTT shared subscriptions, one of them the leader that publishes.

Per mode:

1. **Set-up** — ``--sites`` sites get broker credentials (``central.provision.add_site``
   each, one reload) and are registered at central with ``onecard-central seed`` (sites with
   a POS and a door terminal, cardholders with rich accounts); an operator token comes from
   ``onecard-central token add``. Central runs as separate ``onecard-central serve``
   processes, the first with the JSON API.
2. **Sites** — ``--loaders`` processes (``bench/_scale_sites.py``) host the sites: each site
   its own MQTT connection, credentials and client id, the edge's subscriptions and retained
   birth, and an in-memory backlog of ``--records-per-site`` valid records (40 % approved
   sales in lane 0, door access in lane 1) cut and windowed as the edge does. The drain
   starts once central shows every site online.
3. **Drain** — every site sends its backlog at once and waits for central's ``down/ack`` to
   cover it. Records/s is all records over the wall time from the first batch published to
   the last ack received; ack latency is per batch, publish → the ack covering it. Then
   central's database must hold every record once and every sale once in the ledger.
4. **Blacklist** — ``--rounds`` times a card is reported lost with ``POST
   /api/v1/operations`` (``card.report_lost``); the timer starts before the call, and each
   site's sample is when its client received the delta on ``broadcast/blacklist`` (receipt,
   not an edge store's apply: ``bench/blacklist_propagation.py`` measures that end to end at
   100 full edges). A monitor client splits off central's share (call → delta on the wire).

Everything shares one machine: central, PostgreSQL, mosquitto and the load generator compete
for its CPUs (2 here), so the figures are a floor; the table shows each one's CPU seconds and
how busy the machine was. Prints a table, the ratios (b)/(a), (c)/(a), (c)/(b), and ends with
one line ``BENCH {json}``; exits 1 (after the report) if any mode failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "central"))

import httpx
from blacklist_propagation import Monitor, percentile, provision, site_ids
from broker import free_port, private_broker
from postgres import private_cluster

# The process helpers are shared with the other sync benchmarks (this directory is on
# sys.path when a bench script runs).
from sync_drain import (
    BALANCE_FEN,
    baseline_settings,
    card_uids,
    clean_env,
    person_id,
    running,
    tail,
    venv_command,
    wait_central_online,
)

from protocol import auth

#: Cardholders: the records' cards, plus one card per blacklist round that no record uses.
CARDHOLDERS = 200
EPOCH = 1
TARGET_SQLITE_RECORDS_S = 20_000.0
TARGET_PROPAGATION_P99_S = 2.0
READY_TIMEOUT_S = 180.0
CLI_TIMEOUT_S = 120.0
LOADER_TIMEOUT_S = 30.0
#: The loaders wait this long for a card to reach every site (a site still without it then
#: counts as missing: slower than any sample); the parent a little longer.
WATCH_TIMEOUT_S = 45.0
ROUND_GAP_S = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOADER = Path(__file__).resolve().parent / "_scale_sites.py"


@dataclass(frozen=True)
class Mode:
    """One configuration of central."""

    key: str
    store: str
    workers: int

    @property
    def label(self) -> str:
        """For the table."""
        return f"({self.key}) {self.store}, {self.workers} worker{'s' * (self.workers > 1)}"


MODES = {
    "a": Mode("a", "SQLite", 1),
    "b": Mode("b", "PostgreSQL", 1),
    "c": Mode("c", "PostgreSQL", 2),
}


class BenchError(Exception):
    """A mode could not be measured; the message says why."""


# -- the database -----------------------------------------------------------------------------


@dataclass
class Database:
    """A mode's fresh database: what ``--db`` gets, and read-only checks on it."""

    url: str
    sqlite_path: Path | None = None
    cluster: Any = None
    name: str = ""

    def row(self, sql: str) -> list[int]:
        """The first row of ``sql``, as integers."""
        if self.sqlite_path is not None:
            uri = f"file:{self.sqlite_path}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
                return [int(v) for v in conn.execute(sql).fetchone()]
        out = self.cluster.psql(sql, self.name).strip()
        return [int(v) for v in out.split("|")]

    def scalar(self, sql: str) -> int:
        """The single integer ``sql`` returns."""
        return self.row(sql)[0]


def open_database(mode: Mode, work: Path, cluster: Any) -> Database:
    """A new SQLite file or a new database in the private PostgreSQL cluster."""
    if mode.store == "SQLite":
        path = work / "central.db"
        return Database(url=str(path), sqlite_path=path)
    name = cluster.create_database()
    return Database(url=cluster.dsn(name), cluster=cluster, name=name)


# -- central ----------------------------------------------------------------------------------


def central_seed(sites: list[str], uids: list[str]) -> dict[str, Any]:
    """Cardholders with rich accounts, and every site with a POS, a door terminal and a door
    (what the records name)."""

    def site_data(site: str) -> dict[str, Any]:
        return {
            "policy": {"site": site},
            "terminals": [
                {"id": "POS-01", "kind": "pos", "key_hex": auth.new_key().hex()},
                {"id": "DOOR-01", "kind": "door", "key_hex": auth.new_key().hex()},
            ],
            "door_groups": [{"id": "MAIN"}],
            "doors": [{"id": "D1", "group_id": "MAIN", "terminal_id": "DOOR-01"}],
        }

    return {
        "persons": [{"id": person_id(i), "name": f"持卡人{i}"} for i in range(len(uids))],
        "cards": [{"uid": uid, "person_id": person_id(i)} for i, uid in enumerate(uids)],
        "accounts": [
            {"person_id": person_id(i), "cash_fen": BALANCE_FEN} for i in range(len(uids))
        ],
        "sites": {site: site_data(site) for site in sites},
    }


def central_cli(args: list[str], work: Path) -> str:
    """Run ``onecard-central ARGS`` (in ``work``); its stdout, or BenchError with its output."""
    done = subprocess.run(  # noqa: S603 - our own console script
        [*venv_command("onecard-central"), *args],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise BenchError(
            f"onecard-central {args[0]} failed ({done.returncode}):\n" + "\n".join(output)
        )
    return done.stdout


def serve_has_workers() -> bool:
    """Whether ``onecard-central serve`` takes ``--worker`` (issue 10)."""
    out = subprocess.run(  # noqa: S603 - our own console script
        [*venv_command("onecard-central"), "serve", "--help"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    ).stdout
    return "--worker" in out


def serve_command(
    broker: Any, db: Database, worker: str | None, http_port: int | None
) -> list[str]:
    """``onecard-central serve`` for one worker (the first also serves the JSON API)."""
    cmd = [
        *venv_command("onecard-central"),
        "serve",
        "--db",
        db.url,
        "--broker-url",
        broker.url,
        "--password-file",
        str(broker.dir.central_password),
        "--ca-file",
        str(broker.dir.ca_cert),
        "--log-level",
        "warning",
    ]
    if worker is not None:
        cmd += ["--worker", worker]
    if http_port is not None:
        cmd += ["--http", f"127.0.0.1:{http_port}"]
    return cmd


def check_alive(procs: dict[str, subprocess.Popen[bytes]], work: Path) -> None:
    """BenchError with its log if a central worker has exited."""
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise BenchError(
                f"central {name} exited ({proc.returncode}):\n{tail(work / f'central-{name}.log')}"
            )


async def wait_workers(
    broker: Any, procs: dict[str, subprocess.Popen[bytes]], api: str, work: Path
) -> None:
    """Until every worker is connected to the broker (its client id in the broker's log)
    and the JSON API answers."""
    started = time.time()
    await wait_central_online(broker, started - 60)
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(base_url=api) as http:
        while True:
            check_alive(procs, work)
            log = broker.log()
            connected = all(f" as central-{name} (" in log for name in procs)
            with contextlib.suppress(httpx.HTTPError):
                if connected and (await http.get("/api/v1/openapi.json")).status_code < 500:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"central workers not ready after {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)


async def wait_online(
    db: Database, sites: int, procs: dict[str, subprocess.Popen[bytes]], work: Path
) -> float:
    """Until central's site table shows every site online; how long it took."""
    started = time.monotonic()
    while True:
        check_alive(procs, work)
        online = await asyncio.to_thread(db.scalar, "SELECT count(*) FROM sites WHERE online = 1")
        if online == sites:
            return time.monotonic() - started
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise BenchError(f"only {online}/{sites} sites online at central after births")
        await asyncio.sleep(0.2)


# -- the load generator -------------------------------------------------------------------------


@dataclass
class Loader:
    """One ``_scale_sites.py`` process and its line protocol."""

    index: int
    proc: asyncio.subprocess.Process
    log: Path
    sites: int

    async def send(self, line: str) -> None:
        """One command."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()

    async def expect(self, event: str, within_s: float) -> dict[str, Any]:
        """The next line, which must be ``event``; BenchError on an error, exit or silence."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(within_s):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            raise BenchError(
                f"loader {self.index}: no {event!r} within {within_s:.0f} s\n{tail(self.log, 10)}"
            ) from None
        if not line:
            await self.proc.wait()
            raise BenchError(
                f"loader {self.index} exited ({self.proc.returncode}) waiting for {event!r}:"
                f"\n{tail(self.log)}"
            )
        message: dict[str, Any] = json.loads(line)
        if message["event"] == "error":
            raise BenchError(f"loader {self.index}: {message['message']}")
        if message["event"] != event:
            raise BenchError(f"loader {self.index}: {message['event']!r}, expected {event!r}")
        return message


@contextlib.asynccontextmanager
async def loaders(specs: list[dict[str, Any]], work: Path) -> Any:
    """Start a loader per spec; QUIT them (then kill) on the way out."""
    started: list[Loader] = []
    try:
        for i, spec in enumerate(specs):
            spec_file = work / f"loader-{i}.json"
            spec_file.write_text(json.dumps(spec))
            spec_file.chmod(0o600)  # it holds the sites' passwords
            log = work / f"loader-{i}.log"
            with log.open("wb") as errors:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(LOADER),
                    str(spec_file),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    env=clean_env(),
                )
            started.append(Loader(i, proc, log, len(spec["sites"])))
        yield started
    finally:
        for loader in started:
            if loader.proc.returncode is None:
                with contextlib.suppress(OSError):
                    await loader.send("QUIT")
        for loader in started:
            try:
                async with asyncio.timeout(15):
                    await loader.proc.wait()
            except TimeoutError:
                loader.proc.kill()
                await loader.proc.wait()


# -- CPU --------------------------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (PostgreSQL's backends
    are the postmaster's children)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += [c for c, p in parents.items() if p == current]
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


# -- one mode -----------------------------------------------------------------------------------


@dataclass
class ModeResult:
    """A mode's figures."""

    mode: Mode
    records: int = 0
    batches: int = 0
    seconds: float = 0.0
    ack_latencies: list[float] = field(default_factory=list)
    resends: int = 0
    connect_s: float = 0.0
    online_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0
    verified: str = ""
    propagation: list[float] = field(default_factory=list)
    missing: int = 0
    #: Round 1 runs right after the drain; rounds 2.. on a settled central.
    steady: list[float] = field(default_factory=list)
    steady_missing: int = 0
    #: Per round: when the last site got the card (None: some never did).
    round_last: list[float | None] = field(default_factory=list)
    on_the_wire: list[float] = field(default_factory=list)
    rounds: int = 0
    error: str | None = None

    @property
    def rate(self) -> float:
        """Records per second, first publish → last ack."""
        return self.records / self.seconds if self.seconds else 0.0


async def run_mode(
    mode: Mode, args: argparse.Namespace, work: Path, cluster: Any, workers_option: bool
) -> ModeResult:
    """Set up, drain, check, blacklist rounds — for one mode."""
    result = ModeResult(mode=mode)
    work = work / mode.key
    work.mkdir()
    work.chmod(0o711)
    sites = site_ids(args.sites)
    uids = card_uids(CARDHOLDERS + args.rounds)
    if mode.workers > 1 and not workers_option:
        raise BenchError("onecard-central serve has no --worker option yet (issue 10)")
    names: list[str | None] = (
        [f"w{i}" for i in range(1, mode.workers + 1)] if workers_option else [None]
    )
    db = open_database(mode, work, cluster)
    with private_broker() as broker:
        started = time.monotonic()
        dirs = provision(broker, sites, work)
        passwords = {site: (d / "mqtt.password").read_text().strip() for site, d in dirs.items()}
        seed = work / "seed.json"
        seed.write_text(json.dumps(central_seed(sites, uids), ensure_ascii=False))
        central_cli(["seed", "--db", db.url, str(seed), "--batch", "bench"], work)
        token = central_cli(
            ["token", "add", "bench", "--role", "operator", "--db", db.url], work
        ).strip()
        try:
            registered = db.scalar("SELECT count(*) FROM sites")
        except Exception as exc:  # noqa: BLE001 - sqlite3 or psql: either way, say where
            raise BenchError(
                f"the seed is not in {db.url} ({exc}); does --db take this URL yet?"
            ) from None
        if registered != len(sites):
            raise BenchError(f"{registered} sites registered at central, expected {len(sites)}")
        head = db.scalar("SELECT coalesce(max(version), 0) FROM changes")
        print(
            f"{mode.label}: {len(sites)} sites provisioned and seeded in"
            f" {time.monotonic() - started:.1f} s",
            flush=True,
        )
        api_port = free_port()
        with contextlib.ExitStack() as stack:
            procs = {
                name or "main": stack.enter_context(
                    running(
                        serve_command(broker, db, name, api_port if i == 0 else None),
                        work / f"central-{name or 'main'}.log",
                    )
                )
                for i, name in enumerate(names)
            }
            await wait_workers(broker, procs, f"http://127.0.0.1:{api_port}", work)
            shares = [sorted(passwords)[i :: args.loaders] for i in range(args.loaders)]
            specs = [
                {
                    "url": broker.url,
                    "ca": str(broker.dir.ca_cert),
                    "epoch": EPOCH,
                    "feed_version": head,
                    "records_per_site": args.records_per_site,
                    "uids": uids[:CARDHOLDERS],
                    "sites": {site: passwords[site] for site in share},
                }
                for share in shares
                if share
            ]
            async with loaders(specs, work) as group:
                ready = [await g.expect("ready", READY_TIMEOUT_S) for g in group]
                result.connect_s = max(r["connect_s"] for r in ready)
                result.online_s = await wait_online(db, len(sites), procs, work)
                print(
                    f"{mode.label}: {len(sites)} sites connected in {result.connect_s:.1f} s,"
                    f" all online at central {result.online_s:.1f} s later",
                    flush=True,
                )
                await drain(result, ready, group, procs, broker, cluster)
                check_alive(procs, work)
                result.verified = verify(db, result, ready)
                print(
                    f"{mode.label}: {result.records:,} records in {result.seconds:.2f} s"
                    f" = {result.rate:,.0f} records/s; {result.verified}",
                    flush=True,
                )
                await blacklist_rounds(result, broker, token, api_port, group, uids[CARDHOLDERS:])
                check_alive(procs, work)
    return result


async def drain(  # noqa: PLR0917 - the mode's parts
    result: ModeResult,
    ready: list[dict[str, Any]],
    group: list[Loader],
    procs: dict[str, subprocess.Popen[bytes]],
    broker: Any,
    cluster: Any,
) -> None:
    """Every site sends its backlog at once; wait for every ack."""
    result.records = sum(r["records"] for r in ready)
    result.batches = sum(r["batches"] for r in ready)
    timeout = max(60.0, result.records / 2000)
    pids = {f"central {name}": p.pid for name, p in procs.items()}
    pids["mosquitto"] = broker.process.pid
    if cluster is not None and result.mode.store == "PostgreSQL":
        pids["postgres"] = cluster.process.pid
    pids |= {f"loader {g.index}": g.proc.pid for g in group}
    before = {name: tree_cpu(pid) for name, pid in pids.items()}
    busy_before = machine_busy()
    for g in group:
        await g.send(f"DRAIN {timeout}")
    drained = [await g.expect("drained", timeout + LOADER_TIMEOUT_S) for g in group]
    busy_after = machine_busy()
    after = {name: tree_cpu(pid) for name, pid in pids.items()}
    result.seconds = max(d["last_ack"] for d in drained) - min(d["first_publish"] for d in drained)
    result.ack_latencies = [v for d in drained for v in d["latencies"]]
    result.resends = sum(d["resends"] for d in drained)
    result.cpu = {name: after[name] - before[name] for name in pids}
    busy, total = (a - b for a, b in zip(busy_after, busy_before, strict=True))
    result.busy = busy / total if total else 0.0
    # Whatever else ran on the machine meanwhile (/proc/stat counts in clock ticks too).
    result.cpu["other"] = max(0.0, busy / CLK_TCK - sum(result.cpu.values()))


def verify(db: Database, result: ModeResult, ready: list[dict[str, Any]]) -> str:
    """Central holds every record once and every sale once in the ledger."""
    stored = db.scalar("SELECT count(*) FROM records")
    sales, spent = db.row(
        "SELECT count(*), coalesce(-sum(cash_fen), 0) FROM ledger WHERE kind = 'purchase'"
    )
    anomalies = db.scalar("SELECT count(*) FROM anomalies")
    dead = db.scalar("SELECT count(*) FROM dead_letters")
    purchases = sum(r["purchases"] for r in ready)
    spent_fen = sum(r["spent_fen"] for r in ready)
    if (stored, sales, spent, anomalies, dead) != (result.records, purchases, spent_fen, 0, 0):
        raise BenchError(
            f"central's database disagrees: {stored:,} records (sent {result.records:,}),"
            f" {sales:,} sales for {spent:,} fen (sent {purchases:,} for {spent_fen:,}),"
            f" {anomalies} anomalies, {dead} dead letters"
        )
    return f"central holds all {stored:,} records, {sales:,} sales = {spent:,} fen: OK"


async def blacklist_rounds(  # noqa: PLR0917 - the mode's parts
    result: ModeResult,
    broker: Any,
    token: str,
    api_port: int,
    group: list[Loader],
    cards: list[str],
) -> None:
    """Report each card lost in turn; collect when each site received it."""
    monitor = Monitor()
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        asyncio.TaskGroup() as tasks,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as http,
    ):
        watcher = tasks.create_task(monitor.run(baseline_settings(broker)))
        await asyncio.wait_for(monitor.ready.wait(), 10)
        for uid in cards:
            await asyncio.sleep(ROUND_GAP_S)
            for g in group:
                await g.send(f"WATCH {uid} {WATCH_TIMEOUT_S}")
            for g in group:
                await g.expect("armed", LOADER_TIMEOUT_S)
            body = {"op": "card.report_lost", "request_id": f"lost-{uid}", "card_uid": uid}
            started = time.monotonic()
            answer = await http.post("/api/v1/operations", json=body, headers=headers)
            if answer.status_code != 200:
                raise BenchError(f"report lost {uid}: {answer.status_code} {answer.text[:300]}")
            version = int(answer.headers["blacklist-version"])
            times: dict[str, float] = {}
            for g in group:
                seen = await g.expect("seen", WATCH_TIMEOUT_S + LOADER_TIMEOUT_S)
                times |= seen["times"]
            samples = [t - started for t in times.values()]
            missing = sum(g.sites for g in group) - len(times)
            result.propagation += samples
            result.missing += missing
            if result.rounds:
                result.steady += samples
                result.steady_missing += missing
            result.round_last.append(None if missing else max(samples, default=None))
            for _ in range(100):  # the monitor's copy may still be on its way to us
                if version in monitor.seen:
                    break
                await asyncio.sleep(0.01)
            wire = monitor.seen.get(version)
            if wire is not None:
                result.on_the_wire.append(wire - started)
            result.rounds += 1
            print(
                f"{result.mode.label}: round {result.rounds}: v{version}, on the wire"
                f" {ms(None if wire is None else wire - started)} ms, last site"
                f" {ms(max(samples, default=None))} ms"
                f"{f', {missing} sites MISSING' if missing else ''}",
                flush=True,
            )
        watcher.cancel()


# -- report -------------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    """Seconds as a millisecond figure for the table."""
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def stats(values: list[float], missing: int = 0) -> dict[str, float | None]:
    """p50/p99/max in ms; a missing sample counts as slower than any measured one."""
    padded = values + [float("inf")] * missing
    if not padded:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}

    def rounded(v: float) -> float | None:
        return None if v == float("inf") else round(v * 1000, 1)

    return {
        "p50_ms": rounded(percentile(padded, 50)),
        "p99_ms": rounded(percentile(padded, 99)),
        "max_ms": rounded(max(padded)),
    }


def report(results: list[ModeResult], args: argparse.Namespace) -> bool:
    """Print the table, ratios and targets, and the BENCH line; True if every target is met."""
    print()
    print(
        "| mode | records | batches | seconds | records/s | ack p50 ms | ack p99 ms"
        " | blacklist p50 ms | p99 ms | max ms | CPU s (machine busy) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.error is not None:
            print(f"| {r.mode.label} | FAILED: {r.error.splitlines()[0][:120]} |")
            continue
        ack = stats(r.ack_latencies)
        prop = stats(r.propagation, r.missing)
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in r.cpu.items())
        print(
            f"| {r.mode.label} | {r.records:,} | {r.batches:,} | {r.seconds:.2f}"
            f" | **{r.rate:,.0f}** | {ack['p50_ms']} | {ack['p99_ms']}"
            f" | {prop['p50_ms']} | **{prop['p99_ms']}** | {prop['max_ms']}"
            f" | {cpu} ({r.busy:.0%}) |"
        )
    ok = {r.mode.key: r for r in results if r.error is None}
    ratios = {}
    for num, den in (("b", "a"), ("c", "a"), ("c", "b")):
        if num in ok and den in ok and ok[den].rate:
            ratios[f"{num}/{den}"] = round(ok[num].rate / ok[den].rate, 3)
    print()
    if ratios:
        print("records/s ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    for r in results:
        if r.error is not None:
            print(f"{r.mode.label} FAILED:\n{r.error}")
            continue
        wire = stats(r.on_the_wire)
        steady = stats(r.steady, r.steady_missing)
        print(
            f"{r.mode.label}: blacklist round 1 (right after the drain): last site"
            f" {ms(r.round_last[0] if r.round_last else None)} ms; rounds 2-{r.rounds}:"
            f" p50 {steady['p50_ms']} ms, p99 {steady['p99_ms']} ms, max {steady['max_ms']} ms"
        )
        print(
            f"{r.mode.label}: sites connected in {r.connect_s:.1f} s, all online at central"
            f" {r.online_s:.1f} s later; {r.resends} resend_from; {r.verified};"
            f" blacklist: {r.rounds} rounds, {r.missing} site-rounds missing, central's share"
            f" (call → delta on the wire) p50 {wire['p50_ms']} ms"
        )
    print(
        f"{args.sites} sites x {args.records_per_site} records in {args.loaders} loader"
        f" process(es); central, mosquitto, PostgreSQL and the loaders share {os.cpu_count()}"
        " CPUs (machine busy = share of all CPUs during the drain; other = CPU seconds of"
        " every other process on the machine meanwhile)"
    )
    checks: dict[str, bool] = {}
    if "a" in ok:
        checks["sqlite_records_per_s"] = ok["a"].rate >= TARGET_SQLITE_RECORDS_S
    for key in ("b", "c"):
        if key in ok and "a" in ok:
            checks[f"{key}_faster_than_a"] = ok[key].rate > ok["a"].rate
    for key, r in ok.items():
        p99 = stats(r.propagation, r.missing)["p99_ms"]
        checks[f"{key}_propagation_p99"] = p99 is not None and p99 < TARGET_PROPAGATION_P99_S * 1000
    met = bool(checks) and all(checks.values()) and len(ok) == len(results)
    print(
        f"targets: ≥ {TARGET_SQLITE_RECORDS_S:,.0f} records/s on SQLite, more with PostgreSQL,"
        f" blacklist p99 < {TARGET_PROPAGATION_P99_S * 1000:.0f} ms at {args.sites} sites: "
        + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in checks.items())
    )
    bench = {
        "bench": "central_scale",
        "sites": args.sites,
        "records_per_site": args.records_per_site,
        "loaders": args.loaders,
        "modes": {
            r.mode.key: (
                {"store": r.mode.store, "workers": r.mode.workers, "error": r.error}
                if r.error is not None
                else {
                    "store": r.mode.store,
                    "workers": r.mode.workers,
                    "records": r.records,
                    "batches": r.batches,
                    "seconds": round(r.seconds, 3),
                    "records_per_s": round(r.rate),
                    "ack": stats(r.ack_latencies),
                    "blacklist": stats(r.propagation, r.missing)
                    | {"rounds": r.rounds, "missing": r.missing},
                    "blacklist_steady": stats(r.steady, r.steady_missing),
                    "blacklist_round_last_ms": [
                        None if v is None else round(v * 1000, 1) for v in r.round_last
                    ],
                    "blacklist_on_the_wire_p50_ms": stats(r.on_the_wire)["p50_ms"],
                    "resends": r.resends,
                    "connect_s": round(r.connect_s, 2),
                    "cpu_s": {k: round(v, 2) for k, v in r.cpu.items()},
                    "machine_busy": round(r.busy, 3),
                }
            )
            for r in results
        },
        "ratios": ratios,
        "targets": checks,
        "target_met": met,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print("BENCH " + json.dumps(bench, ensure_ascii=False))
    return met


# -- main ---------------------------------------------------------------------------------------


def parse_modes(text: str) -> list[Mode]:
    """``a,b,c`` → the modes, in that order."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODES]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"modes are a, b, c (comma separated), not {text!r}")
    return [MODES[k] for k in keys]


@contextlib.contextmanager
def maybe_cluster(modes: list[Mode]) -> Iterator[Any]:
    """One private PostgreSQL cluster if a mode needs it."""
    if any(m.store == "PostgreSQL" for m in modes):
        with private_cluster() as cluster:
            yield cluster
    else:
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=500)
    parser.add_argument("--records-per-site", type=int, default=200)
    parser.add_argument("--modes", type=parse_modes, default=parse_modes("a,b,c"))
    parser.add_argument("--rounds", type=int, default=5, help="blacklist rounds per mode")
    parser.add_argument("--loaders", type=int, default=1, help="load generator processes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="onecard-scale-"))
    work.chmod(0o711)
    results: list[ModeResult] = []
    workers_option = serve_has_workers()
    try:
        with maybe_cluster(args.modes) as cluster:
            for mode in args.modes:
                try:
                    results.append(asyncio.run(run_mode(mode, args, work, cluster, workers_option)))
                except Exception as exc:  # noqa: BLE001 - the report says which mode and why
                    error = str(exc) if isinstance(exc, BenchError) else repr(exc)
                    print(f"{mode.label} FAILED: {error}", file=sys.stderr, flush=True)
                    results.append(ModeResult(mode=mode, error=error))
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    # A target not met is a finding the report states; a mode that could not run is a failure.
    report(results, args)
    if any(r.error is not None for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
