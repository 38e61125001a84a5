"""Load master data into a site's store before central exists (``onecard-edge seed FILE``).

Two formats (see ``docs/edge-seed.md``):

- **JSON** (``*.json``): every kind of master data — policy, persons, cards, accounts,
  tickets, time zones, holidays, door groups, doors, access levels and grants, terminals and
  the blacklist. Validated strictly: an unknown or missing field is an error naming it.
- **CSV** (``*.csv``, UTF-8, BOM tolerated): one cardholder per line with the columns
  ``card_uid,person_id,name,number,kind,department,cash_fen,subsidy_fen``.

A seed is all-or-nothing: every line is checked first and any error is reported with its
line (CSV) or JSON path, and nothing is written. Loading the same seed twice changes nothing
the second time (rows are upserted by their ids).
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from edge_agent.adapters.sqlite_master import ms, write
from edge_agent.core.model import (
    AccessGrant,
    AccessLevel,
    Account,
    Card,
    Door,
    DoorGroup,
    Holiday,
    Person,
    SitePolicy,
    TerminalConf,
    Ticket,
    TimeZone,
)
from protocol.auth import parse_key
from protocol.errors import AuthError

_UID_RE = re.compile(r"(?:[0-9A-F]{2}){4,10}")
CSV_COLUMNS = (
    "card_uid",
    "person_id",
    "name",
    "number",
    "kind",
    "department",
    "cash_fen",
    "subsidy_fen",
)


class SeedError(ValueError):
    """A seed file that cannot be loaded; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
        self.problems = problems


class BlacklistEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A card on the blacklist."""

    uid: str
    reason: str = "lost"
    effective_at: datetime


class Seed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a seed may hold."""

    site: str
    policy: SitePolicy | None = None
    persons: list[Person] = []
    cards: list[Card] = []
    accounts: list[Account] = []
    tickets: list[Ticket] = []
    time_zones: list[TimeZone] = []
    holidays: list[Holiday] = []
    door_groups: list[DoorGroup] = []
    doors: list[Door] = []
    access_levels: list[AccessLevel] = []
    access_grants: list[AccessGrant] = []
    terminals: list[TerminalConf] = []
    blacklist: list[BlacklistEntry] = []
    blacklist_version: int = 0


def load_seed(path: Path) -> Seed:
    """Parse and validate a seed file (JSON or CSV) into a :class:`Seed`."""
    data = path.read_bytes()
    if path.suffix.lower() == ".csv":
        return _seed_from_csv(data, str(path))
    try:
        seed = msgspec.json.decode(data, type=Seed)
    except msgspec.ValidationError as exc:
        raise SeedError(str(path), [str(exc)]) from None
    except msgspec.DecodeError as exc:
        raise SeedError(str(path), [f"not valid JSON: {exc}"]) from None
    problems = _check(seed)
    if problems:
        raise SeedError(str(path), problems)
    return seed


def _check(seed: Seed) -> list[str]:
    problems = []
    persons = {p.id for p in seed.persons}
    for i, card in enumerate(seed.cards):
        if not _UID_RE.fullmatch(card.uid):
            problems.append(f"$.cards[{i}].uid {card.uid!r}: 8-20 upper-case hex digits")
        if card.person_id not in persons:
            problems.append(f"$.cards[{i}].person_id {card.person_id!r}: no such person")
    for i, account in enumerate(seed.accounts):
        if account.person_id not in persons:
            problems.append(f"$.accounts[{i}].person_id {account.person_id!r}: no such person")
        if account.cash_fen < 0 or account.subsidy_fen < 0:
            problems.append(f"$.accounts[{i}]: opening balances cannot be negative")
    for i, term in enumerate(seed.terminals):
        try:
            parse_key(term.key_hex)
        except AuthError as exc:
            problems.append(f"$.terminals[{i}].key_hex: {exc}")
    for i, entry in enumerate(seed.blacklist):
        if not _UID_RE.fullmatch(entry.uid):
            problems.append(f"$.blacklist[{i}].uid {entry.uid!r}: 8-20 upper-case hex digits")
    groups = {g.id for g in seed.door_groups}
    for i, door in enumerate(seed.doors):
        if door.group_id not in groups:
            problems.append(f"$.doors[{i}].group_id {door.group_id!r}: no such door group")
    return problems


