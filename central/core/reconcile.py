"""Payment reconciliation (对账): a bank or payment-channel statement against onecard. Pure.

:func:`parse_statement` reads a statement CSV (bytes in, values out); :func:`reconcile`
matches it by payment reference against the onecard payments the caller loads
(:class:`PaymentRecord`) and returns a :class:`Reconciliation`: one :class:`Item` per
reference, and the actions it can take on its own (:class:`CreditOnce`, :class:`Void`) as
data for the caller to apply. The caller credits through the ordinary recharge operation,
which refuses a reference already credited (``pay_ref_used``), so applying an action twice
— or racing a kiosk's late commit — never credits twice.

**Categories** (statement vs onecard, by amount): ``matched``, ``amount_differs``,
``only_in_statement``, ``only_in_onecard``. Only statement lines whose status is success
count as payments; failed lines are evidence of absence.

**Resolutions.** ``ok`` (nothing to do), ``credit_once``, ``void``, ``wait`` (not decidable
yet), ``review`` (a person must look; ``reason`` says why). The rules, per reference:

- a *prepared* payment (单边账 candidate: prepared, never committed nor aborted) younger
  than ``grace`` waits — its terminal may still commit;
- older, with exactly one successful statement line of the same amount: **credit once**;
- older, with only failed statement lines, or absent from a statement whose period covers
  it (``slack`` inside either end, as channel and terminal clocks differ): **void** — but
  never while the statement has a line whose reference could not be read (it could be this
  one);
- everything else that disagrees is left for a person: money in the statement that onecard
  never saw, amounts that differ, a reference on two successful lines or on a line that
  could not be read (a bad amount …), a credit the statement does not show, an abort the
  statement contradicts. A *committed* payment is never credited again, whatever the
  statement says.

The caller passes the payments this statement is meant to cover (its channel and period);
cash recharges have no statement. Everything comes out sorted, so the same inputs always
give the same result.

**Statements.** UTF-8 (with or without a BOM), UTF-16 with a BOM, or GB18030/GBK,
detected; comma, tab or semicolon separated. The header row may follow a preamble (account
number, dates …) and is found by its names, English or Chinese (see ``_ALIASES``;
``columns`` maps a field to any other header). Amounts are yuan, parsed as decimals
(``¥1,234.50`` → 123450 fen; more than two decimals is an error). Times without an offset
are local to ``tz``. A bad line is an error naming its line number and the reason, never
an exception; summary lines (合计/总计) are skipped and listed.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from msgspec import Struct

from central.core.clearing import encode_csv, format_yuan
from protocol.messages import MAX_FEN, RechargeMethod

#: Biggest statement accepted (a year of a busy channel is far less).
MAX_STATEMENT_BYTES = 64 << 20
#: How far into the file the header row may be (after a bank's preamble).
HEADER_SEARCH_ROWS = 30

Field = Literal["pay_ref", "amount", "time", "date", "channel", "status"]
FIELDS: tuple[Field, ...] = ("pay_ref", "amount", "time", "date", "channel", "status")
#: Header names per field, in order of preference (compared case-insensitively, spaces
#: removed, full-width brackets folded). The merchant order number (商户订单号) is the
#: reference onecard's kiosks send, so it wins over the channel's own serial number.
# fmt: off
_ALIASES: dict[Field, tuple[str, ...]] = {
    "pay_ref": ("pay_ref", "payref", "payment_reference", "reference", "商户订单号", "商户单号",
                "交易流水号", "支付流水号", "流水号", "订单号", "交易单号", "交易参考号", "参考号"),
    "amount": ("amount", "amount_yuan", "金额", "金额(元)", "交易金额", "交易金额(元)", "订单金额",
               "订单金额(元)", "收入金额", "收入金额(元)", "贷方金额"),
    "time": ("time", "datetime", "timestamp", "at", "交易时间", "支付时间", "付款时间", "完成时间",
             "时间"),
    "date": ("date", "交易日期", "记账日期", "日期"),
    "channel": ("channel", "渠道", "支付渠道", "交易渠道", "支付方式"),
    "status": ("status", "状态", "交易状态", "支付状态"),
}
#: Statement statuses (folded like headers); any other is "unknown", proof of nothing.
_SUCCESS = frozenset({"success", "succeeded", "successful", "ok", "paid", "settled", "completed",
                      "成功", "交易成功", "支付成功", "已支付", "已完成", "完成", "入账", "已入账"})
_FAILED = frozenset({"failed", "fail", "failure", "closed", "cancelled", "canceled", "reversed",
                     "refunded", "voided", "失败", "交易失败", "支付失败", "关闭", "已关闭", "撤销",
                     "已撤销", "退款", "已退款", "冲正", "已冲正"})
#: A row whose first cell is one of these (or starts with a Chinese one) is a total.
_SUMMARY_WORDS = frozenset({"total", "subtotal", "grandtotal", "sum",
                            "合计", "总计", "小计", "汇总"})
# fmt: on
_PAY_REF = re.compile(r"[\x21-\x7e]{1,64}")
_AMOUNT = re.compile(r"-?(?:\d{1,12}(?:\.\d+)?|\.\d+)")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?|(\d{2})(\d{2})(\d{2})")
_TIME_FORMATS = (
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y%m%d %H:%M:%S",
    "%Y%m%d%H%M%S",
    "%Y年%m月%d日 %H:%M:%S",
    "%Y年%m月%d日 %H:%M",
)
_DATE_FORMATS = ("%Y/%m/%d", "%Y%m%d", "%Y年%m月%d日")

LineStatus = Literal["success", "failed", "unknown"]


class StatementError(ValueError):
    """The file as a whole cannot be read as a statement (not one bad line: those are
    :class:`LineIssue` values)."""


class StatementLine(Struct, frozen=True, kw_only=True):
    """A readable statement line. ``at`` is UTC (None if the line has no time of day);
    ``on`` the line's local date when known. ``status`` is ``success`` when the statement
    has no status column."""

    line: int
    pay_ref: str
    amount_fen: int
    at: datetime | None
    on: date | None
    channel: str | None
    status: LineStatus
    raw_status: str | None


class LineIssue(Struct, frozen=True, kw_only=True):
    """A line left out, why, and its reference if that much could be read."""

    line: int
    reason: str
    pay_ref: str | None = None


class Duplicate(Struct, frozen=True, kw_only=True):
    """A reference on more than one line."""

    pay_ref: str
    lines: tuple[int, ...]


class Statement(Struct, frozen=True, kw_only=True):
    """A parsed statement. ``columns`` is the header each field was read from;
    ``period_start``/``period_end`` is what the statement covers — given by the caller
    (``period_source`` "given"), or the span of its lines' times ("lines"), or unknown."""

    encoding: str
    delimiter: str
    header_line: int
    columns: dict[str, str]
    lines: tuple[StatementLine, ...]
    errors: tuple[LineIssue, ...]
    skipped: tuple[LineIssue, ...]
    duplicates: tuple[Duplicate, ...]
    period_start: datetime | None
    period_end: datetime | None
    period_source: Literal["given", "lines"] | None


