"""Member import, step 2: a table's rows → checked member rows, every problem an :class:`Issue`.

Pure. :func:`find_header` finds the header (English or Chinese column names, see
:data:`ALIASES`; title rows above it are skipped); :func:`check_rows` reads each row into a
:class:`MemberRow` or into the reasons it cannot be one — a bad row never stops the others
from being checked, and duplicates are found in one pass (dicts of first occurrences).

- **Amounts** are yuan with at most 2 decimals (``12.5``, ``¥12.50``, ``1,234.00``,
  ``12.50元``), read by :func:`central.core.amounts.parse_yuan` (never a float); blank is
  0, and 0 ≤ fen ≤ :data:`MAX_OPENING_FEN`.
- **Dates** ``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY年M月D日`` (optionally ``HH:MM[:SS]``) or
  XLSX dates are local to the caller's time zone and become UTC. A date alone in an *end*
  column (``subsidy_expires``, ``period_to``) includes that whole day: it ends at the next
  local midnight.
- **Spreadsheet injection.** A text cell starting with ``=``, ``+``, ``-`` or ``@`` is
  refused ``formula`` (in a number column a well-formed negative number is reported as
  what it is: ``amount_negative``, ``count_invalid``).
- **Card UIDs** are normalised (full-width, lower case, spaces and ``:`` separators) and
  must then match :data:`protocol.messages.CardUid`.
"""

from __future__ import annotations

import functools
import re
import typing
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal

from msgspec import Struct

from central.core.amounts import AmountError, parse_yuan
from central.core.tables import Row
from protocol.messages import CardUid

#: The largest opening balance per purse: ¥100,000.00 (a mistyped amount is caught here).
MAX_OPENING_FEN = 10_000_000
#: Longest id, name, number, department, card type or service name.
MAX_TEXT = 64
#: Most uses of an imported count ticket (as for a ticket sold at a desk).
MAX_TICKET_USES = 10_000
#: How many leading non-blank rows may hold a title instead of the header.
HEADER_SEARCH_ROWS = 10

Field = Literal[
    "person_id",
    "name",
    "number",
    "kind",
    "department",
    "card_uid",
    "card_type",
    "cash",
    "subsidy",
    "subsidy_expires",
    "ticket_service",
    "ticket_count",
    "period_service",
    "period_from",
    "period_to",
]

#: Accepted column names per field, compared after :func:`normalise_header` (NFKC, lower
#: case, spaces and hyphens as ``_``, a trailing unit such as ``(元)`` and ``*`` dropped).
ALIASES: dict[Field, tuple[str, ...]] = {
    "person_id": ("person_id", "personid", "person", "人员编号", "人员id", "工号"),
    "name": ("name", "姓名", "名字", "持卡人"),
    # not "no": a "No." column is usually the row's sequence number (序号)
    "number": ("number", "member_no", "staff_no", "学号", "会员号", "会员编号"),
    "kind": ("kind", "person_kind", "类型", "人员类型", "身份"),
    "department": ("department", "dept", "部门", "所属部门"),
    "card_uid": ("card_uid", "uid", "card", "卡号", "物理卡号", "卡uid"),
    "card_type": ("card_type", "卡类型", "卡类别"),
    "cash": ("cash", "cash_balance", "balance", "现金余额", "余额", "现金"),
    "subsidy": ("subsidy", "subsidy_balance", "补贴余额", "补贴"),
    "subsidy_expires": (
        "subsidy_expires",
        "subsidy_expires_at",
        "subsidy_expiry",
        "补贴有效期",
        "补贴到期日",
        "补贴截止日期",
    ),
    "ticket_service": ("ticket_service", "count_service", "次票项目", "计次票项目"),
    "ticket_count": ("ticket_count", "ticket_uses", "剩余次数", "次数"),
    "period_service": ("period_service", "期票项目", "期限票项目"),
    "period_from": ("period_from", "有效期起", "期票开始"),
    "period_to": ("period_to", "有效期止", "期票结束"),
}
REQUIRED: tuple[Field, ...] = ("person_id", "name")
#: A column that is useless without another one.
NEEDS: tuple[tuple[Field, Field], ...] = (
    ("ticket_service", "ticket_count"),
    ("ticket_count", "ticket_service"),
    ("period_service", "period_to"),
    ("period_to", "period_service"),
    ("period_from", "period_service"),
)
KINDS: dict[str, Literal["staff", "member"]] = {
    "staff": "staff",
    "employee": "staff",
    "员工": "staff",
    "职工": "staff",
    "member": "member",
    "会员": "member",
}

