"""Member import (``onecard-central import members FILE``): the plan and its report.

Pure: the caller passes the file's bytes and name and what central already holds
(:class:`ExistingData`); nothing here touches a database, the network or the disk.

1. :func:`~central.core.tables.read_table`: bytes (CSV in UTF-8 / GB18030 …, or XLSX) →
   rows with their line numbers;
2. :func:`plan_import`: finds the header, checks every row
   (:mod:`central.core.member_rows`) and plans the import in the effects vocabulary of
   :mod:`central.core.effects` — ``master`` (:class:`PutPerson`, :class:`PutAccount`,
   :class:`PutCard`, :class:`PutTicket`), ``postings`` (kind ``opening``) and one ``audit``;
3. :func:`report_text` / :func:`report_json`: the ``--dry-run`` validation report.

Design (where the issue leaves room):

- **All or nothing.** A plan with any error has ``ok = False`` and carries no effects; its
  counts still say what the valid rows would do, so a dry run reports both.
- **A batch id makes a re-run harmless.** Opening balances are ``opening`` postings with
  entry id ``import:{batch_id}:{person_id}``: the same batch posts the same ids, which the
  ledger's unique key ignores. Without a batch id from the operator,
  :func:`default_batch_id` derives one from the file's content, so importing the very same
  file twice is the same batch. Ticket ids derive from batch and person the same way.
- **Opening values belong to one batch.** A row with a balance or a ticket posts an
  ``opening`` entry (0 fen if it only brings tickets: the entry is the record that this
  person's opening was imported). A person who already has an opening entry from another
  batch (or from ``seed``) is refused ``already_imported``; the same entry id with other
  amounts is ``opening_conflict`` (the ledger would silently keep the first amounts).
  Rows without opening values only update the person, so an HR file may come first and
  the finance file later.
- **An import fills in, it does not erase.** For a person central already has, a blank
  cell or an absent optional column keeps central's value (number, kind, department,
  subsidy expiry, account limits); an unchanged person is not written again (no feed
  churn on a re-run). A card already bound to that person is left as it is (its status
  may have moved since); a card of someone else, or a second live card for a person, is an
  error (one live card per person, as in :mod:`central.core.cards`). Imported cards take
  no deposit: the old system held it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, tzinfo
from typing import Literal, TypeVar

import msgspec
from msgspec import Struct

from central.core.amounts import format_yuan
from central.core.effects import (
    AuditEntry,
    MasterWrite,
    Posting,
    PutAccount,
    PutCard,
    PutPerson,
    PutTicket,
)
from central.core.member_rows import (
    ALIASES,
    MAX_OPENING_FEN,
    Issue,
    IssueCode,
    MemberRow,
    check_rows,
    find_header,
    normal_uid,
)
from central.core.state import LIVE
from central.core.tables import Table, read_table
from edge_agent.core.model import Account, Card, Person, SitePolicy, Ticket
from edge_agent.core.sitetime import site_zone

__all__ = [
    "ALIASES",
    "MAX_OPENING_FEN",
    "ExistingData",
    "ImportCounts",
    "ImportPlan",
    "Issue",
    "OpeningEntry",
    "Table",
    "default_batch_id",
    "keys_named",
    "opening_entry_id",
    "plan_import",
    "read_table",
    "report_json",
    "report_text",
    "ticket_id",
]


class OpeningEntry(Struct, frozen=True, kw_only=True):
    """An ``opening`` ledger entry central already holds (from an import or a seed)."""

    entry_id: str
    cash_fen: int = 0
    subsidy_fen: int = 0


class ExistingData(Struct, frozen=True, kw_only=True):
    """What central holds about the persons and cards a file names (:func:`keys_named`);
    anything absent is, to the plan, new.

    - ``persons``, ``accounts``: by person id;
    - ``cards``: by UID, any status — and every card of those persons (to find a person's
      live card);
    - ``openings``: each person's ``opening`` ledger entries;
    - ``card_types``: the configured card type names (None: not checked);
    - ``default_card_type``: the type of a card whose row names none.
    """

    persons: dict[str, Person] = {}
    accounts: dict[str, Account] = {}
    cards: dict[str, Card] = {}
    openings: dict[str, tuple[OpeningEntry, ...]] = {}
    card_types: frozenset[str] | None = None
    default_card_type: str = "standard"


class ImportCounts(Struct, frozen=True, kw_only=True):
    """What the plan does (over the valid rows, when some rows are not)."""

    rows: int = 0
    rows_invalid: int = 0
    persons_new: int = 0
    persons_updated: int = 0
    persons_unchanged: int = 0
    accounts: int = 0
    cards_new: int = 0
    cards_kept: int = 0
    count_tickets: int = 0
    period_tickets: int = 0
    #: Tickets this batch already wrote (a re-run): left as central holds them now.
    tickets_kept: int = 0
    openings: int = 0
    #: Opening entries this batch already posted (a re-run): posted again with the same
    #: entry ids, which the ledger ignores — they add nothing.
    openings_already: int = 0
    cash_fen: int = 0
    subsidy_fen: int = 0


class ImportPlan(Struct, frozen=True, kw_only=True):
    """The import decided. Apply ``master``, ``postings`` and ``audit`` in one transaction,
    and only if ``ok``: a plan with errors carries no effects."""

    batch_id: str
    filename: str
    format: Literal["csv", "xlsx"]
    encoding: str | None
    counts: ImportCounts
    audit: AuditEntry
    errors: tuple[Issue, ...] = ()
    notes: tuple[str, ...] = ()
    master: tuple[MasterWrite, ...] = ()
    postings: tuple[Posting, ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing is wrong: the plan may be applied."""
        return not self.errors