# --- parsing --------------------------------------------------------------------------------


def parse_statement(
    data: bytes,
    *,
    columns: Mapping[str, str] | None = None,
    tz: str = "Asia/Shanghai",
    period: tuple[datetime, datetime] | None = None,
) -> Statement:
    """Parse a statement CSV. ``columns`` maps fields (``pay_ref``, ``amount``, ``time``,
    ``date``, ``channel``, ``status``) to header names the aliases do not know; ``period``
    is ``[start, end)`` the statement covers, if known (else derived from its lines).
    Raises :class:`StatementError` only for the file as a whole."""
    if len(data) > MAX_STATEMENT_BYTES:
        raise StatementError(f"statement of {len(data)} bytes exceeds {MAX_STATEMENT_BYTES}")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise StatementError(f"unknown time zone {tz!r}") from exc
    if period is not None and not (
        period[0].utcoffset() is not None
        and period[1].utcoffset() is not None
        and period[0] < period[1]
    ):
        raise StatementError("period must be two timezone-aware times, start before end")
    wanted = dict(columns or {})
    unknown = sorted(set(wanted) - set(FIELDS))
    if unknown:
        raise StatementError(f"unknown fields in columns: {', '.join(unknown)}")
    encoding, text = _decode(data)
    if "\x00" in text:
        raise StatementError("the file contains NUL characters: not a text CSV")
    for delimiter in (",", "\t", ";"):
        found = _find_header(text, delimiter, wanted)
        if found is not None:
            break
    else:
        raise StatementError(
            "no header row with a payment reference (pay_ref/商户订单号/交易流水号) and an "
            f"amount (amount/金额) column in the first {HEADER_SEARCH_ROWS} rows"
        )
    header_line, index = found
    lines, errors, skipped = _read_lines(text, delimiter, header_line, index, zone)
    by_ref: dict[str, list[int]] = {}
    for ln in lines:
        by_ref.setdefault(ln.pay_ref, []).append(ln.line)
    duplicates = tuple(
        Duplicate(pay_ref=ref, lines=tuple(nums))
        for ref, nums in sorted(by_ref.items())
        if len(nums) > 1
    )
    start, end, source = _period(lines, zone, period)
    return Statement(
        encoding=encoding,
        delimiter=delimiter,
        header_line=header_line,
        columns={field: name for field, (name, _) in sorted(index.items())},
        lines=tuple(lines),
        errors=tuple(errors),
        skipped=tuple(skipped),
        duplicates=duplicates,
        period_start=start,
        period_end=end,
        period_source=source,
    )