#: Stable reason codes (programs branch on them; the message is for people).
IssueCode = Literal[
    # the file as a whole
    "file_unreadable",
    "encoding_unknown",
    "file_empty",
    "too_many_rows",
    "columns_missing",
    "column_twice",
    "columns_incomplete",
    # one cell or row
    "required",
    "too_long",
    "control_char",
    "formula",
    "extra_cells",
    "amount_invalid",
    "amount_negative",
    "amount_fraction",
    "amount_too_large",
    "date_invalid",
    "period_invalid",
    "period_ended",
    "subsidy_expired",
    "count_invalid",
    "kind_invalid",
    "uid_invalid",
    "ticket_incomplete",
    "duplicate_person",
    "duplicate_uid",
    # against what central holds
    "uid_bound",
    "person_has_card",
    "card_type_unknown",
    "already_imported",
    "opening_conflict",
]


class Issue(Struct, frozen=True, kw_only=True):
    """One problem: where (``line`` 0 = the whole file; ``column`` as the file spells it,
    ``field`` as onecard calls it), a stable ``code``, a message and the offending value."""

    line: int
    code: IssueCode
    message: str
    column: str = ""
    field: str = ""
    value: str = ""


class CountTicket(Struct, frozen=True, kw_only=True):
    """计次票 carried over: ``uses`` left on it."""

    service: str
    uses: int


class PeriodTicket(Struct, frozen=True, kw_only=True):
    """期限票 carried over (UTC; ``valid_from`` None = already valid)."""

    service: str
    valid_from: datetime | None
    valid_to: datetime


class MemberRow(Struct, frozen=True, kw_only=True):
    """One checked row. None = the cell was blank or its column absent."""

    line: int
    person_id: str
    name: str
    number: str | None = None
    kind: Literal["staff", "member"] | None = None
    department: str | None = None
    card_uid: str | None = None
    card_type: str | None = None
    cash_fen: int = 0
    subsidy_fen: int = 0
    subsidy_expires_at: datetime | None = None
    count_ticket: CountTicket | None = None
    period_ticket: PeriodTicket | None = None

    @property
    def has_opening(self) -> bool:
        """The row brings a balance or a ticket (so it posts an ``opening`` entry)."""
        return bool(self.cash_fen or self.subsidy_fen or self.count_ticket or self.period_ticket)


# -- header -----------------------------------------------------------------------------------

_UNIT = re.compile(r"\s*\((?:元|yuan|rmb|cny|¥|fen|分)\)\s*$")
_ALIAS_FIELD: dict[str, Field] = {alias: f for f, names in ALIASES.items() for alias in names}


def normalise_header(label: str) -> str:
    """A column name as looked up in :data:`ALIASES`."""
    text = unicodedata.normalize("NFKC", label).strip().strip("*").strip().lower()
    text = _UNIT.sub("", text)
    return re.sub(r"[\s\-]+", "_", text)


class Header(Struct, frozen=True, kw_only=True):
    """Where the header is and what its columns mean."""

    index: int  # position of the header row in Table.rows
    width: int  # cells in the header row (a data row with more is misaligned)
    columns: dict[str, int]  # field → cell position
    labels: dict[str, str]  # field → the column name as written
    ignored: tuple[str, ...]


