"""Tap latency through OSDP: card read at the reader → door command back at the reader.

Run from the repository root::

    .venv/bin/python bench/osdp_taps.py [--count N] [--interval S] [--baud B]

What it does: seeds a temporary site with one OSDP door terminal and ``onecard-edge seed``,
makes a pty pair (socat), starts ``onecard-edge run`` as a *separate process* driving that
bus as OSDP control panel (secure channel enforced, a fresh SCBK), and puts a real libosdp
PeripheralDevice — the reader — on the other end in this process. Then ``--count`` card
reads, one every ``--interval`` s ± 50 % (one person at a time at a door); every tenth card is a
blacklisted one.

Latency is measured at the reader, on one clock: from the card-read event submitted to the
PD to the command arriving in the PD's command handler — the relay (output) command for a
granted card, the red LED for a refused one. In between: the PD answers the next POLL with
the card data (secure channel: MAC + AES), the edge's libosdp thread hands it to the event
loop, the edge decides and commits the record (WAL, synchronous=FULL), queues the commands,
and libosdp sends them in the next exchanges. The reader's libosdp refresh loop runs every
1 ms (a reader's firmware answers within a few ms; the Python binding's default 20 ms sleep
would measure the simulator). On a pty the baud rate is not simulated: on a real 9600-baud
bus add ~1 ms per byte on the wire (a secure POLL reply with card data is ~40 bytes).

Prints a table and ends with one line ``BENCH {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import osdp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim.osdp_reader import SimulatedReader
from firmware_sim.ptypair import pty_pair
from protocol import auth

SITE = "BENCH-01"
DOOR = "DOOR-01"
ADDRESS = 1
MEMBERS = 50
BLACKLISTED = "0BADC0DE000001"
#: The ceiling the architecture brief sets for a door decision (OSDP's reply limit).
LIMIT_MS = 200.0
START_TIMEOUT_S = 60.0
READ_TIMEOUT_S = 5.0


def member_uid(i: int) -> str:
    return f"0B00{i:010X}"


def make_seed() -> dict[str, Any]:
    """One door on ``DOOR``, ``MEMBERS`` cardholders allowed through it, one blacklisted card."""
    persons = [{"id": f"P{i}", "name": f"持卡人{i}", "kind": "staff"} for i in range(MEMBERS)]
    persons.append({"id": "PX", "name": "挂失", "kind": "member"})
    return {
        "site": SITE,
        "policy": {"site": SITE, "timezone": "Asia/Shanghai"},
        "persons": persons,
        "cards": [{"uid": member_uid(i), "person_id": f"P{i}"} for i in range(MEMBERS)]
        + [{"uid": BLACKLISTED, "person_id": "PX"}],
        "door_groups": [{"id": "MAIN", "name": "正门"}],
        "doors": [{"id": "D1", "group_id": "MAIN", "terminal_id": DOOR, "direction": "in"}],
        "time_zones": [{"id": "24H", "weekly": {str(d): [[0, 1440]] for d in range(7)}}],
        "access_levels": [{"id": "ALWAYS", "door_group_id": "MAIN", "time_zone_id": "24H"}],
        "access_grants": [{"person_id": p["id"], "access_level_id": "ALWAYS"} for p in persons],
        "terminals": [{"id": DOOR, "kind": "door", "key_hex": auth.new_key().hex(), "config": {}}],
        "blacklist": [
            {"uid": BLACKLISTED, "reason": "lost", "effective_at": "2026-01-01T00:00:00Z"}
        ],
        "blacklist_version": 1,
    }


class Reader(SimulatedReader):
    """The reader end (refreshing every 1 ms, like firmware), with the bench's waits."""

    def __init__(self, path: Path, key: bytes) -> None:
        super().__init__(path, ADDRESS, key, fast=True)

    def wait_for(self, kind: int, color: int | None = None) -> float | None:
        """perf_counter() when the first command of ``kind`` (and LED ``color``) arrived."""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                at, command = self.commands.get(timeout=left)
            except queue.Empty:
                return None
            if command["command"] == kind and (color is None or command["on_color"] == color):
                return at
        return None

    def drain(self) -> None:
        while not self.commands.empty():
            self.commands.get_nowait()

    def close(self) -> None:
        self.unplug()


def edge_exe() -> str:
    exe = Path(sys.executable).with_name("onecard-edge")
    found = str(exe) if exe.exists() else shutil.which("onecard-edge")
    if found is None:
        raise SystemExit("onecard-edge is not installed: run `make setup` first")
    return found


