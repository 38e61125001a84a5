"""Daily clearing, settlement, payment reconciliation and 单边账 detection against central's
store: the shell around :mod:`central.core.clearing` and :mod:`central.core.reconcile`.

- **Clearing**: a site-day's ledger entries (and HQ's, ``site`` None) are loaded in the
  site's business-day window — its time zone from the site policy, the cut-off hour from
  HQ's ``clearing`` setting — and cleared. The report is stored per (site, day); computing
  the day again gives the same digest, or, when late offline records have arrived since, a
  new *revision* that says what changed (:func:`refresh` does this for every stored day).
- **Reconciliation**: a statement is matched against onecard's payments (kiosk recharge
  records and ledger recharges with a payment reference, in the statement's period); an
  approved run credits a proven 单边账 once (ledger key ``recon:{pay_ref}``, and a payment
  reference is unique in the ledger) or voids an unproven one, and resolves its anomaly.
- **单边账**: :func:`flag_uncommitted` raises a ``recharge_uncommitted`` anomaly for every
  kiosk recharge prepared more than a while ago that was neither committed nor aborted.

Every function runs inside a store operation.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from central.core.clearing import (
    ENTRY_KINDS,
    ClearingEntry,
    DayReport,
    Settlement,
    SiteDay,
    clear_day,
    day_window,
    revise,
    settle,
)
from central.core.effects import AuditEntry, Posting
from central.core.reconcile import (
    CreditOnce,
    PaymentRecord,
    PaymentState,
    Reconciliation,
    Void,
    parse_statement,
    reconcile,
)
from central.ingest import anomaly
from central.operations import load_card, load_payment, post, write_audit
from edge_agent.adapters.sqlite_store import now_ms
from protocol.messages import (
    RechargeAbort,
    RechargeCommit,
    RechargePrepare,
    decode_record,
)

_json = msgspec.json.Encoder()
_report = msgspec.json.Decoder(DayReport)
_site_day = msgspec.json.Decoder(SiteDay)
_RECHARGE_KINDS = ("recharge.prepare", "recharge.commit", "recharge.abort")
#: A kiosk recharge prepared this long ago, neither committed nor aborted, is a 单边账.
UNCOMMITTED_AFTER = timedelta(minutes=30)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _at(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, UTC)


# -- configuration ----------------------------------------------------------------------------


def clearing_config(conn: sqlite3.Connection, site: str | None) -> SiteDay:
    """The business day of ``site`` (HQ's for None): the site policy's time zone and HQ's
    cut-off hour (setting ``clearing``; midnight until set)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'clearing'").fetchone()
    base = SiteDay() if row is None else _site_day.decode(row[0])
    if site is None:
        return base
    policy = conn.execute(
        "SELECT json_extract(data, '$.timezone') FROM master"
        " WHERE scope = ? AND entity = 'policy' AND key = 'policy'",
        (site,),
    ).fetchone()
    if policy is None or not policy[0]:
        return base
    return SiteDay(timezone=str(policy[0]), cutoff_hour=base.cutoff_hour)


def set_clearing_config(
    conn: sqlite3.Connection,
    whole: SiteDay | None = None,
    *,
    cutoff_hour: int | None = None,
    timezone: str | None = None,
    operator: str = "-",
    source: str = "hq:cli",
) -> SiteDay:
    """Change HQ's time zone (its own desk, and times typed at HQ) and/or the cut-off
    hour of every site's business day; what is not given is kept. Audited."""
    before = clearing_config(conn, None)
    if whole is not None:
        timezone, cutoff_hour = whole.timezone, whole.cutoff_hour
    config = SiteDay(
        timezone=before.timezone if timezone is None else timezone,
        cutoff_hour=before.cutoff_hour if cutoff_hour is None else cutoff_hour,
    )
    write_audit(
        conn,
        AuditEntry(
            request_id=f"clearing.config:{now_ms()}",
            operator=operator,
            source=source,
            action="clearing.config",
            target="settings:clearing",
            at=datetime.now(UTC),
            before={"timezone": before.timezone, "cutoff_hour": before.cutoff_hour},
            after={"timezone": config.timezone, "cutoff_hour": config.cutoff_hour},
        ),
    )
    conn.execute(
        "INSERT INTO settings (key, value) VALUES ('clearing', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (_json.encode(config).decode(),),
    )
    return config


# -- clearing ---------------------------------------------------------------------------------

_ENTRY_SQL = (
    "SELECT l.record_id, l.id, l.kind, l.site, l.person_id, l.at_ms, l.created_ms,"
    " l.cash_fen, l.subsidy_fen, l.deposit_fen, l.ticket_uses, l.method, l.ref,"
    " r.site AS for_site"
    " FROM ledger l LEFT JOIN records r ON r.id = l.ref"
    " WHERE l.at_ms >= ? AND l.at_ms < ?"
)


def day_entries(
    conn: sqlite3.Connection, site: str | None, day: date, config: SiteDay
) -> list[ClearingEntry]:
    """The ledger entries of ``site``'s business day ``day`` (and adjustments made
    elsewhere for its purchases)."""
    start, end = day_window(day, config.timezone, config.cutoff_hour)
    if site is None:
        rows = conn.execute(_ENTRY_SQL + " AND l.site IS NULL", (_ms(start), _ms(end)))
    else:
        rows = conn.execute(
            _ENTRY_SQL + " AND (l.site = ? OR r.site = ?)", (_ms(start), _ms(end), site, site)
        )
    return [e for row in rows.fetchall() if (e := _entry(conn, row)) is not None]


def _entry(conn: sqlite3.Connection, row: tuple[Any, ...]) -> ClearingEntry | None:
    (record_id, ledger_id, kind, site, person, at_ms, created_ms, cash, subsidy, deposit, uses,
     method, ref, for_site) = row  # fmt: skip
    if kind not in ENTRY_KINDS:
        return None
    operator = None
    if kind in {"correction", "refund"} and record_id and not str(record_id).startswith("op:"):
        # A site's own correction or refund record names its original and its operator.
        payload = conn.execute("SELECT payload FROM records WHERE id = ?", (record_id,)).fetchone()
        if payload is not None:
            record = decode_record(payload[0])
            ref = getattr(record, "original_id", ref)
            operator = getattr(record, "operator", None)
            found = conn.execute("SELECT site FROM records WHERE id = ?", (ref,)).fetchone()
            for_site = found[0] if found else for_site
    elif record_id and str(record_id).startswith("op:"):
        found = conn.execute(
            "SELECT operator FROM audit WHERE request_id = ? AND outcome = 'accepted'",
            (str(record_id).removeprefix("op:").split(":")[0],),
        ).fetchone()
        operator = found[0] if found else None
    return ClearingEntry(
        entry_id=str(record_id or f"ledger:{ledger_id}"),
        kind=kind,
        site=site,
        person_id=person,
        at=_at(at_ms),
        received_at=_at(created_ms or at_ms),
        cash_fen=cash,
        subsidy_fen=subsidy,
        deposit_fen=deposit,
        ticket_uses=uses,
        method=method,
        for_site=for_site if kind in {"correction", "refund"} else None,
        ref=ref,
        operator=operator,
    )


def stored_report(conn: sqlite3.Connection, site: str | None, day: date) -> DayReport | None:
    """The day's report as last stored."""
    row = conn.execute(
        "SELECT report FROM clearing_reports WHERE site = ? AND day = ?",
        (site or "", day.isoformat()),
    ).fetchone()
    return None if row is None else _report.decode(row[0])


def clear(conn: sqlite3.Connection, site: str | None, day: date) -> DayReport:
    """Clear ``site``'s ``day`` now: the stored report if nothing changed, else a new
    revision (stored)."""
    config = clearing_config(conn, site)
    fresh = clear_day(site, day, day_entries(conn, site, day, config), config)
    previous = stored_report(conn, site, day)
    report = revise(previous, fresh)
    if report is not previous:
        conn.execute(
            "INSERT INTO clearing_reports (site, day, revision, digest, report, computed_ms)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (site, day) DO UPDATE SET"
            " revision = excluded.revision, digest = excluded.digest,"
            " report = excluded.report, computed_ms = excluded.computed_ms",
            (
                site or "",
                day.isoformat(),
                report.revision,
                report.digest,
                _json.encode(report).decode(),
                now_ms(),
            ),
        )
    return report


def clearing_sites(conn: sqlite3.Connection) -> list[str | None]:
    """Every registered site, then HQ (None)."""
    sites: list[str | None] = [
        row[0] for row in conn.execute("SELECT id FROM sites ORDER BY id").fetchall()
    ]
    return [*sites, None]


def clear_all(conn: sqlite3.Connection, day: date) -> list[DayReport]:
    """Every site's (and HQ's) report of ``day``."""
    return [clear(conn, site, day) for site in clearing_sites(conn)]


def refresh(
    conn: sqlite3.Connection, *, days: int = 35, now: datetime | None = None
) -> list[DayReport]:
    """Recompute every stored report of the last ``days`` business days whose entries
    changed (late offline records): returns the new revisions."""
    since = ((now or datetime.now(UTC)) - timedelta(days=days + 1)).date().isoformat()
    revised = []
    for site, day_text, revision in conn.execute(
        "SELECT site, day, revision FROM clearing_reports WHERE day >= ? ORDER BY day, site",
        (since,),
    ).fetchall():
        report = clear(conn, site or None, date.fromisoformat(day_text))
        if report.revision != revision:
            revised.append(report)
    return revised


def settlement(conn: sqlite3.Connection, first: date, last: date) -> Settlement:
    """通存通兑 over ``first``..``last`` (every site and HQ; each day cleared now)."""
    reports: list[DayReport] = []
    day = first
    while day <= last:
        reports.extend(clear_all(conn, day))
        day += timedelta(days=1)
    return settle(reports)


# -- payments ---------------------------------------------------------------------------------


def payments_between(
    conn: sqlite3.Connection,
    start: datetime,
    end: datetime,
    *,
    refs: frozenset[str] | None = None,
) -> list[PaymentRecord]:
    """onecard's payments with a reference between ``start`` and ``end``: kiosk recharges
    (prepared, committed or aborted) and recharges in the ledger (HQ, desks, reconciled).
    With ``refs``: only those references, from ``start`` to ``end`` whatever their time."""
    margin = int(timedelta(days=2).total_seconds() * 1000)  # records reach HQ late
    kiosk: dict[str, dict[str, Any]] = {}
    for (payload,) in conn.execute(
        "SELECT payload FROM records WHERE kind IN"
        " ('recharge.prepare', 'recharge.commit', 'recharge.abort')"
        " AND received_ms >= ? AND received_ms < ?",
        (_ms(start) - margin, _ms(end) + margin),
    ).fetchall():
        record = decode_record(payload)
        if isinstance(record, RechargePrepare | RechargeCommit | RechargeAbort):
            kiosk.setdefault(record.pay_ref, {})[type(record).__name__] = record
    out: dict[str, PaymentRecord] = {}
    for ref, found in kiosk.items():
        prepared = found.get("RechargePrepare")
        first = prepared or found.get("RechargeCommit") or found.get("RechargeAbort")
        if first is None or (refs is None and not start <= first.at < end):
            continue
        if refs is not None and ref not in refs:
            continue
        out[ref] = _kiosk_payment(conn, ref, found)
    for ref, person, cash, record_id, site, at_ms, method, uid in conn.execute(
        "SELECT pay_ref, person_id, cash_fen, record_id, site, at_ms, method, card_uid"
        " FROM ledger WHERE pay_ref IS NOT NULL AND at_ms >= ? AND at_ms < ?",
        (_ms(start), _ms(end)),
    ).fetchall():
        if ref not in out and (refs is None or ref in refs):
            out[ref] = PaymentRecord(
                pay_ref=ref,
                site=site,
                person_id=person,
                card_uid=uid,
                amount_fen=cash,
                state="committed",
                record_id=str(record_id),
                at=_at(at_ms),
                method=method,
            )
    return sorted(out.values(), key=lambda p: p.pay_ref)


def payments_named(conn: sqlite3.Connection, refs: Iterable[str]) -> list[PaymentRecord]:
    """The payments with these references wherever they are in time (ledger only: kiosk
    records outside a statement's period are found by :func:`payments_between`)."""
    out = []
    for ref in refs:
        used = load_payment(conn, ref)
        if used is not None:
            row = conn.execute(
                "SELECT site, method, card_uid FROM ledger WHERE pay_ref = ?", (ref,)
            ).fetchone()
            out.append(
                PaymentRecord(
                    pay_ref=ref,
                    site=row[0],
                    person_id=used.person_id,
                    card_uid=row[2],
                    amount_fen=used.amount_fen,
                    state="committed",
                    record_id=used.entry_id,
                    at=used.at,
                    method=row[1],
                )
            )
    return out


def _kiosk_payment(conn: sqlite3.Connection, ref: str, found: dict[str, Any]) -> PaymentRecord:
    prepared: RechargePrepare | None = found.get("RechargePrepare")
    commit: RechargeCommit | None = found.get("RechargeCommit")
    abort: RechargeAbort | None = found.get("RechargeAbort")
    credited = load_payment(conn, ref)
    voided = conn.execute(
        "SELECT 1 FROM payment_resolutions WHERE pay_ref = ? AND resolution = 'void'", (ref,)
    ).fetchone()
    state: PaymentState
    if credited is not None or commit is not None:
        state = "committed"
    elif abort is not None or voided is not None:
        state = "aborted"
    else:
        state = "prepared"
    main = prepared or commit or abort
    if main is None:  # pragma: no cover - the caller passes at least one record
        raise ValueError(f"no record for {ref}")
    card = load_card(conn, main.card_uid) if main.card_uid else None
    amount = prepared.amount if prepared else commit.amount if commit else 0
    return PaymentRecord(
        pay_ref=ref,
        site=main.site,
        person_id=card.person_id if card else None,
        card_uid=main.card_uid,
        amount_fen=amount,
        state=state,
        record_id=main.id,
        at=main.at,
        method=prepared.method if prepared else None,
        related_ids=tuple(r.id for r in (prepared, commit, abort) if r is not None),
    )


# -- reconciliation ---------------------------------------------------------------------------


class ReconciliationRun(msgspec.Struct, frozen=True, kw_only=True):
    """A stored run: the file, who, when, the outcome, and what was applied."""

    id: int
    filename: str
    digest: str
    operator: str
    applied: bool
    result: Reconciliation
    credited: tuple[str, ...] = ()
    voided: tuple[str, ...] = ()
    statement_errors: tuple[str, ...] = ()


def reconcile_statement(
    conn: sqlite3.Connection,
    data: bytes,
    filename: str,
    *,
    operator: str,
    source: str,
    apply: bool,
    grace: timedelta = UNCOMMITTED_AFTER,
    timezone: str = "Asia/Shanghai",
    now: datetime | None = None,
) -> ReconciliationRun:
    """Match a statement; with ``apply`` carry out its proven actions (credit once, void).
    Stored either way, and audited."""
    at = now or datetime.now(UTC)
    statement = parse_statement(data, tz=timezone)
    payments: dict[str, PaymentRecord] = {}
    if statement.period_start is not None and statement.period_end is not None:
        for p in payments_between(conn, statement.period_start, statement.period_end):
            payments[p.pay_ref] = p
    missing = frozenset({line.pay_ref for line in statement.lines} - payments.keys())
    if missing and statement.period_start is not None and statement.period_end is not None:
        # A kiosk prepares a little before the channel stamps the payment: look around.
        around = timedelta(days=1)
        for p in payments_between(
            conn, statement.period_start - around, statement.period_end + around, refs=missing
        ):
            payments[p.pay_ref] = p
    for p in payments_named(conn, missing - payments.keys()):
        payments[p.pay_ref] = p
    result = reconcile(statement, payments.values(), now=at, grace=grace)
    credited: list[str] = []
    voided: list[str] = []
    if apply:
        for action in result.actions:
            if isinstance(action, CreditOnce) and _credit(conn, action, operator, at):
                credited.append(action.pay_ref)
            elif isinstance(action, Void) and _void(conn, action, operator, at):
                voided.append(action.pay_ref)
    digest = hashlib.sha256(data).hexdigest()
    summary = msgspec.to_builtins(result.summary)
    cursor = conn.execute(
        "INSERT INTO reconciliations (at_ms, operator, filename, digest, applied, summary,"
        " result) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            _ms(at),
            operator,
            filename,
            digest,
            int(apply),
            _json.encode(summary).decode(),
            _json.encode(result).decode(),
        ),
    )
    run_id = int(cursor.lastrowid or 0)
    write_audit(
        conn,
        AuditEntry(
            request_id=f"reconcile:{run_id}",
            operator=operator,
            source=source,
            action="payments.reconcile",
            target=f"statement:{filename}",
            at=at,
            after={
                "applied": apply,
                "credited": len(credited),
                "voided": len(voided),
                "review": result.summary.review,
                "digest": digest[:16],
            },
        ),
    )
    return ReconciliationRun(
        id=run_id,
        filename=filename,
        digest=digest,
        operator=operator,
        applied=apply,
        result=result,
        credited=tuple(credited),
        voided=tuple(voided),
        statement_errors=tuple(f"line {e.line}: {e.reason}" for e in statement.errors),
    )