def _map_header(row: Row) -> tuple[dict[str, int], dict[str, str], list[str], list[Issue]]:
    columns: dict[str, int] = {}
    labels: dict[str, str] = {}
    ignored: list[str] = []
    issues: list[Issue] = []
    for position, label in enumerate(row.cells):
        if not label:
            continue
        field = _ALIAS_FIELD.get(normalise_header(label))
        if field is None:
            ignored.append(label)
        elif field in columns:
            issues.append(
                Issue(
                    line=row.line,
                    code="column_twice",
                    column=label,
                    field=field,
                    message=f"columns {labels[field]!r} and {label!r} both mean {field}",
                )
            )
        else:
            columns[field], labels[field] = position, label
    return columns, labels, ignored, issues


def find_header(rows: tuple[Row, ...]) -> Header | list[Issue]:
    """The first of the leading rows that names the required columns (rows above it are a
    title); without one, the first row, reported with what it lacks."""
    if not rows:
        return [Issue(line=0, code="file_empty", message="the file holds no rows")]
    found = next(
        (
            index
            for index, row in enumerate(rows[:HEADER_SEARCH_ROWS])
            if all(f in _map_header(row)[0] for f in REQUIRED)
        ),
        None,
    )
    index = found or 0
    row = rows[index]
    columns, labels, ignored, issues = _map_header(row)
    if found is None:
        missing = [f for f in REQUIRED if f not in columns]
        names = "; ".join(f"{f} ({' / '.join(ALIASES[f])})" for f in missing)
        issues.append(
            Issue(
                line=row.line,
                code="columns_missing",
                message=f"required columns missing: {names}",
            )
        )
    for have, lack in NEEDS:
        if have in columns and lack not in columns:
            issues.append(
                Issue(
                    line=row.line,
                    code="columns_incomplete",
                    column=labels[have],
                    field=have,
                    message=f"column {labels[have]!r} ({have}) needs a {lack} column",
                )
            )
    if issues:
        return issues
    return Header(
        index=index,
        width=len(row.cells),
        columns=columns,
        labels=labels,
        ignored=tuple(ignored),
    )


# -- cells → values ---------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
# re.ASCII: \d is 0-9 only (NFKC has already folded full-width digits).
_COUNT = re.compile(r"\d{1,9}", re.ASCII)
_DATE = re.compile(
    r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?)?",
    re.ASCII,
)
_LOOKS_LIKE_FORMULA = "starts with = + - or @, like a spreadsheet formula (leave it empty for none)"
_UID_SEPARATORS = re.compile(r"[\s:]+")
_UID_PATTERN = re.compile(typing.get_args(CardUid)[1].pattern)  # the protocol's own
_EARLIEST, _LATEST = 1970, 2199


@functools.lru_cache(maxsize=4096)  # a file repeats a few dates (expiry, period ends) a lot
def _local_time(text: str, tz: tzinfo, *, end: bool) -> datetime | None:
    """A date (and optional time) in ``tz`` as UTC; a date alone that ends something ends
    at the next local midnight. None if it is not such a date."""
    match = _DATE.fullmatch(unicodedata.normalize("NFKC", text))
    if match is None:
        return None
    year, month, day = int(match[1]), int(match[2]), int(match[3])
    if not _EARLIEST <= year <= _LATEST:
        return None
    try:
        if match[4] is None:
            local = datetime.combine(date(year, month, day), time(0), tzinfo=tz)
            if end:
                local = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=tz)
        else:
            hms = int(match[4]), int(match[5]), int(match[6] or 0)
            local = datetime(year, month, day, *hms, tzinfo=tz)
    except ValueError:
        return None
    return local.astimezone(UTC)


