"""`make demo`'s second half, the whole chain, runs and balances its books."""

from __future__ import annotations

import pytest

from firmware_sim.chain_demo import run_chain_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_chain_demo_runs_and_the_books_balance(capsys):
    assert await run_chain_demo(duration_s=3)
    out = capsys.readouterr().out
    assert "FAIL" not in out and "exactly once" in out