def _credit(conn: sqlite3.Connection, action: CreditOnce, operator: str, at: datetime) -> bool:
    """Credit a proven 单边账 once (never if its reference is credited anywhere)."""
    if load_payment(conn, action.pay_ref) is not None:
        return False
    person = action.person_id
    if person is None and action.card_uid:
        card = load_card(conn, action.card_uid)
        person = card.person_id if card else None
    if person is None:
        return False
    posting = Posting(
        entry_id=f"recon:{action.pay_ref}",
        person_id=person,
        kind="recharge",
        at=at,
        cash_fen=action.amount_fen,
        card_uid=action.card_uid,
        method=action.method,
        pay_ref=action.pay_ref,
        ref=action.source_record_id,
    )
    if not post(conn, posting, site=action.site):
        return False
    _resolve(conn, action.pay_ref, "credited", action.source_record_id, operator, at)
    write_audit(
        conn,
        AuditEntry(
            request_id=f"recon:{action.pay_ref}",
            operator=operator,
            source="hq:reconcile",
            action="payment.credit_once",
            target=f"payment:{action.pay_ref}",
            at=at,
            after={"person_id": person, "cash_fen": action.amount_fen, "site": action.site},
            note=f"statement line {action.statement_line} proves the payment",
        ),
    )
    return True


