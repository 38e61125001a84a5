"""How fast a card reported lost at central reaches every connected site's store.

Run from the repository root::

    .venv/bin/python bench/blacklist_propagation.py [--sites N] [--rounds R] [--quick]

What it does, against one private mosquitto (TLS, ACL, passwords; ``tests/central/broker.py``):

1. **Sites** — ``--sites`` sites get broker credentials (``central.provision.add_site`` each,
   one broker reload at the end) and are registered at central by a seed that also holds the
   cardholders. Central runs as ``onecard-central serve --log-level warning`` in its own
   process, as in production, so its event loop shares nothing with the measuring code.
2. **Edges** — ``--workers`` worker processes each host an equal share of the sites as
   in-process ``EdgeService`` instances (store, site logic, sync; TCP terminals disabled):
   each its own MQTT connection (client id ``edge-SITE``, its own credentials) and its own
   SQLite file. 100 separate edge processes would not fit 2 cores; 4 x 25 is the same
   protocol traffic and the same per-site store work. The run starts once central shows
   every site online and every site has applied its initial snapshot.
3. **Rounds** — ``--rounds`` times, ``--gap`` seconds apart, the bench reports one more card
   lost with ``POST /api/v1/operations`` (``card.report_lost``) on central's JSON API, as
   an HQ operator's token: the timer starts before the HTTP call. Central's
   publisher loop (every 0.1 s) broadcasts the delta on ``broadcast/blacklist``. Each site's
   latency is the time from the call until its ``blacklist`` table holds the UID, seen by
   polling every site's database read-only (one sweep of all pending sites, then a short
   sleep). A monitor client subscribed to the broadcast splits the latency into central's
   share (call → delta on the wire) and the fan-out plus the edge's apply.

Reports p50/p99/max over every (site, round) sample; target p99 < 1 s. Prints a table and
ends with one line ``BENCH {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "central"))

import httpx
import msgspec
from broker import bundle_password, free_port, private_broker

# The process helpers are shared with the other sync benchmark (this directory is on sys.path
# when a bench script runs).
from sync_drain import (
    baseline_settings,
    clean_env,
    cpu_seconds,
    running,
    stop,
    tail,
    venv_command,
    wait_central_online,
)

from central import queries
from central.adapters.sqlite_store import CentralStore
from central.master import CentralSeed, apply_seed, head_version
from central.provision import add_site
from edge_agent.adapters.mqtt_client import BrokerSettings, make_client
from edge_agent.config import EdgeConfig, MqttConfig, TerminalsConfig
from edge_agent.logs import configure_logging
from edge_agent.service import EdgeService

CARDHOLDERS = 200
TARGET_P99_S = 1.0
ROUND_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 120.0
#: Pause between two sweeps of the sites' databases.
POLL_S = 0.002
BLACKLIST_TOPIC = "onecard/v1/broadcast/blacklist"


def site_ids(count: int) -> list[str]:
    """``count`` site ids."""
    return [f"SITE-{i:03d}" for i in range(1, count + 1)]


def card_uids(count: int) -> list[str]:
    """``count`` distinct 7-byte card UIDs."""
    return [f"B1{i:012X}" for i in range(1, count + 1)]


def central_seed(sites: list[str], uids: list[str]) -> dict[str, Any]:
    """Cardholders with cards and accounts (every site's snapshot), and the sites."""
    return {
        "persons": [{"id": f"P{i:05d}", "name": f"持卡人{i}"} for i in range(len(uids))],
        "cards": [{"uid": uid, "person_id": f"P{i:05d}"} for i, uid in enumerate(uids)],
        "accounts": [{"person_id": f"P{i:05d}", "cash_fen": 10_000} for i in range(len(uids))],
        "sites": {site: {"policy": {"site": site}} for site in sites},
    }


# -- set-up ------------------------------------------------------------------------------------


def provision(broker: Any, sites: list[str], work: Path) -> dict[str, Path]:
    """Credentials for every site, one broker reload; returns each site's data directory
    with its ``mqtt.password`` in it."""
    bundles = {
        site: add_site(broker.dir.root, site, broker_url=broker.url, out=broker.bundles)
        for site in sites
    }
    broker.reload()
    dirs = {}
    for site, bundle in bundles.items():
        data = work / "sites" / site
        data.mkdir(parents=True)
        (data / "mqtt.password").write_text(bundle_password(bundle))
        dirs[site] = data
    return dirs


async def seed_central(db: Path, seed: dict[str, Any]) -> tuple[int, str]:
    """Load the seed; return the feed head every site's snapshot will carry, and an
    operator's API token."""
    data = msgspec.convert(seed, CentralSeed)
    async with CentralStore.open(db) as store:
        await store.run(lambda conn: apply_seed(conn, data, batch="bench"))
        token = await store.run(lambda conn: queries.add_token(conn, "bench", "operator"))
        return await store.run(head_version), token


def start_workers(
    broker: Any, dirs: dict[str, Path], workers: int, work: Path
) -> list[subprocess.Popen[bytes]]:
    """``workers`` processes, each hosting its share of the sites."""
    sites = sorted(dirs)
    procs = []
    for w in range(workers):
        share = sites[w::workers]
        if not share:
            continue
        spec = {
            "url": broker.url,
            "ca": str(broker.dir.ca_cert),
            "sites": {site: str(dirs[site]) for site in share},
        }
        spec_file = work / f"worker-{w}.json"
        spec_file.write_text(json.dumps(spec))
        with (work / f"worker-{w}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(  # noqa: S603 - this script
                    [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=clean_env(),
                )
            )
    return procs


def run_worker(spec_file: Path) -> None:
    """A worker process: run an ``EdgeService`` per site until SIGTERM."""
    spec = json.loads(spec_file.read_text())
    configure_logging("warning", "json")
    services = [
        EdgeService(
            EdgeConfig(
                site=site,
                data_dir=Path(data),
                terminals=TerminalsConfig(listen=""),
                mqtt=MqttConfig(
                    url=spec["url"],
                    password_file=Path(data) / "mqtt.password",
                    ca_file=Path(spec["ca"]),
                ),
            ),
            version="bench",
        )
        for site, data in spec["sites"].items()
    ]

    async def go() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: [s.stop() for s in services])
        async with asyncio.TaskGroup() as group:
            for service in services:
                group.create_task(service.run())

    asyncio.run(go())


