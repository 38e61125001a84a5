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

**Statements** are read by :func:`~central.core.statements.parse_statement` (encodings,
headers, amounts, times: see :mod:`central.core.statements`); its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from msgspec import Struct

from central.core.amounts import format_yuan
from central.core.clearing_export import encode_csv
from central.core.statements import (
    FIELDS,
    HEADER_SEARCH_ROWS,
    MAX_STATEMENT_BYTES,
    Duplicate,
    Field,
    LineIssue,
    LineStatus,
    Statement,
    StatementError,
    StatementLine,
    parse_statement,
)
from protocol.messages import RechargeMethod

__all__ = [
    "FIELDS",
    "HEADER_SEARCH_ROWS",
    "MAX_STATEMENT_BYTES",
    "Action",
    "Category",
    "CreditOnce",
    "Duplicate",
    "Field",
    "Item",
    "LineIssue",
    "LineStatus",
    "PaymentRecord",
    "PaymentState",
    "Reconciliation",
    "Resolution",
    "Statement",
    "StatementError",
    "StatementLine",
    "Summary",
    "Void",
    "issues_csv",
    "parse_statement",
    "reconcile",
    "to_csv",
]

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
