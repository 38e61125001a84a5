"""Member import into central's real store, from the command line and the API: a GBK file
imports once however often it is run, a dry run changes nothing, a bad file imports
nothing and says where and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from stores import central_db, read_db

from central.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"


def cli(db: Path | str, *args: str):
    env = {"ONECARD_CENTRAL_DB": str(db), "SUDO_USER": "hr-zhao"}
    return CliRunner().invoke(main, [*args], env=env)


def totals(db: Path | str) -> tuple[Any, ...]:
    [row] = read_db(
        db,
        "SELECT (SELECT count(*) FROM ledger), (SELECT sum(cash_fen) FROM ledger),"
        " (SELECT sum(subsidy_fen) FROM ledger),"
        " (SELECT count(*) FROM master WHERE entity IN ('person', 'card', 'ticket'))",
    )
    return row


@pytest.fixture
def db(tmp_path: Path) -> Path | str:
    return central_db(tmp_path)


def test_a_gbk_member_file_imports_once_even_when_run_twice(db):
    first = cli(db, "import", "members", str(SAMPLES / "members-gbk.csv"))
    assert first.exit_code == 0, first.output
    assert "imported" in first.output
    after_first = totals(db)
    # 张伟 128.50 + 300 subsidy, 李娜 300 subsidy, 王芳 1200.00: opening entries in the ledger
    assert after_first[1:3] == (132_850, 60_000)
    again = cli(db, "import", "members", str(SAMPLES / "members-gbk.csv"))
    assert again.exit_code == 0, again.output
    assert totals(db) == after_first  # same batch (same content): nothing doubled
    shown = json.loads(cli(db, "person", "show", "M2001").output)
    assert shown["person"]["name"] == "王芳"
    assert shown["balance"]["cash_fen"] == 120_000
    assert [t["service"] for t in shown["tickets"]] == ["游泳", "健身"]
    assert cli(db, "balances").exit_code == 0  # balances equal their ledger sums


def test_the_same_people_under_another_batch_are_refused_not_doubled(db):
    assert cli(db, "import", "members", str(SAMPLES / "members-gbk.csv")).exit_code == 0
    before = totals(db)
    other = cli(db, "import", "members", str(SAMPLES / "members.csv"), "--batch", "second")
    assert other.exit_code == 1
    assert "already_imported" in other.output
    assert totals(db) == before


def test_a_dry_run_reports_and_changes_nothing(db, tmp_path):
    dry = cli(db, "import", "members", str(SAMPLES / "members.csv"), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing changed" in dry.output
    assert totals(db) == (0, None, None, 0)


def test_a_bad_file_imports_nothing_and_names_line_column_and_reason(db, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "person_id,name,card_uid,cash\n"
        "P1,Alice,04A1B2C3,12.50\n"
        "P2,Bob,04A1B2C3,1.234\n"  # the same card twice; a third decimal
        'P3,=HYPERLINK("x"),,5\n',
        encoding="utf-8",
    )
    answer = cli(db, "import", "members", str(bad), "--json")
    assert answer.exit_code == 1
    report = json.loads(answer.output)
    found = {(e["line"], e["code"]) for e in report["errors"]}
    assert {(3, "duplicate_uid"), (3, "amount_fraction"), (4, "formula")} <= found
    assert totals(db) == (0, None, None, 0)  # all or nothing
    audit = read_db(db, "SELECT action, outcome FROM audit")
    assert audit == [("members.import", "rejected")]