def write_config(site_dir: Path, port: Path, key_file: Path, baud: int) -> Path:
    path = site_dir / "edge.toml"
    path.write_text(
        f'site = "{SITE}"\ndata_dir = "{site_dir / "data"}"\n'
        '[terminals]\nlisten = ""\n[metrics]\nlisten = ""\n'
        '[log]\nlevel = "warning"\nformat = "json"\n'
        f'[[osdp.readers]]\nterminal = "{DOOR}"\nport = "{port}"\nbaud = {baud}\n'
        f'address = {ADDRESS}\nscbk_file = "{key_file}"\n',
        encoding="utf-8",
    )
    return path


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {
        "count": len(ordered),
        "p50_ms": round(pct(50), 2),
        "p95_ms": round(pct(95), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


async def run(count: int, interval: float, baud: int) -> dict[str, Any]:  # noqa: PLR0915
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONECARD_EDGE_")}
    site_dir = Path(tempfile.mkdtemp(prefix="osdp-bench-"))
    key = os.urandom(16)
    key_file = site_dir / "door.scbk"
    key_file.write_text(key.hex() + "\n")
    key_file.chmod(0o600)
    seed = site_dir / "seed.json"
    seed.write_text(json.dumps(make_seed(), ensure_ascii=False), encoding="utf-8")
    grants: list[float] = []
    denials: list[float] = []
    missed = 0
    proc = None
    reader = None
    try:
        async with pty_pair() as (edge_end, reader_end):
            config = write_config(site_dir, edge_end, key_file, baud)
            subprocess.run(  # noqa: S603, ASYNC221 - setup, before anything is timed
                [edge_exe(), "seed", "--config", str(config), str(seed)],
                check=True,
                env=env,
                capture_output=True,
            )
            reader = Reader(reader_end, key)
            proc = subprocess.Popen(  # noqa: S603, ASYNC220
                [edge_exe(), "run", "--config", str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while not (reader.pd.is_online() and reader.pd.is_sc_active()):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the edge did not bring the reader online")
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            for i in range(count):
                refused = i % 10 == 9
                uid = BLACKLISTED if refused else member_uid(i % MEMBERS)
                reader.drain()
                started = reader.present(uid)
                if refused:
                    kind, color = osdp.Command.LED, osdp.CommandLEDColor.Red
                else:
                    kind, color = osdp.Command.Output, None
                at = await asyncio.to_thread(reader.wait_for, kind, color)
                if at is None:
                    missed += 1
                else:
                    (denials if refused else grants).append((at - started) * 1000)
                # Jittered: at a fixed interval the reads would lock onto one phase of the
                # control panel's 50 ms POLL cycle and measure that phase only.
                await asyncio.sleep(interval * random.uniform(0.5, 1.5))
    finally:
        if reader is not None:
            reader.close()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(site_dir, ignore_errors=True)
    every = grants + denials
    return {
        "count": count,
        "missed": missed,
        "interval_s": interval,
        "all": summary(every) if every else {},
        "granted_to_relay": summary(grants) if grants else {},
        "refused_to_red_led": summary(denials) if denials else {},
    }


def report(results: dict[str, Any]) -> None:
    print(
        f"osdp_taps: onecard-edge in its own process as OSDP control panel, secure channel on; "
        f"a libosdp PD over a pty; {results['count']} card reads, one every "
        f"{results['interval_s']} s ± 50 % (every tenth blacklisted); Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print("latency = card-read event submitted at the PD → command received at the PD")
    header = (
        f"{'':<22} {'count':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'mean ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, key in (
        ("granted → relay", "granted_to_relay"),
        ("refused → red LED", "refused_to_red_led"),
        ("all", "all"),
    ):
        r = results[key]
        if r:
            print(
                f"{label:<22} {r['count']:>6} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
                f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {r['mean_ms']:>8.2f}"
            )
    print(f"missed (no command within {READ_TIMEOUT_S:.0f} s): {results['missed']}")
    p99 = results["all"].get("p99_ms") if results["all"] else None
    verdict = "within" if p99 is not None and p99 <= LIMIT_MS else "OVER"
    print(f"p99 {p99} ms: {verdict} the {LIMIT_MS:.0f} ms decision limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200, help="card reads (default 200)")
    parser.add_argument("--interval", type=float, default=0.2, help="s between reads")
    parser.add_argument("--baud", type=int, default=9600, help="configured baud (pty: unused)")
    args = parser.parse_args()
    results = asyncio.run(run(args.count, args.interval, args.baud))
    report(results)
    bench = {
        "bench": "osdp_taps",
        "count": results["count"],
        "missed": results["missed"],
        "p50_ms": results["all"].get("p50_ms"),
        "p95_ms": results["all"].get("p95_ms"),
        "p99_ms": results["all"].get("p99_ms"),
        "max_ms": results["all"].get("max_ms"),
        "granted_p99_ms": results["granted_to_relay"].get("p99_ms"),
        "refused_p99_ms": results["refused_to_red_led"].get("p99_ms"),
    }
    print("BENCH " + json.dumps(bench))


if __name__ == "__main__":
    main()
