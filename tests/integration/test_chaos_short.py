"""The short soak (``make test``): every fault kind at least once, and the books still balance.

The same harness as ``make soak`` (firmware_sim/chaos.py), for about 100 s: a private
mosquitto, ``onecard-central`` and the edges as real processes, each edge behind its own
fault proxy and on its own small tmpfs, terminals with simulated firmware under load.
"""

from __future__ import annotations

import pytest

from firmware_sim.chaos import ALL_FAULTS, SoakSettings, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


async def test_a_short_soak_under_every_fault_kind_loses_and_doubles_nothing():
    lines: list[str] = []
    verdict = await run_soak(
        SoakSettings(duration_s=100, sites=2, seed=7, keep_dir_on_failure=False),
        out=lines.append,
    )
    report = "\n".join(lines)
    for kind in ALL_FAULTS:
        assert verdict.faults.get(kind, 0) >= 1 or kind in verdict.not_injected, report
    assert verdict.converge_s is not None, report
    assert verdict.lost == 0, report
    assert verdict.duplicated == 0, report
    assert verdict.extra == 0, report
    assert verdict.wrong == 0, report
    assert verdict.paid_not_credited == 0, report
    assert verdict.balance_mismatches == 0, report
    assert verdict.money_without_ledger == 0, report
    assert verdict.outbox_not_drained == 0, report
    assert verdict.terminal_buffers_held == 0, report
    assert verdict.clock_skew_expected <= verdict.clock_skew_raised, report
    assert not verdict.unexpected_anomalies, report
    assert verdict.granted > 100, report  # there was real traffic to lose
    assert verdict.ok, report