# -- the plan ---------------------------------------------------------------------------------

_T = TypeVar("_T")
#: A batch id: no ``:``, so ``import:{batch_id}:{person_id}`` splits back unambiguously.
_BATCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
#: Dates without a zone are in this one unless the caller says otherwise (as SitePolicy).
DEFAULT_TIMEZONE = SitePolicy(site="-").timezone
SOURCE = "hq:import"
ACTION = "members.import"


def default_batch_id(data: bytes) -> str:
    """A batch id from the file's content: importing the very same file again is the same
    batch (and so posts nothing twice)."""
    return "sha256-" + hashlib.sha256(data).hexdigest()[:16]


def opening_entry_id(batch_id: str, person_id: str) -> str:
    """The ledger key of ``person_id``'s opening balance from ``batch_id``."""
    return f"import:{batch_id}:{person_id}"


def ticket_id(batch_id: str, person_id: str, kind: Literal["count", "period"]) -> str:
    """A stable id for a ticket a batch carries over (a ticket id is at most 64 characters,
    so batch and person are hashed rather than spelled out)."""
    digest = hashlib.sha256(f"{batch_id}\n{person_id}\n{kind}".encode()).hexdigest()
    return f"imp-{digest[:24]}"


def _kept(new: _T | None, old: _T) -> _T:
    """A blank cell keeps what central holds."""
    return old if new is None else new


def _origin(entry_id: str) -> str:
    if entry_id.startswith("import:"):
        return f"batch {entry_id.split(':', 2)[1]}"
    return f"entry {entry_id}"