def wait_ready(
    central_db: Path,
    dbs: dict[str, Path],
    head: int,
    procs: list[subprocess.Popen[Any]],
    work: Path,
) -> float:
    """Wait until central shows every site online and every site has applied its snapshot
    (feed version ≥ the seed's head); return how long it took."""
    started = time.monotonic()
    pending = set(dbs)
    with contextlib.closing(sqlite3.connect(f"file:{central_db}?mode=ro", uri=True)) as hq:
        while True:
            _check_alive(procs, work)
            for site in list(pending):
                if not dbs[site].exists():
                    continue
                try:
                    with contextlib.closing(
                        sqlite3.connect(f"file:{dbs[site]}?mode=ro", uri=True)
                    ) as conn:
                        row = conn.execute(
                            "SELECT value FROM meta WHERE key = 'feed_version'"
                        ).fetchone()
                except sqlite3.OperationalError:
                    continue  # still being created and migrated
                if row is not None and int(row[0]) >= head:
                    pending.discard(site)
            online = hq.execute("SELECT count(*) FROM sites WHERE online = 1").fetchone()[0]
            if not pending and online == len(dbs):
                return time.monotonic() - started
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise SystemExit(
                    f"not ready after {READY_TIMEOUT_S:.0f} s: {online}/{len(dbs)} online,"
                    f" {len(pending)} without a snapshot"
                )
            time.sleep(0.2)


def _check_alive(procs: list[subprocess.Popen[Any]], work: Path) -> None:
    for i, proc in enumerate(procs):
        if proc.poll() is not None:
            raise SystemExit(
                f"worker {i} exited ({proc.returncode}):\n{tail(work / f'worker-{i}.log')}"
            )


# -- the rounds --------------------------------------------------------------------------------


@dataclass
class Round:
    """One card reported lost, and when each site had it."""

    uid: str
    version: int = 0
    commit_s: float = 0.0
    broadcast_s: float | None = None
    latencies: dict[str, float] = field(default_factory=dict)
    missing: int = 0


