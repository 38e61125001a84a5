"""Memory and tap latency of a real ``onecard-edge`` process at a large site, against a small one.

Run from the repository root::

    .venv/bin/python bench/edge_footprint.py [--cards N] [--blacklist N] [--duration S] [--rate R]

Issue 10 asks what a large site costs the edge: its resident memory and its tap latency with
100,000 cards and a 100,000-entry blacklist, against a small site. In one run, on one machine:

1. **Two sites** are seeded with ``onecard-edge seed`` (the product's own path, as a branch is
   set up before HQ): a *small* one (``--small-cards``, default 100) and a *large* one
   (``--cards``, default 100,000; ``--blacklist`` entries, default 100,000). Each has 10
   keyed-mode POS terminals and 10 door readers (one door each, every cardholder granted,
   open 24 h). One card in twenty is blacklisted (so ~5 % of taps are refused, at tills and
   doors); the large site's other blacklist entries are UIDs of former cards.
2. **Both edges run at once**, each ``onecard-edge run`` as a *separate process* on a loopback
   port with ``log.level = "warning"`` (the helpers of ``bench/edge_taps.py``). Their memory
   is read from ``/proc/<pid>/status`` once they serve with every terminal connected:
   ``VmRSS`` ("RSS loaded").
3. **Taps** at ``--rate`` taps/s (default 200) over the 20 terminals, uniformly over the
   site's whole card population, alternating the sites small, large, large, small for
   ``--duration`` s per site in total (drift of a shared machine hits both alike). Latency is
   TAP sent → DECISION received at the simulator, which runs in this process (not the
   edges'); a DECISION leaves the edge only after its records are committed.
4. After the taps: ``VmRSS`` again and ``VmHWM`` (the process's peak RSS).

The writer connection's SQLite page cache (``WRITER_CACHE_KIB``) is filled lazily, one page
per page touched, and never given back: a short run may not fill it, a day of taps does. So
the memory verdict is on the *ceiling*: the larger of the measured peak and RSS loaded plus
the whole cache. Targets: the large site's ceiling < 80 MB; its tap p99 unchanged against
the small site's (ratio ≤ :data:`TARGET_P99_RATIO`). Prints a table and ends with one line
``BENCH {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The edge helpers are shared with the tap-latency benchmark (this directory is on sys.path
# when a bench script runs).
from edge_taps import (
    AMOUNT_FEN,
    EdgeProcess,
    card_uids,
    make_seed,
    running_edge,
    seed_site,
    terminal_keys,
)

from edge_agent.adapters.sqlite_store import WRITER_CACHE_KIB
from firmware_sim.load import LoadReport, build_terminals, run_load
from firmware_sim.terminals import Fleet

TARGET_RSS_MB = 80.0
#: "Unchanged" p99: the large site's p99 over the small site's, measured side by side. p99
#: of a few thousand taps moves ±30 % between runs on this shared machine (docs/PERFORMANCE.md).
TARGET_P99_RATIO = 1.5
#: One card in this many is on the blacklist (and tapped as often as the others).
BLACKLIST_EVERY = 20
TERMINALS_PER_KIND = 10
#: Alternating measurement steps per site: small, large, large, small.
ORDER = ("small", "large", "large", "small")
EFFECTIVE_AT = "2026-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class SiteSize:
    """One site of the comparison."""

    name: str
    cards: int
    blacklist: int

    def card_uids(self) -> list[str]:
        """The site's cards (the tapped population)."""
        return card_uids(self.cards)

    def blacklist_uids(self, cards: list[str]) -> list[str]:
        """Every ``BLACKLIST_EVERY``-th card, then former cards up to ``blacklist`` entries."""
        listed = cards[::BLACKLIST_EVERY][: self.blacklist]
        former = [f"BF{i:012X}" for i in range(1, self.blacklist - len(listed) + 1)]
        return listed + former


@dataclass(frozen=True, slots=True)
class Settings:
    """What to run (from the command line)."""

    small: SiteSize
    large: SiteSize
    duration_s: float
    rate: float
    warm_up_s: float


