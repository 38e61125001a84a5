"""Load mode: many simulated terminals tapping a card population at a target rate.

Each terminal handles one card at a time, as real ones do, so the target rate is spread
over the terminals: with ``rate`` taps/s over ``n`` terminals each terminal taps every
``n / rate`` seconds (with a little jitter). Every tap's round trip — TAP sent to DECISION
shown — is recorded; the report gives p50/p95/p99 latencies.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware_sim.terminals import (
    AttendanceClock,
    DoorReader,
    Outcome,
    PosTerminal,
    Terminal,
    TerminalSettings,
)


@dataclass(slots=True)
class LoadReport:
    """What a load run measured."""

    duration_s: float
    target_rate: float
    terminals: int
    latencies_ms: list[float] = field(default_factory=list)
    approved: int = 0
    declined: int = 0
    failed: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def taps(self) -> int:
        """Taps answered by the edge (approved or declined)."""
        return self.approved + self.declined

    @property
    def achieved_rate(self) -> float:
        """Answered taps per second."""
        return self.taps / self.duration_s if self.duration_s else 0.0

    def percentile(self, pct: float) -> float:
        """Latency percentile in ms (nearest-rank); 0 with no samples."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        rank = max(1, round(pct / 100 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    def summary(self) -> dict[str, float | int]:
        """The figures as a flat dict (for tables and BENCH lines)."""
        return {
            "terminals": self.terminals,
            "target_rate": self.target_rate,
            "achieved_rate": round(self.achieved_rate, 1),
            "taps": self.taps,
            "approved": self.approved,
            "declined": self.declined,
            "failed": self.failed,
            "p50_ms": round(self.percentile(50), 3),
            "p95_ms": round(self.percentile(95), 3),
            "p99_ms": round(self.percentile(99), 3),
            "max_ms": round(max(self.latencies_ms, default=0.0), 3),
        }

    def table(self) -> str:
        """A human-readable table of the figures."""
        rows = self.summary()
        width = max(len(k) for k in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows.items())


async def _tap(terminal: Terminal, uid: str, amount: int) -> Outcome:
    if isinstance(terminal, PosTerminal):
        return await terminal.sale(uid, amount=amount)
    if isinstance(terminal, AttendanceClock):
        return await terminal.punch(uid)
    if not isinstance(terminal, DoorReader):
        raise TypeError(f"load mode cannot drive {type(terminal).__name__}")
    return await terminal.tap(uid)


async def run_load(
    terminals: Sequence[Terminal],
    cards: Sequence[str],
    *,
    rate: float,
    duration_s: float,
    amount_fen: int = 100,
    seed: int | None = None,
) -> LoadReport:
    """Drive already-connected ``terminals`` with taps of random ``cards`` for ``duration_s``."""
    if not terminals or not cards or rate <= 0:
        raise ValueError("need terminals, cards and a positive rate")
    rng = random.Random(seed)
    report = LoadReport(duration_s=duration_s, target_rate=rate, terminals=len(terminals))
    interval = len(terminals) / rate
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker(terminal: Terminal, offset: float) -> None:
        next_at = started + offset
        while True:
            now = time.perf_counter()
            if next_at >= deadline:
                return
            if next_at > now:
                await asyncio.sleep(next_at - now)
            outcome = await _tap(terminal, rng.choice(cards), amount_fen)
            if outcome.local or outcome.code == "link_down":
                report.failed += 1
            else:
                report.latencies_ms.append(outcome.latency_ms)
                if outcome.ok:
                    report.approved += 1
                else:
                    report.declined += 1
            report.codes[outcome.code] = report.codes.get(outcome.code, 0) + 1
            next_at += interval * rng.uniform(0.9, 1.1)

    async with asyncio.TaskGroup() as group:
        for i, terminal in enumerate(terminals):
            group.create_task(worker(terminal, interval * i / len(terminals)))
    report.duration_s = time.perf_counter() - started
    return report


def build_terminals(
    kind: str, connect: str, keys: dict[str, bytes], *, retry_s: float = 1.0
) -> list[Terminal]:
    """Terminals of ``kind`` for every id in ``keys``, all connecting to ``connect``."""
    classes: dict[str, type[Terminal]] = {
        "pos": PosTerminal,
        "door": DoorReader,
        "attendance": AttendanceClock,
    }
    if kind not in classes:
        raise ValueError(f"load mode drives pos, door or attendance terminals, not {kind!r}")
    return [
        classes[kind](TerminalSettings(tid, key, connect, retry_s=retry_s))
        for tid, key in sorted(keys.items())
    ]