class _Planner:
    """Turns valid rows into effects against what central holds, row by row."""

    def __init__(self, batch_id: str, existing: ExistingData, at: datetime) -> None:
        self.batch_id, self.existing, self.at = batch_id, existing, at
        self.persons: list[MasterWrite] = []
        self.accounts: list[MasterWrite] = []
        self.cards: list[MasterWrite] = []
        self.tickets: list[MasterWrite] = []
        self.postings: list[Posting] = []
        self.counts: dict[str, int] = dict.fromkeys(ImportCounts.__struct_fields__, 0)
        # One live card per person: which one each person already holds at central.
        self.live_card: dict[str, str] = {
            card.person_id: uid for uid, card in existing.cards.items() if card.status in LIVE
        }

    def conflicts(self, member: MemberRow, labels: dict[str, str]) -> list[Issue]:
        """What central holds that this row contradicts."""
        found: list[Issue] = []

        def issue(field: str, code: IssueCode, message: str, value: str = "") -> None:
            found.append(
                Issue(
                    line=member.line,
                    code=code,
                    column=labels.get(field, ""),
                    field=field,
                    message=message,
                    value=value,
                )
            )

        pid, uid = member.person_id, member.card_uid
        if uid is not None:
            card = self.existing.cards.get(uid)
            if card is not None and card.person_id != pid:
                issue(
                    "card_uid",
                    "uid_bound",
                    f"card {uid} belongs to person {card.person_id} at central ({card.status})",
                    uid,
                )
            held = self.live_card.get(pid)
            if held is not None and held != uid:
                issue(
                    "card_uid",
                    "person_has_card",
                    f"person {pid} already holds card {held} at central (one live card each)",
                    uid,
                )
            wanted = member.card_type or self.existing.default_card_type
            known = self.existing.card_types
            if card is None and known is not None and wanted not in known:
                issue("card_type", "card_type_unknown", f"no card type {wanted!r}", wanted)
        if member.has_opening:
            ours = opening_entry_id(self.batch_id, pid)
            for entry in self.existing.openings.get(pid, ()):
                if entry.entry_id != ours:
                    issue(
                        "person_id",
                        "already_imported",
                        f"person {pid} already has opening balances from {_origin(entry.entry_id)}",
                        pid,
                    )
                elif (entry.cash_fen, entry.subsidy_fen) != (member.cash_fen, member.subsidy_fen):
                    issue(
                        "person_id",
                        "opening_conflict",
                        f"this batch already opened {pid} with cash {format_yuan(entry.cash_fen)}"
                        f" and subsidy {format_yuan(entry.subsidy_fen)}; the row says otherwise",
                        pid,
                    )
        return found

    def add(self, member: MemberRow) -> None:
        """The effects of a row without conflicts."""
        self._person(member)
        self._account(member)
        self._card(member)
        entry_id = opening_entry_id(self.batch_id, member.person_id)
        # This batch's opening entry is there: it was applied (all or nothing), tickets
        # too; rewriting them would undo what central has changed since (an extension).
        again = any(
            e.entry_id == entry_id for e in self.existing.openings.get(member.person_id, ())
        )
        if again:
            kept = (member.count_ticket is not None) + (member.period_ticket is not None)
            self.counts["tickets_kept"] += kept
            self.counts["openings_already"] += 1
        else:
            self._tickets(member)
        if member.has_opening:
            self.postings.append(
                Posting(
                    entry_id=entry_id,
                    person_id=member.person_id,
                    kind="opening",
                    at=self.at,
                    cash_fen=member.cash_fen,
                    subsidy_fen=member.subsidy_fen,
                    card_uid=member.card_uid,
                )
            )
            self.counts["openings"] += 1
            self.counts["cash_fen"] += member.cash_fen
            self.counts["subsidy_fen"] += member.subsidy_fen

    def _person(self, member: MemberRow) -> None:
        before = self.existing.persons.get(member.person_id)
        person = Person(
            id=member.person_id,
            name=member.name,
            number=_kept(member.number, before.number if before else ""),
            kind=member.kind or (before.kind if before else "member"),
            department=_kept(member.department, before.department if before else None),
        )
        if before is None:
            self.counts["persons_new"] += 1
        elif person == before:
            self.counts["persons_unchanged"] += 1
            return
        else:
            self.counts["persons_updated"] += 1
        self.persons.append(PutPerson(person=person))

    def _account(self, member: MemberRow) -> None:
        before = self.existing.accounts.get(member.person_id)
        expires = member.subsidy_expires_at
        if before is not None and (expires is None or expires == before.subsidy_expires_at):
            return
        self.accounts.append(
            PutAccount(
                account=Account(
                    person_id=member.person_id,
                    subsidy_expires_at=expires,
                    txn_limit_fen=before.txn_limit_fen if before else None,
                    daily_limit_fen=before.daily_limit_fen if before else None,
                )
            )
        )
        self.counts["accounts"] += 1

    def _card(self, member: MemberRow) -> None:
        if member.card_uid is None:
            return
        if member.card_uid in self.existing.cards:  # already this person's: left as it is
            self.counts["cards_kept"] += 1
            return
        card = Card(
            uid=member.card_uid,
            person_id=member.person_id,
            card_type=member.card_type or self.existing.default_card_type,
        )
        self.cards.append(PutCard(card=card))
        self.counts["cards_new"] += 1

    def _tickets(self, member: MemberRow) -> None:
        pid = member.person_id
        if member.count_ticket is not None:
            ticket = Ticket(
                id=ticket_id(self.batch_id, pid, "count"),
                person_id=pid,
                kind="count",
                service=member.count_ticket.service,
                remaining=member.count_ticket.uses,
            )
            self.tickets.append(PutTicket(ticket=ticket))
            self.counts["count_tickets"] += 1
        if member.period_ticket is not None:
            period = member.period_ticket
            ticket = Ticket(
                id=ticket_id(self.batch_id, pid, "period"),
                person_id=pid,
                kind="period",
                service=period.service,
                valid_from=period.valid_from,
                valid_to=period.valid_to,
            )
            self.tickets.append(PutTicket(ticket=ticket))
            self.counts["period_tickets"] += 1