def site_seed(
    pos_keys: dict[str, bytes], door_keys: dict[str, bytes], cards: list[str], blacklist: list[str]
) -> dict[str, Any]:
    """``edge_taps``' seed (rich cardholders, keyed tills) plus door readers, one door each,
    every cardholder granted round the clock, and the blacklist."""
    seed = make_seed(pos_keys, cards)
    seed["terminals"] += [
        {"id": tid, "kind": "door", "key_hex": key.hex()} for tid, key in sorted(door_keys.items())
    ]
    seed["door_groups"] = [{"id": "MAIN", "name": "正门"}]
    seed["doors"] = [
        {"id": f"D{tid}", "group_id": "MAIN", "terminal_id": tid, "direction": "in"}
        for tid in sorted(door_keys)
    ]
    seed["time_zones"] = [{"id": "24H", "weekly": {str(d): [[0, 1440]] for d in range(7)}}]
    seed["access_levels"] = [{"id": "ALL", "door_group_id": "MAIN", "time_zone_id": "24H"}]
    seed["access_grants"] = [
        {"person_id": p["id"], "access_level_id": "ALL"} for p in seed["persons"]
    ]
    seed["blacklist"] = [
        {"uid": uid, "reason": "lost", "effective_at": EFFECTIVE_AT} for uid in blacklist
    ]
    seed["blacklist_version"] = 1
    return seed


def memory_mb(pid: int) -> dict[str, float]:
    """The process's memory from ``/proc/<pid>/status`` (MB = 2^20 bytes): ``rss`` (VmRSS),
    ``peak`` (VmHWM), ``anon`` (RssAnon: heap, SQLite's page cache) and ``file`` (RssFile:
    mapped code, shared libraries)."""
    fields = {"VmRSS": "rss", "VmHWM": "peak", "RssAnon": "anon", "RssFile": "file"}
    figures: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            figures[fields[key]] = int(value.split()[0]) / 1024
    return figures


@dataclass
class SiteResult:
    """What one site measured."""

    size: SiteSize
    seeded: str
    seed_s: float
    db_mb: float
    loaded: dict[str, float]
    after: dict[str, float]
    report: LoadReport
    edge_cpu_s: float = 0.0

    @property
    def ceiling_mb(self) -> float:
        """RSS once the writer's page cache is full: at least loaded + the cache."""
        return max(self.after["peak"], self.loaded["rss"] + WRITER_CACHE_KIB / 1024)

    def row(self) -> dict[str, Any]:
        """Flat figures for the table and the BENCH line."""
        summary = self.report.summary()
        return {
            "cards": self.size.cards,
            "blacklist": self.size.blacklist,
            "db_mb": round(self.db_mb, 1),
            "seed_s": round(self.seed_s, 1),
            "rss_loaded_mb": round(self.loaded["rss"], 1),
            "rss_after_mb": round(self.after["rss"], 1),
            "peak_rss_mb": round(self.after["peak"], 1),
            "anon_after_mb": round(self.after["anon"], 1),
            "anon_growth_mb": round(self.after["anon"] - self.loaded["anon"], 1),
            "ceiling_rss_mb": round(self.ceiling_mb, 1),
            "file_after_mb": round(self.after["file"], 1),
            "taps": summary["taps"],
            "declined": summary["declined"],
            "failed": summary["failed"],
            "achieved_rate": round(self.report.taps / self.report.duration_s, 1),
            "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"],
            "max_ms": summary["max_ms"],
            "edge_cpu_pct": round(self.edge_cpu_s / self.report.duration_s * 100, 1),
            "codes": dict(sorted(self.report.codes.items())),
        }