def _decode(data: bytes) -> tuple[str, str]:
    boms = (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    )
    for bom, encoding in boms:
        if data.startswith(bom):
            try:
                return encoding, data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise StatementError(f"not valid {encoding} at byte {exc.start}") from None
    try:
        return "utf-8", data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return "gb18030", data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise StatementError(
            f"neither UTF-8 nor GB18030/GBK (bad byte at offset {exc.start})"
        ) from None


def _rows(text: str, delimiter: str) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(first line number, cells or the csv error) per row; blank rows skipped."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, exc
            if reader.line_num < start:  # the reader cannot move on
                return
            continue
        if any(cell.strip() for cell in row):
            yield start, row


def _fold(name: str) -> str:
    name = name.replace("\ufeff", "").replace("（", "(").replace("）", ")")
    return re.sub(r"\s+", "", name).lower()


def _find_header(
    text: str, delimiter: str, wanted: Mapping[str, str]
) -> tuple[int, dict[Field, tuple[str, int]]] | None:
    for n, (line, row) in enumerate(_rows(text, delimiter)):
        if n >= HEADER_SEARCH_ROWS:
            return None
        if isinstance(row, csv.Error):
            continue
        folded: dict[str, tuple[str, int]] = {}
        for i, cell in enumerate(row):
            folded.setdefault(_fold(cell), (cell.strip(), i))
        index: dict[Field, tuple[str, int]] = {}
        for field in FIELDS:
            names = (wanted[field],) if field in wanted else _ALIASES[field]
            for name in names:
                hit = folded.get(_fold(name))
                if hit is not None:
                    index[field] = hit
                    break
        if "pay_ref" in index and "amount" in index:
            return line, index
    return None


def _read_lines(
    text: str,
    delimiter: str,
    header_line: int,
    index: Mapping[Field, tuple[str, int]],
    zone: ZoneInfo,
) -> tuple[list[StatementLine], list[LineIssue], list[LineIssue]]:
    lines: list[StatementLine] = []
    errors: list[LineIssue] = []
    skipped: list[LineIssue] = []
    for number, row in _rows(text, delimiter):
        if number <= header_line:
            continue
        if isinstance(row, csv.Error):
            errors.append(LineIssue(line=number, reason=f"unreadable CSV: {row}"))
            continue

        def cell(field: Field, row: list[str] = row) -> str:
            at = index.get(field)
            return _clean(row[at[1]]) if at is not None and at[1] < len(row) else ""

        first = next((_clean(c) for c in row if c.strip()), "")
        if _is_summary(first):
            skipped.append(LineIssue(line=number, reason=f"summary line ({first})"))
            continue
        parsed = _line(number, cell, zone)
        if isinstance(parsed, StatementLine):
            lines.append(parsed)
        else:
            errors.append(parsed)
    return lines, errors, skipped