def plan_import(
    table: Table,
    *,
    batch_id: str,
    operator: str,
    now: datetime,
    existing: ExistingData | None = None,
    tz: tzinfo | None = None,
) -> ImportPlan:
    """Check every row of ``table`` and plan the import as batch ``batch_id``.

    Dates without a zone are read in ``tz`` (default :data:`DEFAULT_TIMEZONE`). Raises
    ``ValueError`` only for the caller's own arguments (a batch id that is not 1-48 of
    ``A-Z a-z 0-9 . _ -``, a naive ``now``); everything wrong with the file is an
    :class:`Issue` in ``errors``.
    """
    if not _BATCH.fullmatch(batch_id):
        raise ValueError(f"batch id {batch_id!r}: 1-48 characters of A-Z a-z 0-9 . _ -")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    at = now.astimezone(UTC)
    zone = tz if tz is not None else site_zone(DEFAULT_TIMEZONE)
    planner = _Planner(batch_id, existing or ExistingData(), at)
    errors: list[Issue] = []
    notes: list[str] = []
    header = find_header(table.rows) if table.problem is None else [_file_issue(table)]
    if isinstance(header, list):
        errors.extend(header)
    else:
        if header.index:
            first, last = table.rows[0].line, table.rows[header.index - 1].line
            where = f"line {first}" if first == last else f"lines {first}-{last}"
            notes.append(f"{where} above the header skipped (a title?)")
        if header.ignored:
            notes.append("columns ignored: " + ", ".join(header.ignored))
        rows = table.rows[header.index + 1 :]
        for member, issues in check_rows(rows, header, tz=zone, now=at):
            planner.counts["rows"] += 1
            found = issues
            if member is not None:
                found = planner.conflicts(member, header.labels)
                if not found:
                    planner.add(member)
            if found:
                planner.counts["rows_invalid"] += 1
                errors.extend(found)
    counts = ImportCounts(**planner.counts)
    return _plan(table, batch_id, operator, at, counts, errors, notes, planner)


def _file_issue(table: Table) -> Issue:
    problem = table.problem
    assert problem is not None  # noqa: S101 - the caller checked
    return Issue(line=problem.line, code=problem.code, message=problem.message)


def _plan(  # noqa: PLR0917 - the parts of one plan
    table: Table,
    batch_id: str,
    operator: str,
    at: datetime,
    counts: ImportCounts,
    errors: list[Issue],
    notes: list[str],
    planner: _Planner,
) -> ImportPlan:
    ok = not errors
    source = table.format if table.encoding is None else f"{table.format}, {table.encoding}"
    audit = AuditEntry(
        request_id=f"import:{batch_id}",
        operator=operator,
        source=SOURCE,
        action=ACTION,
        target=f"import:{batch_id}",
        at=at,
        outcome="accepted" if ok else "rejected",
        reason_code=None if ok else "batch_invalid",
        after={**msgspec.structs.asdict(counts), "errors": len(errors)},
        note=f"{table.filename} ({source})",
    )
    master = (*planner.persons, *planner.accounts, *planner.cards, *planner.tickets)
    return ImportPlan(
        batch_id=batch_id,
        filename=table.filename,
        format=table.format,
        encoding=table.encoding,
        counts=counts,
        audit=audit,
        errors=tuple(errors),
        notes=tuple(notes),
        master=master if ok else (),
        postings=tuple(planner.postings) if ok else (),
    )