def parse_args(argv: list[str] | None) -> Settings:
    """The command line; the defaults are issue 10's large site and ~1 minute of running."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cards", type=int, default=100_000, help="large site's cards")
    parser.add_argument("--blacklist", type=int, default=100_000, help="large site's blacklist")
    parser.add_argument("--small-cards", type=int, default=100, help="small site's cards")
    parser.add_argument("--duration", type=float, default=10.0, help="tap seconds per site")
    parser.add_argument("--rate", type=float, default=200.0, help="taps/s over 20 terminals")
    args = parser.parse_args(argv)
    if min(args.cards, args.small_cards) < BLACKLIST_EVERY or args.blacklist < 0:
        parser.error(f"each site needs at least {BLACKLIST_EVERY} cards")
    if args.duration <= 0 or args.rate <= 0:
        parser.error("--duration and --rate must be positive")
    small_listed = len(range(0, args.small_cards, BLACKLIST_EVERY))
    large_listed = len(range(0, args.cards, BLACKLIST_EVERY))
    return Settings(
        small=SiteSize("small", args.small_cards, small_listed),
        large=SiteSize("large", args.cards, max(args.blacklist, large_listed)),
        duration_s=args.duration,
        rate=args.rate,
        warm_up_s=1.0,
    )


async def drive(
    edges: dict[str, EdgeProcess],
    keys: dict[str, dict[str, bytes]],
    cards: dict[str, list[str]],
    settings: Settings,
) -> tuple[dict[str, dict[str, float]], dict[str, LoadReport], dict[str, float]]:
    """Connect every site's terminals, read the edges' memory, then tap in ``ORDER``."""
    fleets: dict[str, Fleet] = {}
    try:
        for name, edge in edges.items():
            connect = f"tcp://127.0.0.1:{edge.port}"
            fleets[name] = Fleet(
                [
                    *build_terminals("pos", connect, keys["pos"]),
                    *build_terminals("door", connect, keys["door"]),
                ]
            )
            await fleets[name].connect_all()
        await asyncio.sleep(1.0)  # the sessions settle (WELCOME, first heartbeats, status)
        loaded = {name: memory_mb(edge.proc.pid) for name, edge in edges.items()}
        for name, fleet in fleets.items():  # not counted: first pages, connections
            await run_load(
                fleet.terminals,
                cards[name],
                rate=settings.rate,
                duration_s=settings.warm_up_s,
                amount_fen=AMOUNT_FEN,
                seed=0,
            )
        per_step = settings.duration_s / ORDER.count("small")
        reports = {
            name: LoadReport(duration_s=0.0, target_rate=settings.rate, terminals=20)
            for name in edges
        }
        cpu = dict.fromkeys(edges, 0.0)
        for step, name in enumerate(ORDER, start=1):
            before = edges[name].cpu_s()
            got = await run_load(
                fleets[name].terminals,
                cards[name],
                rate=settings.rate,
                duration_s=per_step,
                amount_fen=AMOUNT_FEN,
                seed=step,
            )
            cpu[name] += edges[name].cpu_s() - before
            merged = reports[name]
            merged.duration_s += got.duration_s
            merged.latencies_ms.extend(got.latencies_ms)
            merged.approved += got.approved
            merged.declined += got.declined
            merged.failed += got.failed
            for code, n in got.codes.items():
                merged.codes[code] = merged.codes.get(code, 0) + n
        return loaded, reports, cpu
    finally:
        for fleet in fleets.values():
            await fleet.close_all()


def run(settings: Settings) -> tuple[dict[str, SiteResult], tuple[float, float], float]:
    """Seed both sites, run both edges, tap; always stops the edges and deletes the sites."""
    keys = {
        "pos": terminal_keys("POS-", TERMINALS_PER_KIND),
        "door": terminal_keys("DOOR-", TERMINALS_PER_KIND),
    }
    sizes = {"small": settings.small, "large": settings.large}
    workdir = Path(tempfile.mkdtemp(prefix="onecard-edge-footprint-"))
    load_start = os.getloadavg()[0]
    try:
        seeded: dict[str, tuple[str, float, float]] = {}
        cards: dict[str, list[str]] = {}
        for name, size in sizes.items():
            cards[name] = size.card_uids()
            seed = site_seed(
                keys["pos"], keys["door"], cards[name], size.blacklist_uids(cards[name])
            )
            started = time.perf_counter()
            what = seed_site(workdir / name, seed)
            db = workdir / name / "data"
            db_mb = sum(p.stat().st_size for p in db.iterdir() if p.is_file()) / 2**20
            seeded[name] = (what, time.perf_counter() - started, db_mb)
        # Every child so far was an `onecard-edge seed`: their peak RSS, for the record.
        seed_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with contextlib.ExitStack() as stack:
            edges = {
                name: stack.enter_context(running_edge(workdir / name, "warning")) for name in sizes
            }
            loaded, reports, cpu = asyncio.run(drive(edges, keys, cards, settings))
            after = {name: memory_mb(edge.proc.pid) for name, edge in edges.items()}
        results = {
            name: SiteResult(
                size, *seeded[name], loaded[name], after[name], reports[name], cpu[name]
            )
            for name, size in sizes.items()
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results, (load_start, os.getloadavg()[0]), seed_peak_mb


def report(
    settings: Settings,
    results: dict[str, SiteResult],
    load: tuple[float, float],
    seed_peak_mb: float,
) -> dict[str, Any]:
    """Print the table and verdicts; return the BENCH figures."""
    small, large = results["small"].row(), results["large"].row()
    ratio_p99 = large["p99_ms"] / small["p99_ms"] if small["p99_ms"] else 0.0
    ratio_p50 = large["p50_ms"] / small["p50_ms"] if small["p50_ms"] else 0.0
    rss_met = large["ceiling_rss_mb"] < TARGET_RSS_MB
    cache_mb = WRITER_CACHE_KIB / 1024
    p99_met = ratio_p99 <= TARGET_P99_RATIO and large["failed"] == 0
    cpus = os.cpu_count()
    print(
        f"edge_footprint: two onecard-edge processes (small and large site), each seeded with "
        f"`onecard-edge seed`; {TERMINALS_PER_KIND} keyed POS + {TERMINALS_PER_KIND} door "
        f"terminals each; {settings.rate:g} taps/s uniformly over each site's cards, 1 in "
        f"{BLACKLIST_EVERY} blacklisted; Python {platform.python_version()}, {cpus} CPUs; "
        f"load average {load[0]:.2f} → {load[1]:.2f}"
    )
    print(
        "latency = TAP sent → DECISION received (simulators in the bench's process); sites "
        f"tapped alternately {', '.join(ORDER)}, {settings.duration_s:g} s each in total after "
        f"{settings.warm_up_s:g} s warm-up; memory from /proc/<pid>/status (MB = 2^20 B): RSS "
        "loaded = serving with every terminal connected, before any tap; peak = VmHWM"
    )
    for name, result in results.items():
        print(
            f"  {name}: seeded {result.seeded} in {result.seed_s:.1f} s; database "
            f"{result.db_mb:.1f} MB"
        )
    print()
    header = (
        f"{'site':<6} {'cards':>8} {'blacklist':>9} {'RSS loaded':>10} {'RSS after':>9} "
        f"{'peak RSS':>8} {'ceiling':>7} {'taps':>6} {'refused':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'edge CPU':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r in (("small", small), ("large", large)):
        print(
            f"{name:<6} {r['cards']:>8,} {r['blacklist']:>9,} {r['rss_loaded_mb']:>10.1f} "
            f"{r['rss_after_mb']:>9.1f} {r['peak_rss_mb']:>8.1f} {r['ceiling_rss_mb']:>7.1f} "
            f"{r['taps']:>6,} {r['declined'] + r['failed']:>7} {r['p50_ms']:>7.2f} "
            f"{r['p99_ms']:>7.2f} {r['max_ms']:>7.2f} {r['edge_cpu_pct']:>7.0f}%"
        )
    print()
    print(f"decision codes: small {small['codes']}; large {large['codes']}")
    print(
        f"ratio large/small: p99 {large['p99_ms']:.2f} / {small['p99_ms']:.2f} ms = "
        f"{ratio_p99:.2f}x; p50 {ratio_p50:.2f}x; peak RSS "
        f"{large['peak_rss_mb'] - small['peak_rss_mb']:+.1f} MB"
    )
    print(
        f"writer page cache (WRITER_CACHE_KIB): {cache_mb:g} MiB, filled as pages are touched; "
        f"heap (RssAnon) grew {small['anon_growth_mb']:.1f} MB (small) and "
        f"{large['anon_growth_mb']:.1f} MB (large) during the taps; ceiling = max(peak, "
        f"RSS loaded + {cache_mb:g} MiB)"
    )
    print(f"(`onecard-edge seed` itself, a one-off CLI run: peak RSS {seed_peak_mb:.0f} MB)")
    print(
        f"target RSS < {TARGET_RSS_MB:g} MB at {large['cards']:,} cards / "
        f"{large['blacklist']:,} blacklisted: {'MET' if rss_met else 'NOT MET'} "
        f"(peak {large['peak_rss_mb']:.1f} MB, ceiling {large['ceiling_rss_mb']:.1f} MB)"
    )
    print(
        f"target tap p99 unchanged (large/small ≤ {TARGET_P99_RATIO:g}x, nothing failed): "
        f"{'MET' if p99_met else 'NOT MET'} ({ratio_p99:.2f}x)"
    )
    return {
        "name": "edge_footprint",
        "python": platform.python_version(),
        "cpus": cpus,
        "loadavg_start": round(load[0], 2),
        "loadavg_end": round(load[1], 2),
        "rate": settings.rate,
        "duration_s": settings.duration_s,
        "terminals": 2 * TERMINALS_PER_KIND,
        **{f"small_{k}": v for k, v in small.items() if k != "codes"},
        **{f"large_{k}": v for k, v in large.items() if k != "codes"},
        "seed_cli_peak_rss_mb": round(seed_peak_mb, 1),
        "writer_cache_mib": cache_mb,
        "ratio_p99": round(ratio_p99, 2),
        "ratio_p50": round(ratio_p50, 2),
        "target_rss_mb": TARGET_RSS_MB,
        "target_p99_ratio": TARGET_P99_RATIO,
        "target_rss_met": rss_met,
        "target_p99_met": p99_met,
    }


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds through every ``finally``: the edges are stopped and the temporary
    # sites deleted, as on Ctrl-C.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    summary = report(settings, *run(settings))
    print("BENCH " + json.dumps(summary, sort_keys=True, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
