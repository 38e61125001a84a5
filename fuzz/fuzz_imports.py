"""Fuzz the spreadsheet importers: member files (CSV or XLSX) and payment statements (CSV).

Input: the first byte picks the importer (:data:`IMPORTERS`), the rest is the file.
Invariants:

- :func:`~central.core.tables.read_table` never raises: a file that is no table is a
  ``Table`` with ``problem`` set and no rows;
- :func:`~central.core.members.plan_import` never raises for what is in the file (every
  problem is an ``Issue`` with a line number and a stable code), a plan with errors
  carries no effects, and an accepted plan writes no text that starts like a spreadsheet
  formula (``=``, ``+``, ``-``, ``@``);
- :func:`~central.core.statements.parse_statement` returns a statement or raises
  ``StatementError`` — never another exception — and every line it read or refused names
  a line of the file.

Run: ``.venv/bin/python fuzz/fuzz_imports.py fuzz/corpus/imports -max_total_time=60``
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from fuzz_common import pick, require, run

from central.core.members import ExistingData, plan_import
from central.core.statements import StatementError, parse_statement
from central.core.tables import read_table

#: A fixed "now", so a seed's verdict never depends on the day it is replayed.
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
_FORMULA = ("=", "+", "-", "@")


def _texts(value: object) -> list[str]:
    """Every string inside a msgspec struct (or a builtin container of them)."""
    found: list[str] = []
    stack = [msgspec.to_builtins(value)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _line_bound(data: bytes) -> int:
    """No CSV line number can be above this (every line break counted, CRLF twice)."""
    return data.count(b"\n") + data.count(b"\r") + 1


def check_members(data: bytes, filename: str = "members.csv") -> None:
    """A member file, as ``onecard-central import members`` and the API read it."""
    table = read_table(data, filename)
    if table.problem is not None:
        require(table.rows == (), "a table with a problem still has rows")
    lines = [row.line for row in table.rows]
    require(lines == sorted(set(lines)), f"row lines not strictly increasing: {lines[:10]}")
    plan = plan_import(
        table,
        batch_id="fuzz",
        operator="fuzz",
        now=NOW,
        existing=ExistingData(card_types=frozenset({"standard"})),
    )
    if not plan.ok:
        require(plan.master == () and plan.postings == (), "a refused plan carries effects")
        last = max(max(lines, default=0), _line_bound(data))
        for issue in plan.errors:
            require(0 <= issue.line <= last, f"issue names line {issue.line} of {last}")
            require(bool(issue.code and issue.message), f"issue without code/message: {issue}")
        return
    for write in plan.master:
        for text in _texts(write):
            require(not text.startswith(_FORMULA), f"a formula-like text is imported: {text!r}")


def check_statement(data: bytes) -> None:
    """A bank or payment-channel statement, as reconciliation reads it."""
    try:
        statement = parse_statement(data)
    except StatementError as exc:
        require(bool(str(exc)), "a StatementError without a message")
        return
    lines = _line_bound(data)
    numbers = [i.line for i in statement.lines] + [i.line for i in statement.errors]
    for number in numbers + [i.line for i in statement.skipped]:
        require(1 <= number <= lines, f"statement names line {number} of {lines}")
    for line in statement.lines:
        require(line.amount_fen > 0, f"line {line.line}: a payment of {line.amount_fen} fen")


#: Append only: a seed's first byte is its importer's index here.
IMPORTERS: tuple[tuple[str, Callable[[bytes], None]], ...] = (
    ("members.csv", check_members),
    ("members.xlsx", lambda data: check_members(data, "members.xlsx")),
    ("statement", check_statement),
)
INDEX: dict[str, int] = {name: i for i, (name, _) in enumerate(IMPORTERS)}


def check(data: bytes) -> None:
    """One input: the invariants in the module docstring."""
    which, payload = pick(data, len(IMPORTERS))
    IMPORTERS[which][1](payload)


if __name__ == "__main__":
    run(check)