def _is_summary(first_cell: str) -> bool:
    word = _fold(first_cell).rstrip(":：")
    return word in _SUMMARY_WORDS or (not word.isascii() and word[:2] in _SUMMARY_WORDS)


def _clean(cell: str) -> str:
    """A cell without what exports add to keep Excel from mangling numbers: a leading
    backtick or apostrophe (WeChat/Alipay bills), an ``="…"`` wrapper, tabs."""
    text = cell.strip().strip("\t")
    if text.startswith('="') and text.endswith('"') and len(text) >= 3:
        text = text[2:-1]
    return text.lstrip("`'").strip()


def _line(number: int, cell: Callable[[Field], str], zone: ZoneInfo) -> StatementLine | LineIssue:
    ref = cell("pay_ref")
    if not ref:
        return LineIssue(line=number, reason="pay_ref (交易流水号/商户订单号) is empty")
    if not _PAY_REF.fullmatch(ref):
        return LineIssue(
            line=number,
            reason=f"pay_ref {ref[:70]!r} is not 1..64 printable ASCII characters without spaces",
        )
    amount = _fen(_nfkc(cell("amount")))
    if isinstance(amount, str):
        return LineIssue(line=number, reason=amount, pay_ref=ref)
    when = _when(_nfkc(cell("time")), _nfkc(cell("date")), zone)
    if isinstance(when, str):
        return LineIssue(line=number, reason=when, pay_ref=ref)
    raw_status = cell("status") or None
    status: LineStatus = "success"
    if raw_status is not None:
        folded = _fold(raw_status)
        status = "success" if folded in _SUCCESS else "failed" if folded in _FAILED else "unknown"
    return StatementLine(
        line=number,
        pay_ref=ref,
        amount_fen=amount,
        at=when[0],
        on=when[1],
        channel=cell("channel") or None,
        status=status,
        raw_status=raw_status,
    )


def _nfkc(text: str) -> str:
    """Full-width digits, colons and ￥ as their ASCII forms (ASCII is its own)."""
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


def _fen(text: str) -> int | str:
    """Yuan text as fen, or why not (decimals only: no float ever touches money)."""
    if not text:
        return "amount (金额) is empty"
    t = re.sub(r"[\s,，]", "", text)
    for prefix in ("¥", "CNY", "RMB"):
        t = t.removeprefix(prefix)
    t = t.removesuffix("元").removeprefix("+")
    if not _AMOUNT.fullmatch(t):
        return f"amount {text!r} is not a number of yuan"
    try:
        value = Decimal(t)
        if value != value.quantize(Decimal("0.01")):
            return f"amount {text!r} has more than two decimals"
    except InvalidOperation:
        return f"amount {text!r} is not a number of yuan"
    fen = int(value * 100)
    if fen <= 0:
        return f"amount {text!r} is not positive (a refund or reversal is not a payment)"
    if fen > MAX_FEN:
        return f"amount {text!r} exceeds {format_yuan(MAX_FEN)} yuan"
    return fen


def _when(text: str, day_text: str, zone: ZoneInfo) -> tuple[datetime | None, date | None] | str:
    """(UTC time, local date) of a line, or why not. A time of day alone takes its date
    from the date column; a date alone gives no time."""
    if not text and not day_text:
        return None, None
    on: date | None = None
    if day_text:
        on = _date(day_text)
        if on is None:
            return f"date {day_text!r} is not a date"
    if not text:
        return None, on
    clock = _CLOCK.fullmatch(text)
    if clock is not None:
        if on is None:
            return f"time {text!r} has no date (and there is no date column)"
        h, m, s = (
            int(g) for g in (clock[1] or clock[4], clock[2] or clock[5], clock[3] or clock[6] or 0)
        )
        try:
            local = datetime.combine(on, time(h, m, s), tzinfo=zone)
        except ValueError:
            return f"time {text!r} is not a time of day"
        return local.astimezone(UTC), on
    at = _datetime(text, zone)
    if at is None:
        only = _date(text)
        if only is not None:
            return None, only
        return f"time {text!r} is not a date and time"
    return at.astimezone(UTC), at.astimezone(zone).date()


