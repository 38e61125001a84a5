"""The whole chain in one command: a broker, HQ, two branches and their terminals.

A private mosquitto provisioned by ``broker init`` (TLS, passwords, the ACL) on a free
loopback port, ``onecard-central`` and two ``onecard-edge`` daemons (in this process, each
with its own database in a temporary directory), and at each branch a door, an attendance
clock, a till and a recharge kiosk with realistic traffic. Midway HQ reports a card lost and
both branches refuse it. Every few seconds it prints what each site and HQ hold; at the end
it checks the books: every record at HQ exactly once, every balance equal to its ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import shutil
import socket
import sqlite3
import ssl
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from central import master
from central.adapters.sqlite_store import CentralStore
from central.provision import add_site, init_broker
from central.service import CentralService
from edge_agent.adapters.mqtt_client import BrokerSettings
from edge_agent.config import EdgeConfig, MqttConfig, TerminalsConfig
from edge_agent.core.reasons import yuan
from edge_agent.logs import configure_logging
from edge_agent.service import EdgeService
from firmware_sim.terminals import (
    AttendanceClock,
    DoorReader,
    PosTerminal,
    RechargeKiosk,
    Terminal,
    TerminalSettings,
)
from protocol import auth

SITES = ("SZ-FUTIAN", "BJ-CHAOYANG")
KINDS = {"DOOR-01": "door", "CLOCK-01": "attendance", "POS-01": "pos", "KIOSK-01": "recharge"}
MEMBERS = 200
LOST = 0  # member index whose card HQ reports lost midway


def member_uid(i: int) -> str:
    """The i-th member's card."""
    return f"0700{i:010X}"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _provision(base: Path) -> tuple[Path, int]:
    """``broker init`` plus both sites' bundles in ``base``; returns (broker dir, port)."""
    port = free_port()
    root = base / "broker"
    init_broker(root, hostnames=["localhost", "127.0.0.1"], port=port, tls_bind="127.0.0.1")
    for site in SITES:
        add_site(root, site, broker_url=f"mqtts://localhost:{port}", out=base)
    if os.geteuid() == 0:  # mosquitto drops to its own user before reading its files
        user = pwd.getpwnam("mosquitto")
        base.chmod(0o711)
        for path in [root, *root.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
    return root, port


def tls_ready(ca_file: Path, port: int) -> bool:
    """The broker on ``port`` completes a TLS handshake with ``ca_file``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname="localhost"),
        ):
            return True
    except OSError:
        return False


@contextlib.asynccontextmanager
async def private_broker(base: Path) -> AsyncIterator[tuple[Path, int]]:
    """``broker init`` in ``base`` and a mosquitto running on it; yields (dir, port)."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(mosquitto, os.X_OK):
        raise RuntimeError("mosquitto is not installed (make demo installs it)")
    root, port = _provision(base)
    proc = await asyncio.create_subprocess_exec(
        mosquitto,
        "-c",
        str(root / "mosquitto.conf"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not tls_ready(root / "ca.crt", port):
            if time.monotonic() > deadline or proc.returncode is not None:
                raise RuntimeError("the demo's mosquitto did not start")
            await asyncio.sleep(0.05)
        yield root, port
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def chain_seed(keys: dict[tuple[str, str], bytes]) -> master.CentralSeed:
    """HQ's master data: members with balances, and each branch's terminals and door."""
    persons = [{"id": f"M{i}", "name": f"会员{i}"} for i in range(MEMBERS)]
    site_data = {
        site: {
            "policy": {"site": site},
            "terminals": [
                {
                    "id": tid,
                    "kind": kind,
                    "key_hex": keys[(site, tid)].hex(),
                    "config": {"pos_mode": "keyed"} if kind == "pos" else {},
                }
                for tid, kind in KINDS.items()
            ],
            "door_groups": [{"id": "MAIN"}],
            "doors": [{"id": "D1", "group_id": "MAIN", "terminal_id": "DOOR-01"}],
            "time_zones": [{"id": "24H", "weekly": {str(d): [[0, 1440]] for d in range(7)}}],
            "access_levels": [{"id": "ALL", "door_group_id": "MAIN", "time_zone_id": "24H"}],
        }
        for site in SITES
    }
    return msgspec.convert(
        {
            "persons": persons,
            "cards": [{"uid": member_uid(i), "person_id": f"M{i}"} for i in range(MEMBERS)],
            "accounts": [{"person_id": f"M{i}", "cash_fen": 5000} for i in range(MEMBERS)],
            "access_grants": [{"person_id": p["id"], "access_level_id": "ALL"} for p in persons],
            "sites": site_data,
        },
        master.CentralSeed,
        strict=False,
    )


async def _traffic(
    terminals: dict[str, Terminal], rng: random.Random, stop: asyncio.Event, tally: dict[str, int]
) -> None:
    while not stop.is_set():
        uid = member_uid(rng.randrange(MEMBERS))
        kind = rng.choices(["door", "punch", "sale", "recharge"], [4, 2, 6, 1])[0]
        if kind == "door":
            outcome = await terminals["DOOR-01"].tap(uid)  # type: ignore[attr-defined]
        elif kind == "punch":
            outcome = await terminals["CLOCK-01"].punch(uid)  # type: ignore[attr-defined]
        elif kind == "sale":
            outcome = await terminals["POS-01"].sale(uid, amount=rng.choice([350, 800, 1200]))  # type: ignore[attr-defined]
        else:
            outcome = await terminals["KIOSK-01"].recharge(uid, 5000)  # type: ignore[attr-defined]
        tally[kind] = tally.get(kind, 0) + 1
        tally["refused"] = tally.get("refused", 0) + (not outcome.ok)
        await asyncio.sleep(rng.uniform(0.02, 0.08))


async def _summary(store: CentralStore, edges: dict[str, EdgeService]) -> list[str]:
    lines = []
    for site, edge in edges.items():
        if edge.site is None:
            continue
        status = await edge.site.status(edge.registry, version="demo")
        online = sum(t["online"] for t in status["terminals"])
        lines.append(
            f"  {site:<12} taps {status['taps']:>5}  unsynced {status['outbox_depth']:>4}  "
            f"acked {status['acked']}  terminals {online}/{len(status['terminals'])}  "
            f"feed v{status['feed_version']} blacklist v{status['blacklist_version']}"
        )
    records, total = await store.run(
        lambda conn: (
            conn.execute("SELECT count(*) FROM records").fetchone()[0],
            conn.execute(
                "SELECT coalesce(sum(cash_fen + subsidy_fen), 0) FROM accounts"
            ).fetchone()[0],
        )
    )
    lines.append(f"  {'HQ':<12} records {records:>5}  balances {yuan(total)}")
    return lines


async def run_chain_demo(  # noqa: PLR0915 - one story, told in order
    out: Callable[[str], None] = print, *, duration_s: float = 15
) -> bool:
    """Run the chain for ``duration_s``; True if the books balance at the end."""
    configure_logging("warning", "console")
    rng = random.Random(2026)
    keys = {(site, tid): auth.new_key() for site in SITES for tid in KINDS}
    base = Path(tempfile.mkdtemp(prefix="onecard-chain-"))
    checks: list[tuple[str, bool]] = []
    try:
        async with private_broker(base) as (broker_dir, port):
            url = f"mqtts://localhost:{port}"
            out(f"mosquitto (TLS, ACL, passwords) on 127.0.0.1:{port}, provisioned in {broker_dir}")
            async with CentralStore.open(base / "central.db") as store:
                seed = chain_seed(keys)
                await store.run(lambda conn: master.apply_seed(conn, seed, batch="demo"))
                central = CentralService(
                    store,
                    BrokerSettings.from_url(
                        url,
                        username="central",
                        password=(broker_dir / "central.password").read_text().strip(),
                        ca_file=broker_dir / "ca.crt",
                    ),
                )
                tasks = [asyncio.create_task(central.run())]
                await asyncio.wait_for(central.ready.wait(), 10)
                out(f"onecard-central: {MEMBERS} members, 2 sites; database {base / 'central.db'}")
                edges: dict[str, EdgeService] = {}
                for site in SITES:
                    data = base / site
                    data.mkdir()
                    (data / "mqtt.password").write_text(_bundle_password(base, site))
                    config = EdgeConfig(
                        site=site,
                        data_dir=data,
                        terminals=TerminalsConfig(listen="127.0.0.1:0"),
                        mqtt=MqttConfig(
                            url=url,
                            password_file=data / "mqtt.password",
                            ca_file=broker_dir / "ca.crt",
                        ),
                    )
                    edges[site] = EdgeService(config, version="demo")
                    tasks.append(asyncio.create_task(edges[site].run()))
                    await asyncio.wait_for(edges[site].ready.wait(), 10)
                for site, edge in edges.items():
                    deadline = time.monotonic() + 15
                    while edge.site is None or len(edge.site.terminals) < len(KINDS):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{site} got no snapshot from HQ")
                        await asyncio.sleep(0.05)
                    out(f"onecard-edge {site}: snapshot from HQ applied, terminals known")
                terminals: dict[str, dict[str, Terminal]] = {}
                classes = {
                    "door": DoorReader,
                    "attendance": AttendanceClock,
                    "pos": PosTerminal,
                    "recharge": RechargeKiosk,
                }
                for site, edge in edges.items():
                    terminals[site] = {}
                    for tid, kind in KINDS.items():
                        term = classes[kind](
                            TerminalSettings(
                                tid, keys[(site, tid)], f"tcp://127.0.0.1:{edge.tcp_port}"
                            )
                        )
                        await term.connect()
                        terminals[site][tid] = term
                out(f"\ntraffic at both sites for {duration_s:.0f} s …")
                stop = asyncio.Event()
                tallies: dict[str, dict[str, int]] = {site: {} for site in SITES}
                workers = [
                    asyncio.create_task(_traffic(terminals[site], rng, stop, tallies[site]))
                    for site in SITES
                ]
                started = time.monotonic()
                lost_reported = False
                while time.monotonic() - started < duration_s:
                    await asyncio.sleep(min(5, duration_s))
                    if not lost_reported and time.monotonic() - started >= duration_s / 3:
                        lost_reported = True
                        uid = member_uid(LOST)
                        at = datetime.now(UTC)
                        await store.run(partial(master.report_lost, uid=uid, at=at))
                        await asyncio.sleep(0.5)
                        refused = []
                        for site in SITES:
                            r = await terminals[site]["DOOR-01"].tap(uid)  # type: ignore[attr-defined]
                            refused.append(r.code)
                        out(f"  HQ reported {uid} lost; 0.5 s later the doors say {refused}")
                        checks.append(
                            (
                                "lost card refused at both sites",
                                all(c in ("lost", "blacklisted") for c in refused),
                            )
                        )
                    out(f"after {time.monotonic() - started:4.0f} s:")
                    for line in await _summary(store, edges):
                        out(line)
                stop.set()
                await asyncio.gather(*workers)
                for site in SITES:
                    out(f"  {site} terminals did: {dict(sorted(tallies[site].items()))}")
                out("\nwaiting for every outbox to drain …")
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    depths = [
                        (await e.site.status(e.registry, version="demo"))["outbox_depth"]  # type: ignore[union-attr]
                        for e in edges.values()
                    ]
                    if not any(depths):
                        break
                    await asyncio.sleep(0.2)
                checks.extend(await _books(store, edges))
                for line in await _summary(store, edges):
                    out(line)
                for site_terms in terminals.values():
                    for term in site_terms.values():
                        await term.close()
                for edge in edges.values():
                    edge.stop()
                central.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out("\nchecks:")
    for name, ok in checks:
        out(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return all(ok for _, ok in checks)


def _bundle_password(base: Path, site: str) -> str:
    with tarfile.open(base / f"{site}-bundle.tar") as tar:
        member = tar.extractfile("mqtt.password")
        if member is None:
            raise RuntimeError("bundle without a password")
        return member.read().decode().strip()


async def _books(store: CentralStore, edges: dict[str, EdgeService]) -> list[tuple[str, bool]]:
    outbox_total = 0
    unacked = 0
    for edge in edges.values():
        with sqlite3.connect(edge.config.database) as conn:
            outbox_total += conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
            unacked += conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0]
    rows: Any = await store.run(
        lambda conn: (
            conn.execute("SELECT count(*), count(DISTINCT id) FROM records").fetchone(),
            conn.execute(
                "SELECT count(*) FROM accounts a WHERE cash_fen + subsidy_fen !="
                " (SELECT coalesce(sum(cash_fen + subsidy_fen), 0) FROM ledger l"
                "  WHERE l.person_id = a.person_id)"
            ).fetchone()[0],
        )
    )
    (records, distinct), mismatched = rows
    return [
        ("every outbox drained (acked by HQ)", unacked == 0),
        (
            f"HQ holds each of the {outbox_total} records exactly once",
            records == distinct == outbox_total,
        ),
        ("every balance equals the sum of its ledger", mismatched == 0),
    ]