class _Line:
    """Reads one row's cells by field, collecting its issues (never raising)."""

    def __init__(self, row: Row, header: Header, tz: tzinfo) -> None:
        self.row, self.header, self.tz = row, header, tz
        self.issues: list[Issue] = []
        cells = row.cells
        self.values = {f: cells[i] for f, i in header.columns.items() if i < len(cells)}

    def problem(self, field: str, code: IssueCode, message: str, value: str = "") -> None:
        self.issues.append(
            Issue(
                line=self.row.line,
                code=code,
                column=self.header.labels.get(field, ""),
                field=field,
                message=message,
                value=value[:40],
            )
        )

    def raw(self, field: Field) -> str:
        return self.values.get(field, "")

    def text(self, field: Field, *, required: bool = False) -> str | None:
        value = self.raw(field)
        if not value:
            if required:
                self.problem(field, "required", f"{field} is required")
            return None
        if value.startswith(_FORMULA_START):
            self.problem(field, "formula", _LOOKS_LIKE_FORMULA, value)
        elif _CONTROL.search(value):
            self.problem(field, "control_char", "holds a control character", value)
        elif len(value) > MAX_TEXT:
            self.problem(field, "too_long", f"longer than {MAX_TEXT} characters", value)
        else:
            return value
        return None

    def amount(self, field: Field) -> int:
        value = self.raw(field)
        try:
            return parse_yuan(value, cap=MAX_OPENING_FEN, blank=0)
        except AmountError as exc:
            if exc.code == "amount_invalid" and value.startswith(_FORMULA_START):
                self.problem(field, "formula", _LOOKS_LIKE_FORMULA, value)
            else:
                self.problem(field, exc.code, str(exc), value)
            return 0

    def when(self, field: Field, *, end: bool) -> datetime | None:
        value = self.raw(field)
        if not value:
            return None
        at = _local_time(value, self.tz, end=end)
        if at is None and value.startswith(_FORMULA_START):
            self.problem(field, "formula", _LOOKS_LIKE_FORMULA, value)
        elif at is None:
            message = f"not a date YYYY-MM-DD (years {_EARLIEST}-{_LATEST})"
            self.problem(field, "date_invalid", message, value)
        return at

    def count(self, field: Field) -> int | None:
        value = unicodedata.normalize("NFKC", self.raw(field))
        if not value:
            return None
        if _COUNT.fullmatch(value) and 1 <= int(value) <= MAX_TICKET_USES:
            return int(value)
        if value.startswith(_FORMULA_START) and not re.fullmatch(r"-\d+", value, re.ASCII):
            self.problem(field, "formula", _LOOKS_LIKE_FORMULA, value)
        else:
            self.problem(field, "count_invalid", f"not a whole number 1..{MAX_TICKET_USES}", value)
        return None

    def uid(self, field: Field) -> str | None:
        value = self.raw(field)
        if not value:
            return None
        if value.startswith(_FORMULA_START):
            self.problem(field, "formula", _LOOKS_LIKE_FORMULA, value)
            return None
        uid = normal_uid(value)
        if uid is None:
            self.problem(field, "uid_invalid", "not a card UID (4 to 10 bytes in hex)", value)
        return uid

    def kind(self, field: Field) -> Literal["staff", "member"] | None:
        value = self.text(field)
        if value is None:
            return None
        kind = KINDS.get(value.lower())
        if kind is None:
            self.problem(field, "kind_invalid", f"not one of {', '.join(KINDS)}", value)
        return kind


def normal_uid(value: str) -> str | None:
    """``value`` as a protocol card UID (upper-case hex, no separators), None if it is not
    one."""
    uid = _UID_SEPARATORS.sub("", unicodedata.normalize("NFKC", value)).upper()
    return uid if _UID_PATTERN.fullmatch(uid) else None


