"""Daily clearing (日结) and the 通存通兑 settlement: central.core.clearing, without I/O."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core.clearing import (
    ENTRY_KINDS,
    HQ_LABEL,
    ClearingEntry,
    ClearingError,
    DayReport,
    SiteDay,
    business_day,
    clear_day,
    clear_days,
    day_window,
    encode_csv,
    revise,
    settle,
    settlement_csv,
    to_csv,
    to_json,
    totals_of,
)
from central.core.effects import PostingKind

SHANGHAI = SiteDay(timezone="Asia/Shanghai", cutoff_hour=4)
TUESDAY = date(2026, 3, 3)
#: Tuesday 12:00 in Shanghai.
NOON = datetime(2026, 3, 3, 4, 0, tzinfo=UTC)


def entry(kind: str, **kw: Any) -> ClearingEntry:
    """An entry at Tuesday noon in Shanghai, received at once, at site A by default."""
    fields: dict[str, Any] = {
        "entry_id": f"e-{kind}",
        "kind": kind,
        "site": "A",
        "person_id": "P1",
        "at": NOON,
        "received_at": NOON,
    }
    fields.update(kw)
    fields.setdefault("received_at", fields["at"])
    return ClearingEntry(**fields)


def csv_rows(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert "\r\n" in text
    assert "\n" not in text.replace("\r\n", "")
    return list(csv.reader(io.StringIO(text, newline="")))


# --- business days ---------------------------------------------------------------------------


def test_a_0230_purchase_belongs_to_the_previous_business_day_with_a_0400_cutoff() -> None:
    at = datetime(2026, 3, 4, 2, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert business_day(at, "Asia/Shanghai", 4) == TUESDAY
    assert business_day(at + timedelta(hours=1, minutes=30), "Asia/Shanghai", 4) == date(2026, 3, 4)
    report = clear_day("A", TUESDAY, [entry("purchase", at=at, cash_fen=-500)], SHANGHAI)
    assert report.totals.purchase_fen == 500
    assert report.starts_at == datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # Tue 04:00 local
    assert report.ends_at == datetime(2026, 3, 3, 20, 0, tzinfo=UTC)  # Wed 04:00 local


def test_the_cutoff_instant_itself_opens_the_new_business_day() -> None:
    at = datetime(2026, 3, 4, 4, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert business_day(at, "Asia/Shanghai", 4) == date(2026, 3, 4)
    assert business_day(at - timedelta(microseconds=1), "Asia/Shanghai", 4) == TUESDAY


def test_berlin_business_days_are_23_hours_in_spring_and_25_in_autumn() -> None:
    # The clocks change in the small hours of Sunday, inside Saturday's business day.
    spring_start, spring_end = day_window(date(2026, 3, 28), "Europe/Berlin", 4)
    autumn_start, autumn_end = day_window(date(2026, 10, 24), "Europe/Berlin", 4)
    assert spring_end - spring_start == timedelta(hours=23)
    assert autumn_end - autumn_start == timedelta(hours=25)
    # 04:00 CET before the change, 04:00 CEST after it.
    assert spring_start == datetime(2026, 3, 28, 3, 0, tzinfo=UTC)
    assert spring_end == datetime(2026, 3, 29, 2, 0, tzinfo=UTC)
    sunday_0330 = datetime(2026, 3, 29, 3, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert business_day(sunday_0330, "Europe/Berlin", 4) == date(2026, 3, 28)


def test_a_cutoff_in_the_skipped_hour_starts_the_day_when_the_clock_jumps() -> None:
    # Berlin skips 02:00-03:00 on 2026-03-29: the day starts at 03:00 CEST = 01:00 UTC.
    start, _ = day_window(date(2026, 3, 29), "Europe/Berlin", 2)
    assert start == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert business_day(start - timedelta(seconds=1), "Europe/Berlin", 2) == date(2026, 3, 28)
    assert business_day(start, "Europe/Berlin", 2) == date(2026, 3, 29)


def test_a_cutoff_in_the_repeated_hour_starts_the_day_at_its_first_occurrence() -> None:
    # Berlin repeats 02:00-03:00 on 2026-10-25: both passes belong to the new day.
    start, end = day_window(date(2026, 10, 25), "Europe/Berlin", 2)
    assert start == datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00 CEST
    second_pass = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert business_day(second_pass, "Europe/Berlin", 2) == date(2026, 10, 25)
    assert end - start == timedelta(hours=25)


ZONES = ("Asia/Shanghai", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC")


@given(
    at=st.datetimes(
        min_value=datetime(2000, 1, 2),  # noqa: DTZ001 - hypothesis bounds are naive
        max_value=datetime(2037, 12, 30),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    zone=st.sampled_from(ZONES),
    cutoff=st.integers(0, 23),
)
def test_every_instant_lies_in_the_window_of_its_business_day(
    at: datetime, zone: str, cutoff: int
) -> None:
    day = business_day(at, zone, cutoff)
    start, end = day_window(day, zone, cutoff)
    assert start <= at < end
    assert timedelta(hours=22) <= end - start <= timedelta(hours=26)


def test_a_site_day_refuses_a_bad_cutoff_or_zone() -> None:
    with pytest.raises(ClearingError, match=r"0\.\.23"):
        SiteDay(cutoff_hour=24)
    with pytest.raises(ClearingError, match="time zone"):
        SiteDay(timezone="Mars/Olympus")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"timezone": "Asia/Shanghai", "cutoff_hour": -1}', type=SiteDay)


# --- entries ---------------------------------------------------------------------------------


def test_clearing_knows_every_kind_operations_post_plus_site_and_seed_kinds() -> None:
    assert set(get_args(PostingKind)) | {"purchase", "ticket_use", "opening"} == ENTRY_KINDS


@pytest.mark.parametrize(
    ("kind", "purses", "message"),
    [
        ("purchase", {"deposit_fen": -1}, "moves no deposit"),
        ("recharge", {"subsidy_fen": 1}, "moves no subsidy"),
        ("subsidy_grant", {"cash_fen": 1}, "moves no cash"),
        ("ticket_sale", {"ticket_uses": 1}, "only a ticket_use"),
        ("recharge", {"for_site": "B"}, "only refunds and corrections"),
    ],
)
def test_an_entry_moving_a_purse_its_kind_never_moves_is_refused(
    kind: str, purses: dict[str, Any], message: str
) -> None:
    with pytest.raises(ClearingError, match=message):
        entry(kind, **purses)


def test_an_entry_with_a_naive_time_or_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ClearingError, match="timezone-aware"):
        entry("purchase", at=datetime(2026, 3, 3, 12, 0))  # noqa: DTZ001 - the point
    raw = msgspec.json.encode(entry("purchase")).replace(b'"purchase"', b'"bribe"')
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=ClearingEntry)


def test_a_repeated_entry_counts_once_but_a_conflicting_one_is_refused() -> None:
    sale = entry("purchase", cash_fen=-100)
    assert clear_day("A", TUESDAY, [sale, sale], SHANGHAI).totals.purchase_fen == 100
    with pytest.raises(ClearingError, match="twice"):
        clear_day("A", TUESDAY, [sale, entry("purchase", cash_fen=-200)], SHANGHAI)


# --- totals ----------------------------------------------------------------------------------


def test_a_day_of_every_kind_adds_up_by_definition() -> None:
    entries = [
        entry("recharge", entry_id="r1", cash_fen=30000, method="cash"),
        entry("recharge", entry_id="r2", cash_fen=20000, method="bank"),
        entry("recharge", entry_id="r3", cash_fen=5000, method="online"),
        entry("recharge", entry_id="r4", cash_fen=1000),  # a kiosk commit: no method
        entry("deposit", deposit_fen=2000, method="cash"),
        entry("purchase", entry_id="s1", cash_fen=-1000, subsidy_fen=-2000),
        entry("purchase", entry_id="s2", cash_fen=-3800),
        entry("correction", cash_fen=3420, ref="s2", operator="sup-li"),
        entry("refund", cash_fen=200, subsidy_fen=300, ref="s1", operator="cashier-wu"),
        entry("ticket_sale", cash_fen=-5000),
        entry("ticket_use", ticket_uses=2),
        entry("refund_cash", cash_fen=-700),
        entry("refund_deposit", deposit_fen=-1500),
        entry("fee", cash_fen=-100, deposit_fen=-500),
        entry("subsidy_grant", site=None, subsidy_fen=10000),
        entry("subsidy_expire", site=None, subsidy_fen=-400),
        entry("subsidy_restore", site=None, subsidy_fen=150),
        entry("subsidy_forfeit", subsidy_fen=-250),
        entry("opening", cash_fen=900, subsidy_fen=100),
    ]
    t = clear_day("A", TUESDAY, entries, SHANGHAI).totals
    assert (t.recharge_cash_fen, t.recharge_bank_fen, t.recharge_online_fen) == (30000, 20000, 5000)
    assert t.recharge_unspecified_fen == 1000
    assert t.recharge_fen == 56000
    assert (t.deposit_fen, t.payout_cash_fen, t.payout_deposit_fen) == (2000, 700, 1500)
    assert t.taken_in_fen == 56000 + 2000 - 700 - 1500
    assert (t.purchase_fen, t.purchase_cash_fen, t.purchase_subsidy_fen) == (6800, 4800, 2000)
    assert (t.correction_fen, t.purchase_refund_fen, t.ticket_sale_fen) == (3420, 500, 5000)
    assert t.consumption_fen == 6800 + 5000 - 500 - 3420
    assert t.subsidy_used_fen == 2000 - 300
    assert t.fee_fen == 600
    assert t.subsidy_forfeited_fen == 250
    assert t.opening_fen == 1000
    assert t.ticket_uses == 2
    assert t.net_position_fen == t.consumption_fen - t.taken_in_fen
    # HQ's subsidy batch is not site A's: it clears under HQ.
    assert t.subsidy_granted_fen == t.subsidy_expired_fen == t.subsidy_restored_fen == 0
    hq = clear_day(None, TUESDAY, entries, SHANGHAI).totals
    assert (hq.subsidy_granted_fen, hq.subsidy_expired_fen, hq.subsidy_restored_fen) == (
        10000,
        400,
        150,
    )


def test_a_correction_made_at_hq_is_cleared_at_the_purchase_site_with_who_did_it() -> None:
    sale = entry("purchase", entry_id="s1", site="B", cash_fen=-3800)
    fix = entry(
        "correction",
        entry_id="op:req-9",
        site=None,
        for_site="B",
        cash_fen=3420,
        ref="s1",
        operator="sup-li",
        at=NOON + timedelta(hours=2),
    )
    b = clear_day("B", TUESDAY, [sale, fix], SHANGHAI)
    assert b.totals.consumption_fen == 380
    assert b.counts == {"correction": 1, "purchase": 1}
    (line,) = b.adjustments
    assert (line.entry_id, line.made_at, line.operator) == ("op:req-9", None, "sup-li")
    assert line.ref == "s1"
    assert line.given_back_fen == 3420
    assert clear_day(None, TUESDAY, [sale, fix], SHANGHAI).entry_count == 0


def test_the_docstring_settlement_example_holds() -> None:
    entries = [
        entry("recharge", entry_id="a1", cash_fen=30000, method="cash"),
        entry("recharge", entry_id="a2", cash_fen=20000, method="bank"),
        entry("purchase", entry_id="a3", cash_fen=-10000, subsidy_fen=-2000),
        entry("purchase", entry_id="b1", site="B", cash_fen=-20000, subsidy_fen=-10000),
        entry("correction", entry_id="b2", site=None, for_site="B", cash_fen=3420, ref="b1"),
    ]
    reports = [clear_day(s, TUESDAY, entries, SHANGHAI) for s in ("A", "B", None)]
    result = settle(reports)
    assert [(line.site, line.net_fen, line.direction) for line in result.lines] == [
        ("A", -38000, "site_remits"),
        ("B", 26580, "hq_pays"),
    ]
    assert result.hq_net_fen == 11420
    assert sum(line.net_fen for line in result.lines) + result.hq_net_fen == 0
    rows = csv_rows(settlement_csv(result))
    assert rows[0][0] == "站点 site"
    assert [r[7] for r in rows[1:]] == ["-380.00", "265.80", "114.20"]
    assert rows[-1][0] == HQ_LABEL


def test_settling_two_reports_of_the_same_site_day_is_refused() -> None:
    report = clear_day("A", TUESDAY, [entry("purchase", cash_fen=-1)], SHANGHAI)
    with pytest.raises(ClearingError, match="two reports"):
        settle([report, report])


# --- revisions -------------------------------------------------------------------------------


def test_late_tuesday_records_arriving_thursday_make_revision_2_with_what_changed() -> None:
    on_time = [
        entry("purchase", entry_id="s1", cash_fen=-1500),
        entry("recharge", entry_id="r1", cash_fen=10000, method="cash"),
    ]
    first = revise(None, clear_day("A", TUESDAY, on_time, SHANGHAI))
    assert first.revision == 1
    assert revise(first, clear_day("A", TUESDAY, list(reversed(on_time)), SHANGHAI)) is first

    thursday = datetime(2026, 3, 5, 2, 0, tzinfo=UTC)
    late = [
        entry("purchase", entry_id="s2", cash_fen=-800, subsidy_fen=-200, received_at=thursday),
        entry("purchase", entry_id="s3", cash_fen=-300, received_at=thursday),
    ]
    second = revise(first, clear_day("A", TUESDAY, on_time + late, SHANGHAI))
    assert second.revision == 2
    (note,) = second.revisions
    assert note.late_entries == 2
    assert note.late_since == NOON
    assert note.previous_digest == first.digest
    changed = {c.field: (c.before, c.after) for c in note.changed}
    assert changed["totals.purchase_fen"] == (1500, 2800)
    assert changed["totals.subsidy_used_fen"] == (0, 200)
    assert changed["counts.purchase"] == (1, 3)
    assert "totals.recharge_fen" not in changed
    assert "2 late entries" in note.because
    assert "totals.purchase_fen" in note.because
    assert second.as_of == thursday

    # Recomputed again with nothing new: still revision 2; one more late record: 3.
    assert revise(second, clear_day("A", TUESDAY, late + on_time, SHANGHAI)) is second
    friday = thursday + timedelta(days=1)
    more = [*on_time, *late, entry("ticket_use", ticket_uses=1, received_at=friday)]
    third = revise(second, clear_day("A", TUESDAY, more, SHANGHAI))
    assert third.revision == 3
    assert [n.revision for n in third.revisions] == [2, 3]
    assert third.revisions[-1].late_since == thursday


def test_revising_another_site_or_day_is_refused() -> None:
    a = clear_day("A", TUESDAY, [], SHANGHAI)
    with pytest.raises(ClearingError, match="cannot revise"):
        revise(a, clear_day("A", TUESDAY + timedelta(days=1), [], SHANGHAI))
    with pytest.raises(ClearingError, match="cannot revise"):
        revise(a, clear_day(None, TUESDAY, [], SHANGHAI))


# --- export ----------------------------------------------------------------------------------


def test_a_report_round_trips_through_json_with_sorted_keys() -> None:
    report = clear_day("A", TUESDAY, [entry("purchase", cash_fen=-250)], SHANGHAI)
    data = to_json(report)
    assert data.startswith(b'{"adjustments":[],"as_of":"2026-03-03T04:00:00Z"')
    assert msgspec.json.decode(data, type=DayReport) == report


def test_the_day_csv_is_excel_friendly_one_row_per_site_day_in_yuan() -> None:
    entries = [
        entry("purchase", entry_id="s1", cash_fen=-5),
        entry("recharge", entry_id="r1", site=None, cash_fen=123456, method="bank"),
        entry("purchase", entry_id="s2", cash_fen=-100, at=NOON + timedelta(days=1)),
    ]
    reports = clear_days(entries, {}, SHANGHAI)
    rows = csv_rows(to_csv(reports))
    header, body = rows[0], rows[1:]
    assert header[:2] == ["站点 site", "营业日 business_day"]
    assert "消费-补贴(元) purchase_subsidy_yuan" in header
    assert [(r[0], r[1]) for r in body] == [
        (HQ_LABEL, "2026-03-03"),
        ("A", "2026-03-03"),
        ("A", "2026-03-04"),
    ]
    col = header.index("充值-银行卡(元) recharge_bank_yuan")
    assert body[0][col] == "1234.56"
    col = header.index("账户余额变动(元) ledger_net_yuan")
    assert body[1][col] == "-0.05"


def test_text_cells_excel_would_run_as_formulas_are_defused() -> None:
    rows = csv_rows(encode_csv(["a", "b", "c"], [["=1+1", "-12.30", "@SUM(A1)"]]))
    assert rows[1] == ["'=1+1", "-12.30", "'@SUM(A1)"]


# --- properties ------------------------------------------------------------------------------

SITES = (None, "A", "B", "C")
_PURSE_SIGNS: dict[str, dict[str, int]] = {
    "purchase": {"cash_fen": -1, "subsidy_fen": -1},
    "ticket_use": {},
    "recharge": {"cash_fen": 1},
    "refund": {"cash_fen": 1, "subsidy_fen": 1},
    "correction": {"cash_fen": 1, "subsidy_fen": 1},
    "opening": {"cash_fen": 1, "subsidy_fen": 1, "deposit_fen": 1},
    "deposit": {"deposit_fen": 1},
    "refund_cash": {"cash_fen": -1},
    "refund_deposit": {"deposit_fen": -1},
    "fee": {"cash_fen": -1, "deposit_fen": -1},
    "subsidy_grant": {"subsidy_fen": 1},
    "subsidy_expire": {"subsidy_fen": -1},
    "subsidy_restore": {"subsidy_fen": 1},
    "subsidy_forfeit": {"subsidy_fen": -1},
    "ticket_sale": {"cash_fen": -1},
}


@st.composite
def entries_strategy(draw: st.DrawFn) -> list[ClearingEntry]:
    count = draw(st.integers(0, 30))
    out = []
    for i in range(count):
        kind = draw(st.sampled_from(sorted(ENTRY_KINDS)))
        purses = {
            purse: sign * draw(st.integers(0, 100_000))
            for purse, sign in _PURSE_SIGNS[kind].items()
        }
        if kind == "correction":  # a site correction may also charge more
            purses = {p: v * draw(st.sampled_from((1, -1))) for p, v in purses.items()}
        at = NOON + timedelta(minutes=draw(st.integers(-3000, 3000)))
        out.append(
            ClearingEntry(
                entry_id=f"e{i}",
                kind=kind,  # type: ignore[arg-type]
                site=draw(st.sampled_from(SITES)),
                person_id=draw(st.sampled_from(("P1", "P2"))),
                at=at,
                received_at=at + timedelta(minutes=draw(st.integers(0, 5000))),
                ticket_uses=draw(st.integers(1, 3)) if kind == "ticket_use" else 0,
                method=draw(st.sampled_from((None, "cash", "bank", "online")))
                if kind in {"recharge", "deposit"}
                else None,
                for_site=draw(st.sampled_from(SITES[1:]))
                if kind in {"refund", "correction"} and draw(st.booleans())
                else None,
                **purses,
            )
        )
    return out


CONFIGS = {"B": SiteDay(timezone="Europe/Berlin", cutoff_hour=2), "C": SiteDay(cutoff_hour=0)}


@settings(max_examples=150)
@given(entries=entries_strategy(), data=st.data())
def test_a_report_is_the_same_bytes_whatever_order_its_entries_come_in(
    entries: list[ClearingEntry], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(entries))
    for site in SITES:
        config = CONFIGS.get(site, SHANGHAI)
        first = clear_day(site, TUESDAY, entries, config)
        again = clear_day(site, TUESDAY, shuffled, config)
        assert to_json(first) == to_json(again)
        assert to_csv([first]) == to_csv([again])
        assert revise(first, again) is first


@settings(max_examples=150)
@given(entries=entries_strategy())
def test_every_entry_lands_in_exactly_one_site_day_and_totals_are_its_sums(
    entries: list[ClearingEntry],
) -> None:
    reports = clear_days(entries, CONFIGS, SHANGHAI)
    assert sum(r.entry_count for r in reports) == len(entries)
    assert len({(r.site, r.business_day) for r in reports}) == len(reports)
    whole = totals_of(entries)
    for name in type(whole).__struct_fields__:
        assert sum(getattr(r.totals, name) for r in reports) == getattr(whole, name), name
    t = whole
    assert t.ledger_net_fen == sum(e.cash_fen + e.subsidy_fen + e.deposit_fen for e in entries)
    assert t.ledger_net_fen == (
        t.recharge_fen
        + t.deposit_fen
        + t.opening_fen
        + t.subsidy_granted_fen
        + t.subsidy_restored_fen
        + t.purchase_refund_fen
        + t.correction_fen
        - t.purchase_fen
        - t.ticket_sale_fen
        - t.payout_cash_fen
        - t.payout_deposit_fen
        - t.fee_fen
        - t.subsidy_expired_fen
        - t.subsidy_forfeited_fen
    )
    by_method = t.recharge_cash_fen + t.recharge_bank_fen + t.recharge_online_fen
    assert t.recharge_fen == by_method + t.recharge_unspecified_fen
    assert t.ticket_uses == sum(e.ticket_uses for e in entries)
    for r in reports:
        assert sum(r.counts.values()) == r.entry_count


@settings(max_examples=150)
@given(entries=entries_strategy())
def test_settlement_sums_to_zero_against_hq(entries: list[ClearingEntry]) -> None:
    reports = clear_days(entries, CONFIGS, SHANGHAI)
    result = settle(reports)
    assert sum(line.net_fen for line in result.lines) + result.hq_net_fen == 0
    for line in result.lines:
        assert line.net_fen == line.consumption_fen - line.taken_in_fen
        mine = [r for r in reports if r.site == line.site]
        assert line.days == len(mine)
        assert line.net_fen == sum(r.totals.net_position_fen for r in mine)
    rows = csv_rows(settlement_csv(result))
    assert sum(Decimal(r[7]) for r in rows[1:]) == 0


@settings(max_examples=100)
@given(entries=entries_strategy(), late=entries_strategy())
def test_a_recomputation_with_late_entries_bumps_the_revision_only_if_the_day_changed(
    entries: list[ClearingEntry], late: list[ClearingEntry]
) -> None:
    later = [
        msgspec.structs.replace(
            e, entry_id=f"late-{e.entry_id}", received_at=e.at + timedelta(days=9)
        )
        for e in late
    ]
    first = revise(None, clear_day("A", TUESDAY, entries, SHANGHAI))
    new = clear_day("A", TUESDAY, entries + later, SHANGHAI)
    kept = revise(first, new)
    if new.entry_count == first.entry_count:
        assert kept is first
    else:
        assert kept.revision == 2
        assert kept.revisions[0].late_entries == new.entry_count - first.entry_count
        assert kept.revisions[0].changed
        assert kept.digest == new.digest
