"""The Clearing page's data: past days come from the stored reports (central's housekeeping
re-clears them), the shown day and the last two are cleared afresh, future days not at all."""

from __future__ import annotations

from datetime import UTC, date, datetime

from central import finance, master
from central.web.clearing import WINDOW, clearing

TODAY = date(2026, 5, 20)


def recharge(conn, day: date, fen: int, n: int) -> None:
    # ¥ at 04:00 UTC = noon in Shanghai (HQ's default business day).
    at_ms = int(datetime(day.year, day.month, day.day, 4, tzinfo=UTC).timestamp() * 1000)
    conn.execute(
        "INSERT INTO ledger (person_id, cash_fen, subsidy_fen, kind, record_id, at_ms, method,"
        " created_ms) VALUES ('P1', ?, 0, 'recharge', ?, ?, 'cash', ?)",
        (fen, f"op:test-{n}", at_ms, at_ms),
    )


async def test_past_days_are_read_as_stored_and_recent_ones_cleared_afresh(dash):
    def run(conn):
        master.register_site(conn, "SZ-FUTIAN")
        old, recent = date(2026, 5, 10), date(2026, 5, 19)
        recharge(conn, old, 1000, 1)
        recharge(conn, recent, 500, 2)
        first = clearing(conn, TODAY, TODAY)
        # Money lands on both days after the first view: only the recent day shows it
        # until housekeeping (finance.refresh) re-clears the stored old day.
        recharge(conn, old, 2000, 3)
        recharge(conn, recent, 700, 4)
        second = clearing(conn, TODAY, TODAY)
        finance.refresh(conn, now=datetime(2026, 5, 20, 12, tzinfo=UTC))
        third = clearing(conn, TODAY, TODAY)
        return first, second, third

    first, second, third = await dash.store.run(run)

    def hq_taken_in(data, day: date) -> int:
        (report,) = [r for r in _reports(data) if r.site is None and r.business_day == day]
        return report.totals.taken_in_fen

    assert hq_taken_in(first, date(2026, 5, 10)) == 1000
    assert hq_taken_in(second, date(2026, 5, 10)) == 1000  # as stored
    assert hq_taken_in(second, date(2026, 5, 19)) == 1200  # afresh
    assert hq_taken_in(third, date(2026, 5, 10)) == 3000  # re-cleared by housekeeping


async def test_days_after_tomorrow_are_not_cleared_but_still_charted(dash):
    def run(conn):
        return clearing(conn, date(2026, 5, 30), TODAY)

    data = await dash.store.run(run)
    days = {r.business_day for r in _reports(data)}
    assert max(days - {date(2026, 5, 30)}) == date(2026, 5, 21)  # tomorrow
    assert [len(points) for _, points in data.series] == [WINDOW] * len(data.series)
    stored = await dash.store.run(
        lambda conn: conn.execute(
            "SELECT count(*) FROM clearing_reports WHERE day > '2026-05-21' AND day < '2026-05-30'"
        ).fetchone()[0]
    )
    assert stored == 0


def _reports(data):
    return data.window