def _datetime(text: str, zone: ZoneInfo) -> datetime | None:
    """An ISO 8601 time (an offset, if any, is kept) or one of the usual local formats."""
    if ":" in text:  # a bare date is a date, not midnight
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return at if at.utcoffset() is not None else at.replace(tzinfo=zone)
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=zone)
        except ValueError:
            continue
    return None


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).date()
        except ValueError:
            continue
    return None


def _period(
    lines: Sequence[StatementLine], zone: ZoneInfo, given: tuple[datetime, datetime] | None
) -> tuple[datetime | None, datetime | None, Literal["given", "lines"] | None]:
    if given is not None:
        return given[0].astimezone(UTC), given[1].astimezone(UTC), "given"
    starts: list[datetime] = []
    ends: list[datetime] = []
    for ln in lines:
        if ln.at is not None:
            starts.append(ln.at)
            ends.append(ln.at)
        elif ln.on is not None:
            # A date-only line: the statement covers that whole local day.
            starts.append(datetime.combine(ln.on, time(0), tzinfo=zone).astimezone(UTC))
            nxt = ln.on + timedelta(days=1)
            ends.append(datetime.combine(nxt, time(0), tzinfo=zone).astimezone(UTC))
    if not starts:
        return None, None, None
    return min(starts), max(ends), "lines"


# --- reconciling ----------------------------------------------------------------------------

PaymentState = Literal["committed", "prepared", "aborted"]
Category = Literal["matched", "amount_differs", "only_in_statement", "only_in_onecard"]
Resolution = Literal["ok", "credit_once", "void", "wait", "review"]


class PaymentRecord(Struct, frozen=True, kw_only=True):
    """A payment as onecard knows it. ``state``: ``committed`` (credited), ``prepared``
    (a kiosk's phase 1 with neither commit nor abort: a 单边账 candidate) or ``aborted``.
    ``record_id`` is the record it is known by (the prepare, or the ledger entry of a desk
    recharge); ``related_ids`` any others (commit, abort)."""

    pay_ref: str
    site: str | None
    person_id: str | None
    card_uid: str | None
    amount_fen: int
    state: PaymentState
    record_id: str
    at: datetime
    method: RechargeMethod | None = None
    related_ids: tuple[str, ...] = ()


class CreditOnce(Struct, frozen=True, kw_only=True, tag="credit_once", tag_field="action"):
    """Credit ``amount_fen`` under ``pay_ref`` to the card (or person) of the prepared
    payment ``source_record_id``: the statement's ``statement_line`` proves the payment.
    Apply through the recharge operation (idempotent by ``pay_ref``)."""

    pay_ref: str
    person_id: str | None
    card_uid: str | None
    amount_fen: int
    source_record_id: str
    site: str | None
    method: RechargeMethod | None
    statement_line: int


class Void(Struct, frozen=True, kw_only=True, tag="void", tag_field="action"):
    """Close the prepared payment ``source_record_id`` as never paid (``reason``)."""

    pay_ref: str
    source_record_id: str
    site: str | None
    reason: str


Action = CreditOnce | Void


class Item(Struct, frozen=True, kw_only=True):
    """One payment reference: what each side has, the category and the resolution."""

    pay_ref: str
    category: Category
    resolution: Resolution
    reason: str
    statement_fen: int | None
    onecard_fen: int | None
    onecard_state: PaymentState | None
    statement_lines: tuple[int, ...]
    statement_at: datetime | None
    onecard_at: datetime | None
    record_id: str | None
    site: str | None
    person_id: str | None
    card_uid: str | None


