"""Malformed member files against central's real store, through the command line: each is
refused with a specific reason naming its line (and column, where there is one), nothing is
imported — all or nothing — and the refusal is audited. Files that only look odd (a BOM,
UTF-16 from Excel, GB18030, extra columns) import as they should.

Also: the spreadsheet exports defuse text a spreadsheet would run as a formula, and the
table reader and statement parser, fed anything at all, answer with a table, a statement or
their one documented error (hypothesis; ``fuzz/fuzz_imports.py`` does the same for longer).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import openpyxl
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from stores import central_db, read_db

from central import attendance as att
from central import master
from central.cli import main
from central.cli_common import run_op
from central.core.clearing_export import encode_csv
from central.core.members import ExistingData, plan_import
from central.core.statements import StatementError, parse_statement
from central.core.tables import MAX_XLSX_UNPACKED, read_table

HEADER = "person_id,name,number,department,card_uid,cash\n"
GOOD = "P1,张三,S1,Finance,04A1B2C3,12.50\nP2,李四,S2,Kitchen,04B2C3D4,0\n"
FUZZ_CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus" / "imports"


def cli(db: Path | str, *args: str):
    env = {"ONECARD_CENTRAL_DB": str(db), "SUDO_USER": "hr-zhao"}
    return CliRunner().invoke(main, [*args], env=env)


def imported(db: Path | str) -> tuple[Any, ...]:
    """Ledger entries and persons/cards/tickets in central (0, 0 before any import)."""
    if isinstance(db, Path) and not db.exists():
        return (0, 0)
    [row] = read_db(
        db,
        "SELECT (SELECT count(*) FROM ledger),"
        " (SELECT count(*) FROM master WHERE entity IN ('person', 'card', 'ticket'))",
    )
    return row


def run_import(
    db: Path | str, tmp_path: Path, data: bytes, name: str
) -> tuple[int, dict[str, Any]]:
    path = tmp_path / name
    path.write_bytes(data)
    answer = cli(db, "import", "members", str(path), "--json")
    assert answer.exception is None or isinstance(answer.exception, SystemExit), answer.output
    return answer.exit_code, json.loads(answer.output)


def audit(db: Path | str) -> list[tuple[Any, ...]]:
    return read_db(db, "SELECT action, outcome FROM audit ORDER BY id")


def xlsx(rows: list[list[object]], *, strings: bool = False) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    if strings:  # what a user typing '=… (or a CSV opened and saved) leaves: text cells
        for line in sheet.iter_rows():
            for cell in line:
                if isinstance(cell.value, str):
                    cell.data_type = "s"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


@pytest.fixture
def db(tmp_path: Path) -> Path | str:
    return central_db(tmp_path)


# -- refused: (file bytes, name) -> the (line, code, column) it must report -------------------

REFUSED = [
    pytest.param(
        (HEADER + "P1,Ann,S1,,,1\nP2,Bo,S2,,,1\nP3,Jos\xe9,S3,,,1\n").encode("latin-1"),
        "latin1.csv",
        {(4, "encoding_unknown", "")},
        id="latin-1-not-utf8-nor-gb18030",
    ),
    pytest.param(
        (HEADER + GOOD).encode("utf-16-le"),
        "utf16-without-bom.csv",
        {(0, "file_unreadable", "")},
        id="utf16-without-bom",
    ),
    pytest.param(b"", "empty.csv", {(0, "file_empty", "")}, id="empty-file"),
    pytest.param(b"\r\n \n,,,\n\t\n", "blank.csv", {(0, "file_empty", "")}, id="blank-lines"),
    pytest.param(
        (HEADER + "P1," + "名" * 100_000 + ",S1,,,1\n").encode(),
        "huge-name.csv",
        {(2, "too_long", "name")},
        id="huge-field",
    ),
    pytest.param(
        (HEADER + "P1,Ann,S1," + "x" * 200_000 + ",,1\n").encode(),
        "huge-cell.csv",
        {(2, "file_unreadable", "")},
        id="cell-over-the-csv-field-limit",
    ),
    pytest.param(
        (
            HEADER
            + 'P1,=CMD("calc"),S1,,,1\n'
            + "P2,Bob,+1+1,,,1\n"
            + "P3,Cat,S3,-2+3,,1\n"
            + "P4,Dan,S4,@SUM(A1),,1\n"
            + "P5, =HYPERLINK(x),S5,,,1\n"
            + "P6,Eve,S6,,,=1+1\n"
        ).encode(),
        "formulas.csv",
        {
            (2, "formula", "name"),
            (3, "formula", "number"),
            (4, "formula", "department"),
            (5, "formula", "department"),
            (6, "formula", "name"),
            (7, "formula", "cash"),
        },
        id="formula-injection",
    ),
    pytest.param(
        b"person_id,number,cash\nP1,S1,1\n",
        "no-name.csv",
        {(1, "columns_missing", "")},
        id="missing-required-column",
    ),
    pytest.param(
        (HEADER.rstrip("\n") + ",ticket_service\n" + "P1,Ann,S1,,,1,swim\n").encode(),
        "half-a-ticket.csv",
        {(1, "columns_incomplete", "ticket_service")},
        id="column-without-its-partner",
    ),
    pytest.param(
        ("person_id,name,姓名,cash\nP1,Ann,安,1\n").encode(),
        "twice.csv",
        {(1, "column_twice", "姓名")},
        id="duplicated-column",
    ),
    pytest.param(
        (HEADER + GOOD + "P3,Cat,S3,Ops,,1,surplus\n").encode(),
        "extra-cells.csv",
        {(4, "extra_cells", "")},
        id="cells-right-of-the-header",
    ),
    pytest.param(
        (HEADER + GOOD + "P1,Ann again,S9,,,1\n").encode(),
        "duplicate-person.csv",
        {(4, "duplicate_person", "person_id")},
        id="duplicated-row",
    ),
    pytest.param(
        (HEADER + "P1,Ann\x1b[31m,S1,,,1\n").encode(),
        "escape.csv",
        {(2, "control_char", "name")},
        id="terminal-escape-in-a-name",
    ),
    pytest.param(
        b"PK\x03\x04" + bytes(range(256)) * 8,
        "garbage.xlsx",
        {(0, "file_unreadable", "")},
        id="binary-garbage-as-xlsx",
    ),
    pytest.param(
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512),
        "old.xls",
        {(0, "file_unreadable", "")},
        id="old-binary-xls",
    ),
    pytest.param(
        (FUZZ_CORPUS / "regress-zip-version-7.5").read_bytes()[1:],
        "zip75.xlsx",
        {(0, "file_unreadable", "")},
        id="zip-of-an-unsupported-version",
    ),
    pytest.param(
        xlsx([["person_id", "name", "department"], ["P1", "=1+1", "Ops"]]),
        "formula-cell.xlsx",
        {(2, "required", "name")},  # a formula cell has no cached value: read as empty
        id="xlsx-formula-cell",
    ),
    pytest.param(
        xlsx([["person_id", "name", "department"], ["P1", '=HYPERLINK("x")', "Ops"]], strings=True),
        "formula-text.xlsx",
        {(2, "formula", "name")},
        id="xlsx-formula-as-text",
    ),
]


@pytest.mark.parametrize(("data", "name", "expected"), REFUSED)
def test_a_malformed_file_is_refused_naming_where_and_nothing_is_imported(
    db: Path | str, tmp_path: Path, data: bytes, name: str, expected: set[tuple[int, str, str]]
):
    code, report = run_import(db, tmp_path, data, name)
    assert code == 1
    assert report["ok"] is False
    found = {(e["line"], e["code"], e.get("column", "")) for e in report["errors"]}
    assert expected <= found, report["errors"]
    for error in report["errors"]:
        assert error["message"] and len(error["message"]) < 300  # clear and bounded
        assert len(error.get("value", "")) <= 40  # a huge cell is not echoed back whole
    assert imported(db) == (0, 0)
    assert audit(db) == [("members.import", "rejected")]


def test_one_bad_row_among_good_ones_imports_none_of_them(db: Path | str, tmp_path: Path):
    rows = "".join(f"P{i},Person {i},S{i},Ops,,{i}.00\n" for i in range(1, 200))
    code, report = run_import(db, tmp_path, (HEADER + rows + "P999,=1,,,,1\n").encode(), "a.csv")
    assert code == 1 and report["counts"]["rows"] == 200
    assert report["counts"]["rows_invalid"] == 1
    assert imported(db) == (0, 0)
    # The same file without the bad row imports whole.
    code, report = run_import(db, tmp_path, (HEADER + rows).encode(), "b.csv")
    assert code == 0, report["errors"]
    assert imported(db) == (199, 199)


# -- accepted: odd but legitimate files --------------------------------------------------------

ACCEPTED = [
    pytest.param(b"\xef\xbb\xbf" + (HEADER + GOOD).encode(), "bom.csv", "utf-8-sig", id="bom"),
    pytest.param(
        (HEADER + GOOD).replace(",", "\t").encode("utf-16"),
        "excel-unicode.txt",
        "utf-16",
        id="utf16-with-bom-tabs",
    ),
    pytest.param(
        (HEADER + GOOD).replace("张三", "𠀀㐀三").encode("gb18030"),
        "gb18030.csv",
        "gb18030",
        id="gb18030-four-byte",
    ),
    pytest.param(
        (HEADER.rstrip("\n") + ",remark\n" + GOOD.replace("\n", ",ok\n")).encode(),
        "remarks.csv",
        "utf-8",
        id="extra-column-ignored",
    ),
]


@pytest.mark.parametrize(("data", "name", "encoding"), ACCEPTED)
def test_a_legitimately_odd_file_imports(
    db: Path | str, tmp_path: Path, data: bytes, name: str, encoding: str
):
    code, report = run_import(db, tmp_path, data, name)
    assert code == 0, report["errors"]
    assert report["encoding"] == encoding
    assert imported(db) == (1, 4)  # P1's opening balance (P2 brings none); 2 persons, 2 cards
    names = {r[0] for r in read_db(db, "SELECT json_extract(data, '$.name') FROM master")}
    assert "李四" in names


def test_the_apostrophe_that_defuses_a_formula_is_kept_as_text(db: Path | str, tmp_path: Path):
    code, report = run_import(db, tmp_path, (HEADER + "P1,'=1+1,S1,,,1\n").encode(), "a.csv")
    assert code == 0, report["errors"]
    [(name,)] = read_db(
        db, "SELECT json_extract(data, '$.name') FROM master WHERE entity = 'person'"
    )
    assert name == "'=1+1"


def test_a_zip_bomb_is_refused_before_it_is_unpacked(db: Path | str, tmp_path: Path):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for n in range(5):
            archive.writestr(f"xl/worksheets/sheet{n}.xml", b"\0" * (MAX_XLSX_UNPACKED // 4))
    code, report = run_import(db, tmp_path, out.getvalue(), "bomb.xlsx")
    assert code == 1
    [error] = report["errors"]
    assert error["code"] == "file_unreadable" and "unpacks to" in error["message"]
    assert imported(db) == (0, 0)


# -- exports: nothing a spreadsheet would run ---------------------------------------------------

HOSTILE_CELLS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1"]


def test_clearing_and_reconciliation_csv_defuse_formula_cells():
    data = encode_csv(["name", "amount"], [[cell, -150] for cell in HOSTILE_CELLS])
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))[1:]
    assert [row[0] for row in rows] == ["'" + cell for cell in HOSTILE_CELLS]
    assert {row[1] for row in rows} == {"-150"}  # a negative number stays a number


def attendance_report(tmp_path: Path, name: str, department: str) -> att.MonthReport:
    seed = msgspec.convert(
        {"persons": [{"id": "E1", "name": name, "kind": "staff", "department": "ops"}]},
        master.CentralSeed,
    )

    def build(conn: sqlite3.Connection) -> att.MonthReport:
        master.apply_seed(conn, seed, batch="t")
        att.put_department(conn, "ops", department, None, operator="hr")
        return att.month_report(conn, 2026, 11, "ops")

    report: att.MonthReport = run_op(tmp_path / "att.db", build)
    return report


@pytest.mark.parametrize("cell", HOSTILE_CELLS[:4])
def test_the_attendance_csv_defuses_formula_cells(tmp_path: Path, cell: str):
    """A name that starts like a formula (the seed takes one, unlike the member import)
    must reach Excel as text, as it does in the clearing CSV."""
    report = attendance_report(tmp_path, cell, "Ops")
    rows = list(csv.reader(io.StringIO(att.report_csv(report).decode("utf-8-sig"))))
    names = [row[1] for row in rows[1:-1]]
    assert names == ["'" + cell], "the CSV cell would run as a formula in Excel"


def test_the_attendance_xlsx_holds_no_live_formula(tmp_path: Path):
    report = attendance_report(tmp_path, HOSTILE_CELLS[0], "Ops")
    book = openpyxl.load_workbook(io.BytesIO(att.report_xlsx(report, ZoneInfo("Asia/Shanghai"))))
    formulas = [
        c.coordinate for s in book for row in s.iter_rows() for c in row if c.data_type == "f"
    ]
    assert formulas == [], "the XLSX holds a live formula where a name was"


# -- properties: anything in, a table / statement / documented error out ----------------------

EXISTING = ExistingData(card_types=frozenset({"standard"}))
NOW = datetime(2026, 11, 27, tzinfo=UTC)
cells = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["=1+1", "+1", "-1", "@x", "12.50", "¥1,234.50", "04A1B2C3", "2026-11-30", "张三", '"', ""]
)
headers = st.lists(
    st.sampled_from(["person_id", "name", "姓名", "cash", "card_uid", "ticket_count", "x"]),
    min_size=1,
    max_size=6,
)


@st.composite
def member_files(draw: st.DrawFn) -> bytes:
    header = draw(headers)
    rows = draw(st.lists(st.lists(cells, max_size=len(header) + 1), max_size=6))
    out = io.StringIO()
    csv.writer(out).writerows([header, *rows])
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "gb18030", "utf-16"]))
    return out.getvalue().encode(encoding, errors="replace")


@given(member_files() | st.binary(max_size=400))
@settings(max_examples=150, deadline=None)
def test_any_member_file_is_a_plan_with_issues_naming_lines_never_an_exception(data: bytes):
    table = read_table(data, "x.csv")
    plan = plan_import(table, batch_id="prop", operator="t", now=NOW, existing=EXISTING)
    assert plan.ok == (not plan.errors)
    if not plan.ok:
        assert plan.master == () and plan.postings == ()
    last_line = max((row.line for row in table.rows), default=0)
    bound = max(last_line, data.count(b"\n") + data.count(b"\r") + 1)
    assert all(0 <= e.line <= bound and e.code for e in plan.errors)
    names = [getattr(w, "person", None) for w in plan.master]
    assert not any(p is not None and p.name.startswith(("=", "+", "-", "@")) for p in names)


@given(st.binary(max_size=600) | member_files())
@settings(max_examples=150, deadline=None)
def test_any_statement_is_parsed_or_refused_with_a_statement_error(data: bytes):
    try:
        statement = parse_statement(data)
    except StatementError:
        return  # the one documented refusal: the file as a whole is no statement
    assert all(line.amount_fen > 0 for line in statement.lines)