def _void(conn: sqlite3.Connection, action: Void, operator: str, at: datetime) -> bool:
    if load_payment(conn, action.pay_ref) is not None:
        return False
    if not _resolve(conn, action.pay_ref, "void", action.source_record_id, operator, at):
        return False
    write_audit(
        conn,
        AuditEntry(
            request_id=f"void:{action.pay_ref}",
            operator=operator,
            source="hq:reconcile",
            action="payment.void",
            target=f"payment:{action.pay_ref}",
            at=at,
            note=action.reason,
        ),
    )
    return True


def _resolve(  # noqa: PLR0917 - one resolution row
    conn: sqlite3.Connection, ref: str, resolution: str, record_id: str, operator: str, at: datetime
) -> bool:
    added = conn.execute(
        "INSERT OR IGNORE INTO payment_resolutions (pay_ref, resolution, record_id, operator,"
        " at_ms) VALUES (?, ?, ?, ?, ?)",
        (ref, resolution, record_id, operator, _ms(at)),
    ).rowcount
    conn.execute(
        "UPDATE anomalies SET state = 'resolved', acted_by = ?, acted_ms = ?, note = ?"
        " WHERE kind = 'recharge_uncommitted' AND record_id = ? AND state != 'resolved'",
        (operator, _ms(at), f"reconciliation: {resolution}", record_id),
    )
    return bool(added)


# -- 单边账 -------------------------------------------------------------------------------------


def flag_uncommitted(
    conn: sqlite3.Connection,
    *,
    now: datetime | None = None,
    older_than: timedelta = UNCOMMITTED_AFTER,
) -> int:
    """Raise a ``recharge_uncommitted`` anomaly for every kiosk recharge prepared more than
    ``older_than`` ago (and in the last 40 days) that is neither committed, aborted nor
    resolved; returns how many were raised."""
    at = now or datetime.now(UTC)
    end = at - older_than
    raised = 0
    for p in payments_between(conn, end - timedelta(days=40), end):
        if p.state != "prepared":
            continue
        exists = conn.execute(
            "SELECT 1 FROM anomalies WHERE kind = 'recharge_uncommitted' AND record_id = ?",
            (p.record_id,),
        ).fetchone()
        if exists is None:
            anomaly(
                conn,
                "recharge_uncommitted",
                site=p.site,
                at_ms=_ms(at),
                record_id=p.record_id,
                pay_ref=p.pay_ref,
                amount_fen=p.amount_fen,
                card_uid=p.card_uid,
                prepared_at=p.at.isoformat(),
            )
            raised += 1
    return raised