class Summary(Struct, frozen=True, kw_only=True):
    """Counts per category and resolution, and totals in fen: ``statement_fen`` (successful
    lines), ``onecard_fen`` (committed payments), ``credit_fen`` (the credits proposed)."""

    statement_lines: int
    statement_errors: int
    statement_fen: int
    onecard_payments: int
    onecard_fen: int
    matched: int
    amount_differs: int
    only_in_statement: int
    only_in_onecard: int
    ok: int
    credit_once: int
    void: int
    wait: int
    review: int
    credit_fen: int


class Reconciliation(Struct, frozen=True, kw_only=True):
    """The outcome of :func:`reconcile` (items and actions sorted by reference)."""

    now: datetime
    grace_s: int
    period_start: datetime | None
    period_end: datetime | None
    items: tuple[Item, ...]
    actions: tuple[Action, ...]
    summary: Summary


def reconcile(
    statement: Statement,
    payments: Iterable[PaymentRecord],
    *,
    now: datetime,
    grace: timedelta,
    slack: timedelta = timedelta(minutes=15),
) -> Reconciliation:
    """Match ``statement`` against ``payments`` by reference (rules: module docstring)."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    by_ref_lines: dict[str, list[StatementLine]] = {}
    for ln in statement.lines:
        by_ref_lines.setdefault(ln.pay_ref, []).append(ln)
    by_ref_pay: dict[str, list[PaymentRecord]] = {}
    for p in payments:
        by_ref_pay.setdefault(p.pay_ref, []).append(p)
    context = _Context(
        now=now,
        grace=grace,
        start=None if statement.period_start is None else statement.period_start + slack,
        end=None if statement.period_end is None else statement.period_end - slack,
        unreadable=sum(1 for e in statement.errors if e.pay_ref is None),
        malformed={e.pay_ref: e for e in statement.errors if e.pay_ref is not None},
    )
    items: list[Item] = []
    actions: list[Action] = []
    for ref in sorted(by_ref_lines.keys() | by_ref_pay.keys()):
        item, action = _one(ref, by_ref_lines.get(ref, []), by_ref_pay.get(ref, []), context)
        items.append(item)
        if action is not None:
            actions.append(action)
    committed = [p for ps in by_ref_pay.values() for p in ps if p.state == "committed"]
    return Reconciliation(
        now=now.astimezone(UTC),
        grace_s=int(grace.total_seconds()),
        period_start=statement.period_start,
        period_end=statement.period_end,
        items=tuple(items),
        actions=tuple(actions),
        summary=Summary(
            statement_lines=len(statement.lines),
            statement_errors=len(statement.errors),
            statement_fen=sum(ln.amount_fen for ln in statement.lines if ln.status == "success"),
            onecard_payments=sum(len(ps) for ps in by_ref_pay.values()),
            onecard_fen=sum(p.amount_fen for p in committed),
            matched=sum(1 for i in items if i.category == "matched"),
            amount_differs=sum(1 for i in items if i.category == "amount_differs"),
            only_in_statement=sum(1 for i in items if i.category == "only_in_statement"),
            only_in_onecard=sum(1 for i in items if i.category == "only_in_onecard"),
            ok=sum(1 for i in items if i.resolution == "ok"),
            credit_once=sum(1 for i in items if i.resolution == "credit_once"),
            void=sum(1 for i in items if i.resolution == "void"),
            wait=sum(1 for i in items if i.resolution == "wait"),
            review=sum(1 for i in items if i.resolution == "review"),
            credit_fen=sum(a.amount_fen for a in actions if isinstance(a, CreditOnce)),
        ),
    )


class _Context(Struct, frozen=True, kw_only=True):
    now: datetime
    grace: timedelta
    start: datetime | None  # the covered period, slack already taken off both ends
    end: datetime | None
    unreadable: int
    malformed: dict[str, LineIssue]

    def covers(self, at: datetime) -> bool:
        return self.start is not None and self.end is not None and self.start <= at <= self.end


_STATE_ORDER: dict[PaymentState, int] = {"committed": 0, "prepared": 1, "aborted": 2}


def _one(
    ref: str, lines: list[StatementLine], records: list[PaymentRecord], ctx: _Context
) -> tuple[Item, Action | None]:
    lines = sorted(lines, key=lambda ln: ln.line)
    paid = [ln for ln in lines if ln.status == "success"]
    failed = [ln for ln in lines if ln.status == "failed"]
    unknown = [ln for ln in lines if ln.status == "unknown"]
    records = sorted(records, key=lambda p: (_STATE_ORDER[p.state], p.at, p.record_id))
    rec = records[0] if records else None
    statement_fen = sum(ln.amount_fen for ln in paid) if paid else None

    category: Category
    if rec is None:
        category = "only_in_statement"
    elif not paid:
        category = "only_in_onecard"
    elif statement_fen == rec.amount_fen:
        category = "matched"
    else:
        category = "amount_differs"

    resolution, reason, action = _resolve(ref, rec, records, paid, failed, unknown, category, ctx)
    shown = paid or lines
    item = Item(
        pay_ref=ref,
        category=category,
        resolution=resolution,
        reason=reason,
        statement_fen=statement_fen,
        onecard_fen=None if rec is None else rec.amount_fen,
        onecard_state=None if rec is None else rec.state,
        statement_lines=tuple(ln.line for ln in lines),
        statement_at=shown[0].at if shown else None,
        onecard_at=None if rec is None else rec.at.astimezone(UTC),
        record_id=None if rec is None else rec.record_id,
        site=None if rec is None else rec.site,
        person_id=None if rec is None else rec.person_id,
        card_uid=None if rec is None else rec.card_uid,
    )
    return item, action


def _resolve(  # noqa: PLR0917 - one private step, its arguments are the facts of one reference
    ref: str,
    rec: PaymentRecord | None,
    records: list[PaymentRecord],
    paid: list[StatementLine],
    failed: list[StatementLine],
    unknown: list[StatementLine],
    category: Category,
    ctx: _Context,
) -> tuple[Resolution, str, Action | None]:
    if len(paid) > 1:
        nums = ", ".join(str(ln.line) for ln in paid)
        return "review", f"paid on {len(paid)} statement lines ({nums})", None
    committed = sum(1 for p in records if p.state == "committed")
    if committed > 1:
        return "review", f"credited {committed} times in onecard", None
    if committed == 0 and len(records) > 1:
        return "review", f"{len(records)} onecard payments share this reference", None
    if rec is None:
        if paid:
            return (
                "review",
                "money arrived that onecard never saw: find the card, credit by hand",
                None,
            )
        if unknown:
            return "review", f"statement status {unknown[0].raw_status!r} is not understood", None
        return "ok", "failed in the channel and unknown to onecard", None
    paid_fen = sum(ln.amount_fen for ln in paid)
    amounts = f"onecard {format_yuan(rec.amount_fen)}, statement {format_yuan(paid_fen)}"
    if rec.state == "committed":
        if category == "matched":
            return "ok", "credited once and paid", None
        if category == "amount_differs":
            return "review", f"amounts differ: {amounts}", None
        if failed:
            return "review", "credited, but the channel reports the payment failed", None
        if ctx.covers(rec.at):
            return "review", "credited, but the statement has no such payment", None
        return "wait", "outside the statement's period: check it against the next one", None
    if rec.state == "aborted":
        if paid:
            return "review", "aborted in onecard, but the statement shows the money taken", None
        return "ok", "aborted and not paid", None
    # prepared: the 单边账 candidates
    age = ctx.now - rec.at
    if age < ctx.grace:
        return "wait", f"prepared {_minutes(age)} ago; its terminal may still commit", None
    if ref in ctx.malformed:
        bad = ctx.malformed[ref]
        return "review", f"statement line {bad.line} has this reference but: {bad.reason}", None
    if category == "matched":
        if rec.person_id is None and rec.card_uid is None:
            return "review", "paid, but the prepared payment names no card or person", None
        return (
            "credit_once",
            f"paid (statement line {paid[0].line}), prepared and never committed",
            CreditOnce(
                pay_ref=ref,
                person_id=rec.person_id,
                card_uid=rec.card_uid,
                amount_fen=rec.amount_fen,
                source_record_id=rec.record_id,
                site=rec.site,
                method=rec.method,
                statement_line=paid[0].line,
            ),
        )
    if category == "amount_differs":
        return "review", f"amounts differ: {amounts}", None
    if unknown:
        return "review", f"statement status {unknown[0].raw_status!r} is not understood", None
    if failed:
        reason = f"the channel reports the payment failed (line {failed[0].line})"
        return "void", reason, _void(ref, rec, reason)
    if not ctx.covers(rec.at):
        return "review", "past its grace, but outside the statement's period", None
    if ctx.unreadable:
        return (
            "review",
            f"absent from the statement, but {ctx.unreadable} line(s) have no readable reference",
            None,
        )
    reason = "absent from a statement that covers its time"
    return "void", reason, _void(ref, rec, reason)


def _void(ref: str, rec: PaymentRecord, reason: str) -> Void:
    return Void(pay_ref=ref, source_record_id=rec.record_id, site=rec.site, reason=reason)


def _minutes(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)} min"


# --- export ---------------------------------------------------------------------------------

_CATEGORY_LABELS: dict[Category, str] = {
    "matched": "已匹配 matched",
    "amount_differs": "金额不符 amount differs",
    "only_in_statement": "对账单单边 only in statement",
    "only_in_onecard": "一卡通单边 only in onecard",
}
_RESOLUTION_LABELS: dict[Resolution, str] = {
    "ok": "无需处理 ok",
    "credit_once": "自动补记 credit once",
    "void": "自动作废 void",
    "wait": "待定 wait",
    "review": "人工处理 review",
}


def _opt_yuan(fen: int | None) -> str:
    return "" if fen is None else format_yuan(fen)


def _iso(at: datetime | None) -> str:
    return "" if at is None else at.isoformat().replace("+00:00", "Z")


def to_csv(result: Reconciliation) -> bytes:
    """The reconciliation report, one row per reference (UTF-8 with BOM, CRLF)."""
    header = [
        "支付流水号 pay_ref",
        "分类 category",
        "处理 resolution",
        "对账单金额(元) statement_yuan",
        "一卡通金额(元) onecard_yuan",
        "差额(元) difference_yuan",
        "一卡通状态 onecard_state",
        "站点 site",
        "人员 person_id",
        "卡号 card_uid",
        "对账单行号 statement_lines",
        "对账单时间 statement_at",
        "一卡通时间 onecard_at",
        "记录号 record_id",
        "原因 reason",
    ]
    rows = (
        [
            i.pay_ref,
            _CATEGORY_LABELS[i.category],
            _RESOLUTION_LABELS[i.resolution],
            _opt_yuan(i.statement_fen),
            _opt_yuan(i.onecard_fen),
            _opt_yuan(
                None
                if i.statement_fen is None or i.onecard_fen is None
                else i.statement_fen - i.onecard_fen
            ),
            i.onecard_state or "",
            i.site or "",
            i.person_id or "",
            i.card_uid or "",
            " ".join(str(n) for n in i.statement_lines),
            _iso(i.statement_at),
            _iso(i.onecard_at),
            i.record_id or "",
            i.reason,
        ]
        for i in result.items
    )
    return encode_csv(header, rows)


def issues_csv(statement: Statement) -> bytes:
    """The lines a statement left out (errors, skipped summaries, duplicates), by line:
    the dry-run report an operator fixes the file from."""
    rows: list[tuple[int, str, str, str]] = [
        *((e.line, "错误 error", e.pay_ref or "", e.reason) for e in statement.errors),
        *((s.line, "跳过 skipped", "", s.reason) for s in statement.skipped),
        *(
            (n, "重复 duplicate", d.pay_ref, f"on lines {' '.join(map(str, d.lines))}")
            for d in statement.duplicates
            for n in d.lines
        ),
    ]
    return encode_csv(["行号 line", "类型 kind", "支付流水号 pay_ref", "原因 reason"], sorted(rows))