@dataclass
class Monitor:
    """Watches ``broadcast/blacklist``: when did each delta version go on the wire."""

    seen: dict[int, float] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, settings: BrokerSettings) -> None:
        async with make_client(settings, identifier="bench-blacklist-monitor") as client:
            await client.subscribe(BLACKLIST_TOPIC, qos=1)
            self.ready.set()
            async for message in client.messages:
                now = time.monotonic()
                if isinstance(message.payload, bytes) and message.payload:
                    version = json.loads(message.payload)["version"]
                    self.seen.setdefault(int(version), now)


async def run_rounds(  # noqa: PLR0917 - the run's parts
    broker: Any, api: str, token: str, dbs: dict[str, Path], uids: list[str], gap: float
) -> tuple[list[Round], float]:
    """Report each card lost in turn and time its arrival at every site; also returns the
    mean time of one sweep over all sites' databases (the polling resolution)."""
    monitor = Monitor()
    conns = {
        site: sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
        for site, db in dbs.items()
    }
    rounds: list[Round] = []
    sweeps = sweep_time = 0.0
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with asyncio.TaskGroup() as group, httpx.AsyncClient(base_url=api) as http:
            watcher = group.create_task(monitor.run(baseline_settings(broker)))
            await asyncio.wait_for(monitor.ready.wait(), 10)
            for uid in uids:
                await asyncio.sleep(gap)
                result = Round(uid=uid)
                body = {"op": "card.report_lost", "request_id": f"lost-{uid}", "card_uid": uid}
                started = time.monotonic()
                answer = await http.post("/api/v1/operations", json=body, headers=headers)
                result.commit_s = time.monotonic() - started
                if answer.status_code != 200:
                    raise SystemExit(f"report lost {uid}: {answer.status_code} {answer.text}")
                result.version = int(answer.headers["blacklist-version"])
                pending = dict(conns)
                deadline = started + ROUND_TIMEOUT_S
                while pending and time.monotonic() < deadline:
                    t0 = time.monotonic()
                    for site, conn in list(pending.items()):
                        row = conn.execute("SELECT 1 FROM blacklist WHERE uid = ?", (uid,))
                        if row.fetchone() is not None:
                            result.latencies[site] = time.monotonic() - started
                            del pending[site]
                    sweep_time += time.monotonic() - t0
                    sweeps += 1
                    await asyncio.sleep(POLL_S)
                result.missing = len(pending)
                seen = monitor.seen.get(result.version)
                result.broadcast_s = None if seen is None else seen - started
                rounds.append(result)
                print(
                    f"round {len(rounds):>3}: v{result.version}"
                    f" max {max(result.latencies.values(), default=float('nan')) * 1000:.0f} ms"
                    f"{f', {result.missing} sites MISSING' if result.missing else ''}",
                    flush=True,
                )
            watcher.cancel()
    finally:
        for conn in conns.values():
            conn.close()
    return rounds, sweep_time / max(1, sweeps)