def _read_member(line: _Line, now: datetime) -> tuple[str | None, str | None, MemberRow | None]:
    """The row's person id and card UID (for the duplicate checks, even when other cells
    are wrong) and its values — None if anything on the row is wrong."""
    person_id = line.text("person_id", required=True)
    name = line.text("name", required=True)
    number = line.text("number")
    kind = line.kind("kind")
    department = line.text("department")
    card_uid = line.uid("card_uid")
    card_type = line.text("card_type")
    cash_fen = line.amount("cash")
    subsidy_fen = line.amount("subsidy")
    subsidy_expires_at = line.when("subsidy_expires", end=True)
    if subsidy_fen and subsidy_expires_at is not None and subsidy_expires_at <= now:
        line.problem(
            "subsidy_expires",
            "subsidy_expired",
            "the subsidy has already expired",
            line.raw("subsidy_expires"),
        )
    count_ticket = _count_ticket(line)
    period_ticket = _period_ticket(line, now)
    extra = sum(1 for cell in line.row.cells[line.header.width :] if cell)
    if extra:
        line.problem(
            "",
            "extra_cells",
            f"{extra} filled cell(s) right of the header's {line.header.width} columns "
            "(an unquoted comma in a value?)",
        )
    if line.issues or person_id is None or name is None:
        return person_id, card_uid, None
    member = MemberRow(
        line=line.row.line,
        person_id=person_id,
        name=name,
        number=number,
        kind=kind,
        department=department,
        card_uid=card_uid,
        card_type=card_type,
        cash_fen=cash_fen,
        subsidy_fen=subsidy_fen,
        subsidy_expires_at=subsidy_expires_at,
        count_ticket=count_ticket,
        period_ticket=period_ticket,
    )
    return person_id, card_uid, member


def _count_ticket(line: _Line) -> CountTicket | None:
    raw_service, raw_uses = line.raw("ticket_service"), line.raw("ticket_count")
    if not raw_service and not raw_uses:
        return None
    service = line.text("ticket_service")
    uses = line.count("ticket_count")
    if not raw_service or not raw_uses:
        missing = "ticket_service" if not raw_service else "ticket_count"
        line.problem(missing, "ticket_incomplete", "a count ticket needs a service and a count")
    if service is None or uses is None:
        return None
    return CountTicket(service=service, uses=uses)


def _period_ticket(line: _Line, now: datetime) -> PeriodTicket | None:
    raw_service, raw_from, raw_to = (
        line.raw("period_service"),
        line.raw("period_from"),
        line.raw("period_to"),
    )
    if not raw_service and not raw_from and not raw_to:
        return None
    service = line.text("period_service")
    valid_from = line.when("period_from", end=False)
    valid_to = line.when("period_to", end=True)
    if not raw_service or not raw_to:
        missing = "period_service" if not raw_service else "period_to"
        line.problem(missing, "ticket_incomplete", "a period ticket needs a service and an end")
    if service is None or valid_to is None:
        return None
    if valid_from is not None and valid_to <= valid_from:
        line.problem("period_to", "period_invalid", "the period ends before it starts", raw_to)
        return None
    if valid_to <= now:
        line.problem("period_to", "period_ended", "the period has already ended", raw_to)
        return None
    return PeriodTicket(service=service, valid_from=valid_from, valid_to=valid_to)


def check_rows(
    rows: Iterable[Row], header: Header, *, tz: tzinfo, now: datetime
) -> Iterator[tuple[MemberRow | None, list[Issue]]]:
    """Each data row checked, in order: its values (None if anything on it is wrong) and
    its issues. A person id or card UID already seen on an earlier line is
    ``duplicate_person`` / ``duplicate_uid`` on the later line."""
    first_of_person: dict[str, int] = {}
    first_of_uid: dict[str, int] = {}
    for row in rows:
        line = _Line(row, header, tz)
        person_id, uid, member = _read_member(line, now)
        if person_id is not None:
            first = first_of_person.setdefault(person_id, row.line)
            if first != row.line:
                message = f"person {person_id} is also on line {first}"
                line.problem("person_id", "duplicate_person", message, person_id)
        if uid is not None:
            first = first_of_uid.setdefault(uid, row.line)
            if first != row.line:
                line.problem(
                    "card_uid", "duplicate_uid", f"card {uid} is also on line {first}", uid
                )
        yield (None if line.issues else member), line.issues