def keys_named(table: Table) -> tuple[frozenset[str], frozenset[str]]:
    """The person ids and card UIDs ``table`` names: what to load into
    :class:`ExistingData` (plus those persons' cards, openings and accounts)."""
    header = find_header(table.rows) if table.problem is None else []
    if isinstance(header, list):
        return frozenset(), frozenset()
    persons: set[str] = set()
    uids: set[str] = set()
    pid_at, uid_at = header.columns["person_id"], header.columns.get("card_uid")
    for row in table.rows[header.index + 1 :]:
        if pid_at < len(row.cells) and row.cells[pid_at]:
            persons.add(row.cells[pid_at])
        if uid_at is not None and uid_at < len(row.cells) and row.cells[uid_at]:
            uid = normal_uid(row.cells[uid_at])
            if uid is not None:
                uids.add(uid)
    return frozenset(persons), frozenset(uids)


# -- the report -------------------------------------------------------------------------------

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _shown(value: str) -> str:
    """Text from the file made safe to print on a terminal (no escape sequences)."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def _by_code(plan: ImportPlan) -> dict[str, int]:
    codes: dict[str, int] = {}
    for issue in plan.errors:
        codes[issue.code] = codes.get(issue.code, 0) + 1
    return dict(sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])))


def report_text(plan: ImportPlan, *, limit: int = 200) -> str:
    """The dry-run report for people: verdict, counts, totals, then the first ``limit``
    errors (line, column, reason)."""
    c = plan.counts
    source = plan.format.upper() + (f", {plan.encoding}" if plan.encoding else "")
    verdict = (
        "OK: nothing wrong, ready to import"
        if plan.ok
        else f"NOT OK: {len(plan.errors)} error(s); nothing will be imported"
    )
    lines = [
        f"member import {_shown(plan.filename)} ({source}), batch {plan.batch_id}",
        verdict,
        f"rows: {c.rows} ({c.rows_invalid} with errors)",
        (
            f"persons: {c.persons_new} new, {c.persons_updated} updated, "
            f"{c.persons_unchanged} unchanged"
        ),
        (
            f"accounts: {c.accounts}; cards: {c.cards_new} new, {c.cards_kept} kept; "
            f"tickets: {c.count_tickets} count, {c.period_tickets} period, "
            f"{c.tickets_kept} kept"
        ),
        (
            f"opening balances: {c.openings} entries; "
            f"cash {format_yuan(c.cash_fen)} yuan ({c.cash_fen} fen); "
            f"subsidy {format_yuan(c.subsidy_fen)} yuan ({c.subsidy_fen} fen)"
        ),
    ]
    if c.openings_already:
        lines.append(
            f"note: {c.openings_already} of those entries this batch posted before; "
            "posting them again adds nothing"
        )
    lines.extend(f"note: {_shown(note)}" for note in plan.notes)
    if plan.errors:
        lines.append(
            "errors by reason: " + ", ".join(f"{k} {n}" for k, n in _by_code(plan).items())
        )
        lines.append("errors:")
        for issue in plan.errors[:limit]:
            where = "file" if issue.line == 0 else f"line {issue.line}"
            if issue.column:
                where += f", {_shown(issue.column)}"
                if issue.field and issue.field != issue.column:
                    where += f" ({issue.field})"
            value = f" [{issue.value!r}]" if issue.value else ""  # repr: escapes controls
            lines.append(f"  {where}: {issue.code}: {_shown(issue.message)}{value}")
        if len(plan.errors) > limit:
            lines.append(f"  … and {len(plan.errors) - limit} more (the JSON report has all)")
    return "\n".join(lines) + "\n"


def report_json(plan: ImportPlan) -> bytes:
    """The dry-run report for programs: every error, the counts and the totals (fen and
    yuan strings)."""
    return msgspec.json.encode(
        {
            "batch_id": plan.batch_id,
            "file": plan.filename,
            "format": plan.format,
            "encoding": plan.encoding,
            "ok": plan.ok,
            "counts": plan.counts,
            "totals": {
                "cash_fen": plan.counts.cash_fen,
                "cash_yuan": format_yuan(plan.counts.cash_fen),
                "subsidy_fen": plan.counts.subsidy_fen,
                "subsidy_yuan": format_yuan(plan.counts.subsidy_fen),
            },
            "errors_by_reason": _by_code(plan),
            "errors": plan.errors,
            "notes": plan.notes,
        }
    )
