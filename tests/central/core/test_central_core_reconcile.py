"""Payment reconciliation (对账): central.core.reconcile, without I/O."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from central.core.amounts import format_yuan
from central.core.reconcile import (
    CreditOnce,
    PaymentRecord,
    Reconciliation,
    Statement,
    StatementError,
    Void,
    issues_csv,
    parse_statement,
    reconcile,
    to_csv,
)
from protocol.messages import MAX_FEN

#: Thursday 09:00 in Shanghai: finance imports Wednesday's statement.
NOW = datetime(2026, 3, 5, 1, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)
#: Wednesday 12:00 and 14:00 in Shanghai.
NOON = datetime(2026, 3, 4, 4, 0, tzinfo=UTC)
AFTERNOON = NOON + timedelta(hours=2)

GBK_STATEMENT = """招商银行商户对账单
商户号：308000012345,,,,,
交易日期,交易时间,商户订单号,交易流水号,交易金额（元）,交易状态
20260304,115900,KIOSK-0001,B0001,"￥1,200.00",成功
20260304,12:00:30,KIOSK-0002,B0002,200.00,交易成功
20260304,121000,KIOSK-0003,B0003,38.50,失败
20260304,170000,DESK-0009,B0004,50,成功
合计,,,,"1,488.50",
"""


def payment(pay_ref: str, amount_fen: int, state: str = "prepared", **kw: Any) -> PaymentRecord:
    fields: dict[str, Any] = {
        "pay_ref": pay_ref,
        "site": "SZ-FUTIAN",
        "person_id": "P1",
        "card_uid": "04A1B2C3",
        "amount_fen": amount_fen,
        "state": state,
        "record_id": f"rec-{pay_ref}",
        "at": AFTERNOON,
        "method": "bank",
    }
    fields.update(kw)
    return PaymentRecord(**fields)


def statement(text: str, encoding: str = "utf-8", **kw: Any) -> Statement:
    return parse_statement(text.encode(encoding), **kw)


def csv_rows(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert "\n" not in text.replace("\r\n", "")
    return list(csv.reader(io.StringIO(text, newline="")))


# --- parsing ---------------------------------------------------------------------------------


def test_a_gbk_bank_statement_with_a_preamble_and_chinese_headers_is_read() -> None:
    parsed = statement(GBK_STATEMENT, "gbk")
    assert parsed.encoding == "gb18030"
    assert parsed.header_line == 3
    assert parsed.columns == {
        "amount": "交易金额（元）",
        "date": "交易日期",
        "pay_ref": "商户订单号",  # the merchant's order number wins over the bank's serial
        "status": "交易状态",
        "time": "交易时间",
    }
    assert [(ln.line, ln.pay_ref, ln.amount_fen, ln.status) for ln in parsed.lines] == [
        (4, "KIOSK-0001", 120000, "success"),
        (5, "KIOSK-0002", 20000, "success"),
        (6, "KIOSK-0003", 3850, "failed"),
        (7, "DESK-0009", 5000, "success"),
    ]
    # Local Shanghai times, as UTC.
    assert parsed.lines[0].at == datetime(2026, 3, 4, 3, 59, tzinfo=UTC)
    assert parsed.lines[1].at == datetime(2026, 3, 4, 4, 0, 30, tzinfo=UTC)
    assert parsed.errors == ()
    assert [(s.line, s.reason) for s in parsed.skipped] == [(8, "summary line (合计)")]
    assert (parsed.period_start, parsed.period_end, parsed.period_source) == (
        datetime(2026, 3, 4, 3, 59, tzinfo=UTC),
        datetime(2026, 3, 4, 9, 0, tzinfo=UTC),
        "lines",
    )


def test_utf8_with_bom_and_english_headers_and_iso_times() -> None:
    text = "\ufeffPay_Ref,Amount,Time,Channel\nP-1,0.05,2026-03-04T04:00:00Z,online\n"
    parsed = statement(text)
    assert parsed.encoding == "utf-8-sig"
    (line,) = parsed.lines
    assert (line.pay_ref, line.amount_fen, line.channel) == ("P-1", 5, "online")
    assert line.at == NOON
    assert line.status == "success"  # no status column: every line is a payment


def test_an_excel_unicode_text_export_is_utf16_and_tab_separated() -> None:
    text = "交易流水号\t金额\t交易时间\r\nX-1\t12.3\t2026/3/4 12:00:00\r\n"
    parsed = parse_statement(text.encode("utf-16"))
    assert (parsed.encoding, parsed.delimiter) == ("utf-16", "\t")
    assert [(ln.pay_ref, ln.amount_fen, ln.at) for ln in parsed.lines] == [("X-1", 1230, NOON)]


def test_full_width_digits_and_signs_read_as_ascii() -> None:
    parsed = statement(
        "商户订单号,金额,交易时间\nF-1,￥１２．５０,２０２６－０３－０４　１２：００：００\n"
    )
    assert [(ln.amount_fen, ln.at) for ln in parsed.lines] == [(1250, NOON)]


def test_wechat_style_backticks_and_excel_text_wrappers_are_removed() -> None:
    parsed = statement('商户订单号,金额\n`W-1,`3.00\n="W-2",="4.00"\n')
    assert [(ln.pay_ref, ln.amount_fen) for ln in parsed.lines] == [("W-1", 300), ("W-2", 400)]


def test_columns_map_headers_the_aliases_do_not_know() -> None:
    text = "凭证号,发生额,备注\nV-1,8.00,x\n"
    with pytest.raises(StatementError, match="no header row"):
        statement(text)
    parsed = statement(text, columns={"pay_ref": "凭证号", "amount": "发生额"})
    assert [(ln.pay_ref, ln.amount_fen) for ln in parsed.lines] == [("V-1", 800)]
    with pytest.raises(StatementError, match="unknown fields"):
        statement(text, columns={"payref": "凭证号"})


def test_bad_lines_are_reported_by_line_number_and_reason_and_the_rest_is_read() -> None:
    text = "\r\n".join(
        [
            "pay_ref,amount,time",
            "OK-1,1.00,2026-03-04 12:00",
            ",2.00,2026-03-04 12:00",
            "HAS SPACE,2.00,2026-03-04 12:00",
            "A-3,abc,2026-03-04 12:00",
            "A-4,1.005,2026-03-04 12:00",
            "A-5,-3.00,2026-03-04 12:00",
            "A-6,0,2026-03-04 12:00",
            f"A-7,{MAX_FEN // 100 + 1}.00,2026-03-04 12:00",
            "A-8,1.00,yesterday",
            "A-9,1.00,25:61",
            "A-10",
            "OK-2,1.00,2026-03-04 12:01",
            "",
        ]
    )
    parsed = statement(text)
    assert [ln.pay_ref for ln in parsed.lines] == ["OK-1", "OK-2"]
    assert [ln.line for ln in parsed.lines] == [2, 13]
    reasons = {e.line: (e.pay_ref, e.reason) for e in parsed.errors}
    assert reasons[3] == (None, "pay_ref (交易流水号/商户订单号) is empty")
    assert reasons[4][0] is None
    assert "printable ASCII" in reasons[4][1]
    assert reasons[5] == ("A-3", "amount 'abc' is not a number of yuan")
    assert reasons[6] == ("A-4", "amount '1.005' has more than two decimals")
    assert "not positive" in reasons[7][1]
    assert "not positive" in reasons[8][1]
    assert "exceeds" in reasons[9][1]
    assert reasons[10] == ("A-8", "time 'yesterday' is not a date and time")
    assert "no date" in reasons[11][1]
    assert reasons[12] == ("A-10", "amount (金额) is empty")
    rows = csv_rows(issues_csv(parsed))
    assert rows[0] == ["行号 line", "类型 kind", "支付流水号 pay_ref", "原因 reason"]
    assert [r[0] for r in rows[1:]] == [str(n) for n in range(3, 13)]


def test_an_oversized_field_is_one_bad_line_not_a_failed_import() -> None:
    text = "pay_ref,amount\nA-1,1.00\nA-2," + "9" * 200_000 + "\nA-3,2.00\n"
    parsed = statement(text)
    assert [ln.pay_ref for ln in parsed.lines] == ["A-1", "A-3"]
    (error,) = parsed.errors
    assert error.line == 3
    assert "unreadable CSV" in error.reason


def test_a_reference_on_two_lines_is_flagged() -> None:
    parsed = statement("pay_ref,amount\nD-1,1.00\nD-2,1.00\nD-1,1.00\n")
    assert [(d.pay_ref, d.lines) for d in parsed.duplicates] == [("D-1", (2, 4))]


def test_a_date_column_alone_covers_whole_local_days() -> None:
    parsed = statement("交易日期,流水号,金额\n2026-03-04,A-1,1.00\n2026/03/05,A-2,1.00\n")
    assert parsed.period_start == datetime(2026, 3, 3, 16, 0, tzinfo=UTC)
    assert parsed.period_end == datetime(2026, 3, 5, 16, 0, tzinfo=UTC)
    assert all(ln.at is None for ln in parsed.lines)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no header row"),
        (b"just,some,words\n1,2,3\n", "no header row"),
        (b"\xff\xfe\x00", "not valid UTF-16"),
        (b"pay_ref,amount\n\x81\x30", "neither UTF-8 nor GB18030"),
        (b"pay_ref,amount\nA\x00,1\n", "NUL"),
    ],
)
def test_a_file_that_is_no_statement_at_all_is_one_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(StatementError, match=message):
        parse_statement(data)


def test_a_given_period_must_be_aware_and_ordered() -> None:
    with pytest.raises(StatementError, match="period"):
        statement("pay_ref,amount\n", period=(NOW, NOON))


@settings(max_examples=300)
@given(st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8")))
def test_garbage_in_gives_a_statement_or_a_statement_error_only(data: bytes) -> None:
    try:
        parse_statement(b"pay_ref,amount,time,status\n" + data)
        parse_statement(data)
    except StatementError:
        pass


@given(
    fen=st.integers(1, MAX_FEN),
    style=st.sampled_from(["{}", "¥{}", "￥{}", "{}元", " {} ", "CNY{}", "RMB {}", "+{}"]),
    commas=st.booleans(),
)
def test_any_amount_in_yuan_is_read_back_to_the_exact_fen(
    fen: int, style: str, commas: bool
) -> None:
    whole, _, part = format_yuan(fen).partition(".")
    text = style.format(f"{int(whole):,}.{part}" if commas else f"{whole}.{part}")
    parsed = statement(f'pay_ref,amount\nA-1,"{text}"\n')
    assert [ln.amount_fen for ln in parsed.lines] == [fen]


@pytest.mark.parametrize(
    ("text", "fen"),
    [("+12.00", 1200), ("1 200.00", 120000), ("RMB1,200.00", 120000), ("12.5 元", 1250)],
)
def test_statement_amounts_may_carry_a_plus_spaces_and_a_currency(text: str, fen: int) -> None:
    parsed = statement(f'pay_ref,amount\nA-1,"{text}"\n')
    assert [ln.amount_fen for ln in parsed.lines] == [fen]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("12.3.4", "is not a number of yuan"),
        ("-¥5.00", "is not positive (a refund or reversal is not a payment)"),
        ("0.00", "is not positive (a refund or reversal is not a payment)"),
        ("10000000.01", "exceeds 10000000.00 yuan"),
    ],
)
def test_a_statement_amount_that_is_no_payment_is_a_line_error(text: str, reason: str) -> None:
    (error,) = statement(f'pay_ref,amount\nA-1,"{text}"\n').errors
    assert (error.pay_ref, error.reason) == ("A-1", f"amount {text!r} {reason}")


# --- reconciling -----------------------------------------------------------------------------


def items_by_ref(result: Reconciliation) -> dict[str, tuple[str, str]]:
    return {i.pay_ref: (i.category, i.resolution) for i in result.items}


def reason(result: Reconciliation, pay_ref: str) -> str:
    return next(i.reason for i in result.items if i.pay_ref == pay_ref)


def test_the_kiosk_that_crashed_after_the_bank_took_200_yuan_is_credited_once() -> None:
    parsed = statement(GBK_STATEMENT, "gbk")
    crashed = payment("KIOSK-0002", 20000, at=NOON - timedelta(seconds=5))
    result = reconcile(parsed, [crashed], now=NOW, grace=GRACE)
    assert result.actions == (
        CreditOnce(
            pay_ref="KIOSK-0002",
            person_id="P1",
            card_uid="04A1B2C3",
            amount_fen=20000,
            source_record_id="rec-KIOSK-0002",
            site="SZ-FUTIAN",
            method="bank",
            statement_line=5,
        ),
    )
    assert result.summary.credit_fen == 20000
    # Applied (the recharge commits under the pay_ref): a re-run, or the kiosk's late
    # commit, leaves nothing more to do.
    credited = msgspec.structs.replace(crashed, state="committed")
    again = reconcile(parsed, [credited], now=NOW + timedelta(hours=1), grace=GRACE)
    assert again.actions == ()
    assert items_by_ref(again)["KIOSK-0002"] == ("matched", "ok")


def test_each_category_and_resolution() -> None:
    parsed = statement(GBK_STATEMENT, "gbk")
    payments = [
        payment("KIOSK-0001", 120000, "committed"),  # matched, ok
        payment("KIOSK-0003", 3850),  # the channel says failed: void
        payment("DESK-0009", 4000, "committed"),  # credited 40, paid 50
        payment("KIOSK-0004", 1000),  # covered, absent: void
        payment("KIOSK-0005", 1000, at=NOW - timedelta(minutes=10)),  # within grace
        payment("KIOSK-0006", 1000, at=NOON - timedelta(days=2)),  # before the statement
        payment("KIOSK-0007", 1000, "committed"),  # credited, not paid
        payment("KIOSK-0008", 1000, "aborted"),  # aborted, not paid
    ]
    result = reconcile(parsed, payments, now=NOW, grace=GRACE)
    assert items_by_ref(result) == {
        "DESK-0009": ("amount_differs", "review"),
        "KIOSK-0001": ("matched", "ok"),
        "KIOSK-0002": ("only_in_statement", "review"),
        "KIOSK-0003": ("only_in_onecard", "void"),
        "KIOSK-0004": ("only_in_onecard", "void"),
        "KIOSK-0005": ("only_in_onecard", "wait"),
        "KIOSK-0006": ("only_in_onecard", "review"),
        "KIOSK-0007": ("only_in_onecard", "review"),
        "KIOSK-0008": ("only_in_onecard", "ok"),
    }
    assert [type(a).__name__ for a in result.actions] == ["Void", "Void"]
    assert [a.pay_ref for a in result.actions] == ["KIOSK-0003", "KIOSK-0004"]
    s = result.summary
    assert (s.matched, s.amount_differs, s.only_in_statement, s.only_in_onecard) == (1, 1, 1, 6)
    assert (s.ok, s.credit_once, s.void, s.wait, s.review) == (2, 0, 2, 1, 4)
    assert s.statement_fen == 120000 + 20000 + 5000
    assert s.onecard_fen == 120000 + 4000 + 1000
    assert reason(result, "DESK-0009") == "amounts differ: onecard 40.00, statement 50.00"
    assert "never saw" in reason(result, "KIOSK-0002")
    assert "may still commit" in reason(result, "KIOSK-0005")


def test_a_prepared_payment_at_the_edge_of_a_statement_waits_for_a_person_not_a_void() -> None:
    parsed = statement(GBK_STATEMENT, "gbk")
    assert parsed.period_end is not None
    edge = payment("KIOSK-0010", 1000, at=parsed.period_end - timedelta(minutes=5))
    result = reconcile(parsed, [edge], now=NOW, grace=GRACE)
    assert result.actions == ()
    assert "outside the statement's period" in reason(result, "KIOSK-0010")


def test_no_void_while_a_statement_line_has_an_unreadable_reference() -> None:
    text = GBK_STATEMENT.replace("KIOSK-0002", "")
    parsed = statement(text, "gbk")
    result = reconcile(parsed, [payment("KIOSK-0004", 1000)], now=NOW, grace=GRACE)
    assert result.actions == ()
    assert items_by_ref(result)["KIOSK-0004"] == ("only_in_onecard", "review")
    assert "no readable reference" in reason(result, "KIOSK-0004")


def test_a_malformed_line_naming_the_reference_goes_to_a_person() -> None:
    text = GBK_STATEMENT.replace(",200.00,", ",2OO.00,")
    parsed = statement(text, "gbk")
    result = reconcile(parsed, [payment("KIOSK-0002", 20000)], now=NOW, grace=GRACE)
    assert result.actions == ()
    assert "statement line 5 has this reference but" in reason(result, "KIOSK-0002")


def test_a_reference_also_on_an_unreadable_line_is_never_credited_automatically() -> None:
    parsed = statement("pay_ref,amount\nK-1,2.00\nK-1,2..00\n")
    result = reconcile(parsed, [payment("K-1", 200)], now=NOW, grace=GRACE)
    assert result.actions == ()
    assert "statement line 3 has this reference but" in reason(result, "K-1")


def test_a_reference_paid_twice_in_the_statement_is_never_credited_automatically() -> None:
    parsed = statement(
        "pay_ref,amount,time\nK-1,2.00,2026-03-04 11:00\nK-1,2.00,2026-03-04 13:00\n"
    )
    result = reconcile(parsed, [payment("K-1", 200)], now=NOW, grace=GRACE)
    assert result.actions == ()
    assert "paid on 2 statement lines (2, 3)" in reason(result, "K-1")


def test_an_abort_the_statement_contradicts_and_a_payment_without_a_card_go_to_a_person() -> None:
    parsed = statement(GBK_STATEMENT, "gbk")
    payments = [
        payment("KIOSK-0001", 120000, "aborted"),
        payment("KIOSK-0002", 20000, person_id=None, card_uid=None),
    ]
    result = reconcile(parsed, payments, now=NOW, grace=GRACE)
    assert result.actions == ()
    assert items_by_ref(result)["KIOSK-0001"] == ("matched", "review")
    assert "aborted in onecard" in reason(result, "KIOSK-0001")
    assert items_by_ref(result)["KIOSK-0002"] == ("matched", "review")
    assert "names no card" in reason(result, "KIOSK-0002")


def test_an_explicit_period_lets_a_quiet_statement_prove_absence() -> None:
    start = datetime(2026, 3, 3, 16, 0, tzinfo=UTC)
    empty = statement("pay_ref,amount\n", period=(start, start + timedelta(days=1)))
    assert empty.period_source == "given"
    result = reconcile(empty, [payment("K-9", 500)], now=NOW, grace=GRACE)
    assert result.actions == (
        Void(
            pay_ref="K-9",
            source_record_id="rec-K-9",
            site="SZ-FUTIAN",
            reason="absent from a statement that covers its time",
        ),
    )
    no_period = reconcile(
        statement("pay_ref,amount\n"), [payment("K-9", 500)], now=NOW, grace=GRACE
    )
    assert no_period.actions == ()


def test_the_report_csv_is_excel_friendly() -> None:
    parsed = statement(GBK_STATEMENT, "gbk")
    result = reconcile(parsed, [payment("DESK-0009", 4000, "committed")], now=NOW, grace=GRACE)
    rows = csv_rows(to_csv(result))
    assert rows[0][:3] == ["支付流水号 pay_ref", "分类 category", "处理 resolution"]
    desk = next(r for r in rows if r[0] == "DESK-0009")
    assert desk[1:6] == ["金额不符 amount differs", "人工处理 review", "50.00", "40.00", "10.00"]


# --- properties ------------------------------------------------------------------------------

REFS = tuple(f"R-{i}" for i in range(6))


@st.composite
def scenario(draw: st.DrawFn) -> tuple[Statement, list[PaymentRecord]]:
    """Per reference: 0-2 statement lines and 0-2 onecard payments (mostly one of each)."""
    lines = ["pay_ref,amount,time,status"]
    payments: list[PaymentRecord] = []
    how_many = st.sampled_from((0, 1, 1, 1, 2))
    for ref in REFS:
        for _ in range(draw(how_many)):
            at = NOON + timedelta(minutes=draw(st.integers(0, 600)))
            fen = draw(st.sampled_from((100, 200)))
            status = draw(st.sampled_from(("成功", "SUCCESS", "成功", "失败", "处理中")))
            lines.append(f"{ref},{format_yuan(fen)},{at.isoformat()},{status}")
        for n in range(draw(how_many)):
            state = draw(st.sampled_from(("prepared", "prepared", "committed", "aborted")))
            payments.append(
                payment(
                    ref,
                    draw(st.sampled_from((100, 200))),
                    state,
                    at=NOON + timedelta(minutes=draw(st.integers(-600, 1000))),
                    record_id=f"rec-{ref}-{n}",
                )
            )
    if draw(st.booleans()):
        lines.append(",1.00,,")  # a line with no readable reference
    period = None
    if draw(st.booleans()):
        period = (NOON - timedelta(hours=6), NOON + timedelta(hours=18))
    return parse_statement("\n".join(lines).encode(), period=period), payments


def apply(actions: tuple[object, ...], payments: list[PaymentRecord]) -> list[PaymentRecord]:
    """What the caller does: credit (commit) or void (abort) the named prepared record."""
    done = {
        a.source_record_id: "committed" if isinstance(a, CreditOnce) else "aborted"
        for a in actions
        if isinstance(a, CreditOnce | Void)
    }
    return [
        msgspec.structs.replace(p, state=done[p.record_id]) if p.record_id in done else p  # type: ignore[arg-type]
        for p in payments
    ]


@settings(max_examples=300)
@given(case=scenario(), data=st.data())
def test_reconciling_is_deterministic_and_idempotent_and_never_credits_a_committed_ref(
    case: tuple[Statement, list[PaymentRecord]], data: st.DataObject
) -> None:
    parsed, payments = case
    first = reconcile(parsed, payments, now=NOW, grace=GRACE)
    for action in first.actions:
        event(type(action).__name__)
    shuffled = data.draw(st.permutations(payments))
    assert msgspec.json.encode(reconcile(parsed, shuffled, now=NOW, grace=GRACE)) == (
        msgspec.json.encode(first)
    )
    assert to_csv(reconcile(parsed, shuffled, now=NOW, grace=GRACE)) == to_csv(first)

    committed = {p.pay_ref for p in payments if p.state == "committed"}
    refs = {ln.pay_ref for ln in parsed.lines} | {p.pay_ref for p in payments}
    assert [i.pay_ref for i in first.items] == sorted(refs)
    assert len({a.pay_ref for a in first.actions}) == len(first.actions)
    for action in first.actions:
        assert action.pay_ref not in committed
        source = next(p for p in payments if p.record_id == action.source_record_id)
        assert source.state == "prepared"
        assert NOW - source.at >= GRACE
        if isinstance(action, CreditOnce):
            paid = [ln for ln in parsed.lines if ln.pay_ref == action.pay_ref]
            assert [ln.amount_fen for ln in paid if ln.status == "success"] == [action.amount_fen]
            assert action.amount_fen == source.amount_fen
    s = first.summary
    assert s.matched + s.amount_differs + s.only_in_statement + s.only_in_onecard == len(refs)
    assert s.ok + s.credit_once + s.void + s.wait + s.review == len(refs)
    assert s.credit_once + s.void == len(first.actions)

    # The caller applies the actions; a re-run (even later) finds nothing more to do.
    after = apply(first.actions, payments)
    for later in (NOW, NOW + timedelta(days=1)):
        again = reconcile(parsed, after, now=later, grace=GRACE)
        assert not {a.pay_ref for a in again.actions} & {a.pay_ref for a in first.actions}
        assert not any(isinstance(a, CreditOnce) and a.pay_ref in committed for a in again.actions)
    assert reconcile(parsed, after, now=NOW, grace=GRACE).actions == ()
