"""Payment statements (对账单): a bank's or payment channel's CSV → :class:`Statement`. Pure.

:func:`parse_statement` takes the file's bytes and returns its readable lines
(:class:`StatementLine`), the lines it could not read, each with its line number and why
(:class:`LineIssue`), the summary lines it skipped and the references on more than one
line; only a file that is no statement at all raises (:class:`StatementError`).
:mod:`central.core.reconcile` matches a statement against onecard's payments (and
re-exports everything here).

UTF-8 (with or without a BOM), UTF-16 with a BOM, or GB18030/GBK, detected as for any
uploaded table (:func:`central.core.tables.decode_text`); comma, tab or semicolon
separated. The rows are read here rather than by :func:`~central.core.tables.read_table`:
a row the CSV reader chokes on is one bad line, not a failed file, and each delimiter is
tried until one gives a header. The header row may follow a preamble (account number,
dates …) and is found by its names, English or Chinese (see ``_ALIASES``; ``columns`` maps
a field to any other header). Cells lose what exports add to keep Excel off them
(WeChat/Alipay backticks, ``="…"``). Amounts are yuan, read by
:func:`central.core.amounts.parse_yuan` (``¥1,234.50`` → 123450 fen; more than two
decimals is an error). Times without an offset are local to ``tz``. A bad line is an error
naming its line number and the reason, never an exception; summary lines (合计/总计) are
skipped and listed.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from msgspec import Struct

from central.core.amounts import AmountCode, AmountError, format_yuan, parse_yuan
from central.core.tables import TableProblem, decode_text
from protocol.messages import MAX_FEN

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
_SEPARATORS = re.compile(r"[\s,]+")
_NOT_POSITIVE = "is not positive (a refund or reversal is not a payment)"
#: Why an amount is refused, by :class:`~central.core.amounts.AmountError` code.
_REFUSED: dict[AmountCode, str] = {
    "amount_invalid": "is not a number of yuan",
    "amount_negative": _NOT_POSITIVE,
    "amount_fraction": "has more than two decimals",
    "amount_too_large": f"exceeds {format_yuan(MAX_FEN)} yuan",
}
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
    decoded = decode_text(data)
    if isinstance(decoded, TableProblem):
        raise StatementError(decoded.message)
    text, encoding = decoded
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
    """Yuan text as fen, or why not: a payment is positive and at most :data:`MAX_FEN`.
    Statements are looser than :func:`~central.core.amounts.parse_yuan`: spaces and commas
    anywhere are dropped, and a leading ``+`` is allowed."""
    if not text:
        return "amount (金额) is empty"
    try:
        fen = parse_yuan(_SEPARATORS.sub("", text).removeprefix("+"), cap=MAX_FEN)
    except AmountError as exc:
        return f"amount {text!r} {_REFUSED[exc.code]}"
    return fen if fen else f"amount {text!r} {_NOT_POSITIVE}"


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