# -- report -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def ms(seconds: float | None) -> str:
    """Seconds as a millisecond figure for the table."""
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def report(
    rounds: list[Round],
    *,
    sites: int,
    workers: int,
    ready_s: float,
    sweep_s: float,
    cpu: dict[str, float],
) -> None:
    samples = [v for r in rounds for v in r.latencies.values()]
    missing = sum(r.missing for r in rounds)
    # A site that never got the card counts as slower than any measured sample.
    values = samples + [float("inf")] * missing
    p50, p99, worst = percentile(values, 50), percentile(values, 99), max(values)
    broadcasts = [r.broadcast_s for r in rounds if r.broadcast_s is not None]
    fanout = [v - r.broadcast_s for r in rounds if r.broadcast_s for v in r.latencies.values()]
    print()
    print("| round | version | commit ms | on the wire ms | first site ms | p50 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        lat = sorted(r.latencies.values())
        note = f" (+{r.missing} missing)" if r.missing else ""
        print(
            f"| {i} | {r.version} | {ms(r.commit_s)} | {ms(r.broadcast_s)}"
            f" | {ms(lat[0] if lat else None)} | {ms(percentile(lat, 50) if lat else None)}"
            f" | {ms(lat[-1] if lat else None)}{note} |"
        )
    print()
    print("| over all (site, round) samples | n | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    print(f"| call → site's store has it | {len(values):,} | {ms(p50)} | {ms(p99)} | {ms(worst)} |")
    if broadcasts:
        print(
            f"| call → delta on the wire (central's share) | {len(broadcasts)}"
            f" | {ms(percentile(broadcasts, 50))} | {ms(percentile(broadcasts, 99))}"
            f" | {ms(max(broadcasts))} |"
        )
    if fanout:
        print(
            f"| on the wire → site's store (fan-out + apply) | {len(fanout):,}"
            f" | {ms(percentile(fanout, 50))} | {ms(percentile(fanout, 99))} | {ms(max(fanout))} |"
        )
    print()
    print(
        f"{sites} sites in {workers} worker processes, all online with snapshots in"
        f" {ready_s:.1f} s; polling sweep {sweep_s * 1000:.2f} ms + {POLL_S * 1000:.0f} ms sleep"
    )
    print("CPU seconds during the rounds: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    met = missing == 0 and p99 < TARGET_P99_S
    print(
        f"target p99 < {TARGET_P99_S * 1000:.0f} ms: {'met' if met else 'NOT met'}"
        f" (p99 {ms(p99)} ms, {missing} site-rounds missing)"
    )
    bench = {
        "bench": "blacklist_propagation",
        "sites": sites,
        "rounds": len(rounds),
        "samples": len(values),
        "missing": missing,
        "p50_ms": round(p50 * 1000, 1),
        "p99_ms": round(p99 * 1000, 1) if p99 != float("inf") else None,
        "max_ms": round(worst * 1000, 1) if worst != float("inf") else None,
        "central_share_p50_ms": round(percentile(broadcasts, 50) * 1000, 1) if broadcasts else None,
        "fanout_apply_p50_ms": round(percentile(fanout, 50) * 1000, 1) if fanout else None,
        "workers": workers,
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "target_p99_ms": TARGET_P99_S * 1000,
        "target_met": met,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print("BENCH " + json.dumps(bench, ensure_ascii=False))


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between two cards")
    parser.add_argument("--workers", type=int, default=4, help="edge worker processes")
    parser.add_argument("--quick", action="store_true", help="10 sites, 5 rounds (smoke test)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return
    if args.quick:
        args.sites, args.rounds, args.workers = 10, 5, 2

    work = Path(tempfile.mkdtemp(prefix="onecard-blacklist-"))
    work.chmod(0o711)
    try:
        with private_broker() as broker:
            run(broker, work, args)
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(broker: Any, work: Path, args: argparse.Namespace) -> None:
    """Provision, start central and the edges, measure the rounds, report."""
    sites = site_ids(args.sites)
    uids = card_uids(CARDHOLDERS)
    central_db = work / "central.db"
    started = time.monotonic()
    dirs = provision(broker, sites, work)
    head, token = asyncio.run(seed_central(central_db, central_seed(sites, uids)))
    api_port = free_port()
    print(f"provisioned {len(sites)} sites in {time.monotonic() - started:.1f} s", flush=True)
    central_cmd = [
        *venv_command("onecard-central"),
        "serve",
        "--db",
        str(central_db),
        "--broker-url",
        broker.url,
        "--password-file",
        str(broker.dir.central_password),
        "--ca-file",
        str(broker.dir.ca_cert),
        "--log-level",
        "warning",
        "--http",
        f"127.0.0.1:{api_port}",
    ]
    with running(central_cmd, work / "central.log") as central:
        asyncio.run(wait_central_online(broker, time.time()))
        procs = start_workers(broker, dirs, args.workers, work)
        try:
            dbs = {site: data / "edge.db" for site, data in dirs.items()}
            ready_s = wait_ready(central_db, dbs, head, procs, work)
            print(f"{len(sites)} sites online with their snapshots in {ready_s:.1f} s", flush=True)
            pids = {"central": central.pid, "mosquitto": broker.process.pid}
            pids |= {f"worker{i}": p.pid for i, p in enumerate(procs)}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            rounds, sweep_s = asyncio.run(
                run_rounds(
                    broker,
                    f"http://127.0.0.1:{api_port}",
                    token,
                    dbs,
                    uids[: args.rounds],
                    args.gap,
                )
            )
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            cpu = {
                "central": after["central"] - before["central"],
                "mosquitto": after["mosquitto"] - before["mosquitto"],
                "edge workers": sum(after[n] - before[n] for n in pids if n.startswith("worker")),
            }
            _check_alive(procs, work)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                stop(proc)
    report(rounds, sites=len(sites), workers=len(procs), ready_s=ready_s, sweep_s=sweep_s, cpu=cpu)


if __name__ == "__main__":
    main()