def _seed_from_csv(data: bytes, source: str) -> Seed:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SeedError(source, [f"not UTF-8 (byte {exc.start}); save the file as UTF-8"]) from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise SeedError(source, [f"line 1: missing columns {', '.join(missing)}"])
    persons: dict[str, Person] = {}
    cards: list[Card] = []
    accounts: dict[str, Account] = {}
    problems: list[str] = []
    seen_uids: set[str] = set()
    for line, row in enumerate(reader, start=2):
        uid = (row["card_uid"] or "").strip().upper()
        pid = (row["person_id"] or "").strip()
        kind = (row["kind"] or "member").strip() or "member"
        errors = []
        if not _UID_RE.fullmatch(uid):
            errors.append(f"card_uid {uid!r} is not 8-20 hex digits")
        elif uid in seen_uids:
            errors.append(f"card_uid {uid} appears twice")
        if not pid:
            errors.append("person_id is empty")
        if not (row["name"] or "").strip():
            errors.append("name is empty")
        if kind not in ("staff", "member"):
            errors.append(f"kind {kind!r} must be staff or member")
        amounts = {}
        for column in ("cash_fen", "subsidy_fen"):
            raw = (row[column] or "0").strip() or "0"
            if not raw.isdigit():
                errors.append(f"{column} {raw!r} must be a whole number of fen (分), not yuan")
            else:
                amounts[column] = int(raw)
        if errors:
            problems.extend(f"line {line}: {e}" for e in errors)
            continue
        seen_uids.add(uid)
        persons[pid] = Person(
            id=pid,
            name=row["name"].strip(),
            number=(row["number"] or "").strip(),
            kind=kind,  # type: ignore[arg-type]
            department=(row["department"] or "").strip() or None,
        )
        cards.append(Card(uid=uid, person_id=pid))
        accounts[pid] = Account(
            person_id=pid, cash_fen=amounts["cash_fen"], subsidy_fen=amounts["subsidy_fen"]
        )
    if problems:
        raise SeedError(source, problems)
    return Seed(
        site="",
        persons=list(persons.values()),
        cards=cards,
        accounts=list(accounts.values()),
    )


def apply_seed(conn: sqlite3.Connection, seed: Seed) -> dict[str, int]:
    """Upsert everything in ``seed`` (inside a store operation); returns row counts."""
    groups: list[tuple[str, list[Any]]] = [
        ("person", seed.persons),
        ("card", seed.cards),
        ("account", seed.accounts),
        ("ticket", seed.tickets),
        ("time_zone", seed.time_zones),
        ("holiday", seed.holidays),
        ("door_group", seed.door_groups),
        ("door", seed.doors),
        ("access_level", seed.access_levels),
        ("access_grant", seed.access_grants),
        ("terminal", seed.terminals),
    ]
    if seed.policy is not None:
        groups.append(("policy", [seed.policy]))
    for entity, items in groups:
        for item in items:
            write(conn, entity, item)
    conn.executemany(
        "INSERT OR REPLACE INTO blacklist (uid, reason, effective_at_ms, version) VALUES (?,?,?,?)",
        [(b.uid, b.reason, ms(b.effective_at), seed.blacklist_version) for b in seed.blacklist],
    )
    if seed.blacklist_version:
        conn.execute(
            "UPDATE meta SET value = ? "
            "WHERE key = 'blacklist_version' AND CAST(value AS INTEGER) < ?",
            (str(seed.blacklist_version), seed.blacklist_version),
        )
    return {
        "persons": len(seed.persons),
        "cards": len(seed.cards),
        "accounts": len(seed.accounts),
        "tickets": len(seed.tickets),
        "doors": len(seed.doors),
        "terminals": len(seed.terminals),
        "blacklist": len(seed.blacklist),
    }
