"""Member import: CSV/XLSX bytes → rows → checked rows → a plan, and its dry-run report.

Pure: every file here is bytes built in the test (an XLSX is written by openpyxl into
memory); only the last tests read the sample files the docs point at.
"""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest

from central.core import tables
from central.core.effects import PutAccount, PutCard, PutPerson, PutTicket
from central.core.member_rows import normalise_header
from central.core.members import (
    MAX_OPENING_FEN,
    ExistingData,
    ImportPlan,
    OpeningEntry,
    default_batch_id,
    keys_named,
    opening_entry_id,
    plan_import,
    read_table,
    report_json,
    report_text,
    ticket_id,
)
from edge_agent.core.model import Account, Card, CardStatus, Person

#: Wednesday 14:00 in Shanghai.
NOW = datetime(2026, 3, 4, 6, 0, tzinfo=UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")
REPO = Path(__file__).resolve().parents[3]

HEADER = "person_id,name,kind,department,card_uid,cash,subsidy,subsidy_expires"
ZH_HEADER = "人员编号,姓名,类型,部门,物理卡号,现金余额,补贴余额,补贴有效期"


def csv_bytes(*lines: str, header: str = HEADER, encoding: str = "utf-8") -> bytes:
    return "\r\n".join((header, *lines)).encode(encoding)


def plan_of(
    data: bytes,
    *,
    existing: ExistingData | None = None,
    batch: str = "2026-03",
    name: str = "members.csv",
) -> ImportPlan:
    return plan_import(
        read_table(data, name), batch_id=batch, operator="op-zhang", now=NOW, existing=existing
    )


def codes(plan: ImportPlan) -> list[tuple[int, str, str]]:
    return [(i.line, i.field, i.code) for i in plan.errors]


def writes(plan: ImportPlan, kind: type) -> list:
    return [w for w in plan.master if isinstance(w, kind)]


# -- reading bytes ----------------------------------------------------------------------------


def test_a_utf8_csv_keeps_every_rows_source_line_number() -> None:
    data = csv_bytes("P1,Zhang San", "", "P2,Li Si", header="person_id,name")
    table = read_table(data, "m.csv")
    assert table.encoding == "utf-8"
    assert table.problem is None
    assert [(r.line, r.cells) for r in table.rows] == [
        (1, ("person_id", "name")),
        (2, ("P1", "Zhang San")),
        (4, ("P2", "Li Si")),  # the blank line 3 is skipped, not renumbered
    ]


def test_a_utf8_bom_csv_is_read_without_the_bom_in_the_first_header() -> None:
    table = read_table(b"\xef\xbb\xbf" + csv_bytes("P1,张三", header="人员编号,姓名"), "m.csv")
    assert table.encoding == "utf-8-sig"
    assert table.rows[0].cells == ("人员编号", "姓名")
    assert plan_of(b"\xef\xbb\xbf" + csv_bytes("P1,张三", header="人员编号,姓名")).ok


def test_a_gbk_csv_with_chinese_headers_and_names_decodes_as_gb18030() -> None:
    data = csv_bytes(
        "P001,张三,员工,财务部,04A1B2C3,12.50,100,2026-12-31",
        "P002,欧阳娜娜,会员,,04B2C3D4,￥3.5,,",
        header=ZH_HEADER,
        encoding="gbk",
    )
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    table = read_table(data, "members-gbk.csv")
    assert table.encoding == "gb18030"
    plan = plan_of(data)
    assert plan.ok, report_text(plan)
    persons = [w.person for w in writes(plan, PutPerson)]
    assert [(p.id, p.name, p.kind, p.department) for p in persons] == [
        ("P001", "张三", "staff", "财务部"),
        ("P002", "欧阳娜娜", "member", None),
    ]
    assert [(p.cash_fen, p.subsidy_fen) for p in plan.postings] == [(1250, 10000), (350, 0)]


def test_a_utf16_tab_separated_export_is_read() -> None:
    data = "\ufeff人员编号\t姓名\t现金余额\r\nP1\t张三\t1.00\r\n".encode("utf-16-le")
    table = read_table(data, "unicode.txt")
    assert table.encoding == "utf-16"
    assert plan_of(data).postings[0].cash_fen == 100


@pytest.mark.parametrize("delimiter", [",", "\t", ";"])
def test_comma_tab_and_semicolon_are_delimiters(delimiter: str) -> None:
    data = f"person_id{delimiter}name{delimiter}cash\nP1{delimiter}A{delimiter}1.5\n".encode()
    assert plan_of(data).postings[0].cash_fen == 150


def test_the_delimiter_is_found_below_a_title_line() -> None:
    data = "会员导出\n\n序号\t人员编号\t姓名\t余额\n1\tP1\t张三\t2.00\n".encode("gbk")
    plan = plan_of(data)
    assert plan.ok, report_text(plan)
    assert plan.postings[0].cash_fen == 200
    assert plan.notes == (
        "line 1 above the header skipped (a title?)",
        "columns ignored: 序号",
    )


def test_a_quoted_multiline_cell_keeps_the_following_line_numbers_right() -> None:
    data = csv_bytes('P1,"Zhang\nSan"', "P2,", header="person_id,name")
    plan = plan_of(data)
    # P1's record spans lines 2-3, so the blank name is on line 4; the newline in a name
    # is a control character.
    assert codes(plan) == [(2, "name", "control_char"), (4, "name", "required")]


def test_an_xlsx_written_by_openpyxl_is_read_from_its_first_sheet() -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["会员导出 2026-03-01"])  # a title row above the header
    sheet.append(["人员编号", "姓名", "物理卡号", "现金余额（元）", "补贴余额", "补贴有效期"])
    new_year_eve = datetime(2026, 12, 31)  # noqa: DTZ001 - an XLSX date has no zone
    sheet.append([1001, "张三", "04a1b2c3", 12.5, 0.1, new_year_eve])
    sheet.append([1002, "李四", None, 3, None, None])
    sheet.append([None, None, None, None, None, None])
    sheet.append(["1003", "王五", "04B2C3D4", "7.05", 100, date(2027, 1, 31)])
    book.create_sheet("ignored").append(["person_id", "name"])
    buffer = io.BytesIO()
    book.save(buffer)

    table = read_table(buffer.getvalue(), "export.xlsx")
    assert (table.format, table.encoding) == ("xlsx", None)
    assert [r.line for r in table.rows] == [1, 2, 3, 4, 6]
    assert table.rows[2].cells[:6] == ("1001", "张三", "04a1b2c3", "12.5", "0.1", "2026-12-31")
    plan = plan_of(buffer.getvalue(), name="export.xlsx")
    assert plan.ok, report_text(plan)
    assert plan.notes == ("line 1 above the header skipped (a title?)",)
    assert [(p.person_id, p.cash_fen, p.subsidy_fen) for p in plan.postings] == [
        ("1001", 1250, 10),
        ("1002", 300, 0),
        ("1003", 705, 10000),
    ]
    assert [w.card.uid for w in writes(plan, PutCard)] == ["04A1B2C3", "04B2C3D4"]
    expiry = {w.account.person_id: w.account.subsidy_expires_at for w in writes(plan, PutAccount)}
    # a date alone that ends something includes that whole local day
    assert expiry["1001"] == datetime(2026, 12, 31, 16, 0, tzinfo=UTC)
    assert expiry["1003"] == datetime(2027, 1, 31, 16, 0, tzinfo=UTC)


def test_an_xlsx_float_with_binary_noise_is_a_fraction_of_a_fen_not_a_rounding() -> None:
    assert tables.xlsx_text(0.1 + 0.2) == "0.30000000000000004"
    assert tables.xlsx_text(2.0) == "2"
    naive = datetime(2026, 1, 2, 8, 30)  # noqa: DTZ001 - an XLSX date has no zone
    assert tables.xlsx_text(naive) == "2026-01-02 08:30:00"
    assert tables.xlsx_text(True) == "TRUE"


@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (b"PK\x03\x04 not really a zip", "file_unreadable", 0),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1 old xls", "file_unreadable", 0),
        (b"person_id,name\nP1,A\n\x80\xff\x80,B\n", "encoding_unknown", 3),
        (b"p\x00e\x00r\x00s\x00o\x00n\x00", "file_unreadable", 0),
        (b"", "file_empty", 0),
        (b"\n \n,,\n", "file_empty", 0),
    ],
)
def test_a_file_that_is_not_a_table_is_one_file_level_error(
    data: bytes, code: str, line: int
) -> None:
    plan = plan_of(data)
    assert not plan.ok
    assert [(i.line, i.code) for i in plan.errors] == [(line, code)]
    assert plan.master == ()
    assert plan.postings == ()


def test_a_zip_that_is_no_workbook_is_unreadable_not_a_crash() -> None:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<not-xml")
        archive.writestr("xl/workbook.xml", "nonsense")
    plan = plan_of(buffer.getvalue(), name="broken.xlsx")
    assert [(i.line, i.code) for i in plan.errors] == [(0, "file_unreadable")]
    assert plan.format == "xlsx"


def test_a_workbook_that_unpacks_too_large_is_refused_before_openpyxl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import openpyxl

    buffer = io.BytesIO()
    openpyxl.Workbook().save(buffer)
    monkeypatch.setattr(tables, "MAX_XLSX_UNPACKED", 100)
    table = read_table(buffer.getvalue(), "bomb.xlsx")
    assert table.problem is not None
    assert "unpacks to" in table.problem.message


def test_too_many_rows_is_refused_as_a_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "MAX_ROWS", 3)
    table = read_table(csv_bytes("P1,A", "P2,B", "P3,C", header="person_id,name"), "m.csv")
    assert table.problem is not None
    assert table.problem.code == "too_many_rows"


# -- the header -------------------------------------------------------------------------------


def test_missing_required_columns_are_one_file_level_error_naming_them() -> None:
    plan = plan_of(csv_bytes("Zhang,1.00", header="名字x,cash"))
    assert [(i.line, i.code) for i in plan.errors] == [(1, "columns_missing")]
    assert "person_id (" in plan.errors[0].message
    assert "name (" in plan.errors[0].message
    assert "工号" in plan.errors[0].message


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("Person ID", "person_id"),
        ("*姓名", "姓名"),
        ("现金余额（元）", "现金余额"),
        ("Cash (yuan)", "cash"),
        ("card-uid", "card_uid"),
        ("卡UID", "卡uid"),
        ("No.", "no."),  # a row number, not the person's number: ignored
    ],
)
def test_header_names_are_compared_normalised(label: str, expected: str) -> None:
    assert normalise_header(label) == expected


def test_a_column_named_twice_or_without_its_partner_is_a_file_level_error() -> None:
    plan = plan_of(csv_bytes("P1,A,1,2", header="工号,姓名,余额,现金余额"))
    assert [i.code for i in plan.errors] == ["column_twice"]
    plan = plan_of(csv_bytes("P1,A,swim", header="person_id,name,ticket_service"))
    assert [(i.field, i.code) for i in plan.errors] == [("ticket_service", "columns_incomplete")]
    plan = plan_of(csv_bytes("P1,A,2026-01-01", header="person_id,name,period_from"))
    assert [(i.field, i.code) for i in plan.errors] == [("period_from", "columns_incomplete")]


def test_unknown_columns_are_ignored_and_said_so() -> None:
    plan = plan_of(csv_bytes("P1,A,hello", header="person_id,name,备注"))
    assert plan.ok
    assert plan.notes == ("columns ignored: 备注",)


# -- every row reason -------------------------------------------------------------------------

ROW_CASES = [
    ("required", ",Zhang,,,,,,", "person_id"),
    ("required", "P1,,,,,,,", "name"),
    ("too_long", "P1," + "名" * 65 + ",,,,,,", "name"),
    ("too_long", "P" * 65 + ",A,,,,,,", "person_id"),
    ("control_char", "P1,A\x07B,,,,,,", "name"),
    ("formula", "P1,=HYPERLINK(1),,,,,,", "name"),
    ("formula", "P1,@SUM(A1),,,,,,", "name"),
    ("formula", "P1,A,,-x,,,,", "department"),
    ("formula", "P1,A,,,,+5,,", "cash"),
    ("formula", "P1,A,,,=04A1B2C3,,,", "card_uid"),
    ("formula", "P1,A,,,,,,=TODAY()", "subsidy_expires"),
    ("kind_invalid", "P1,A,boss,,,,,", "kind"),
    ("uid_invalid", "P1,A,,,XYZ12345,,,", "card_uid"),
    ("uid_invalid", "P1,A,,,04A1B2,,,", "card_uid"),  # 3 bytes
    ("uid_invalid", "P1,A,,,04A1B2C,,,", "card_uid"),  # odd
    ("amount_invalid", "P1,A,,,,abc,,", "cash"),
    ("amount_invalid", "P1,A,,,,1e5,,", "cash"),
    ("amount_invalid", "P1,A,,,,NaN,,", "cash"),
    ("amount_invalid", "P1,A,,,,1.2.3,,", "cash"),
    ("amount_negative", "P1,A,,,,-1.00,,", "cash"),
    ("amount_negative", "P1,A,,,,,-0.01,", "subsidy"),
    ("amount_fraction", "P1,A,,,,1.005,,", "cash"),
    ("amount_too_large", "P1,A,,,,100000.01,,", "cash"),
    ("date_invalid", "P1,A,,,,,1,2026-02-30", "subsidy_expires"),
    ("date_invalid", "P1,A,,,,,1,31/12/2026", "subsidy_expires"),
    ("date_invalid", "P1,A,,,,,1,9999-12-31", "subsidy_expires"),
    ("subsidy_expired", "P1,A,,,,,1,2026-03-03", "subsidy_expires"),
    ("extra_cells", "P1,Zhang,,,,,,,San", ""),  # an unquoted comma shifted a cell out
]


@pytest.mark.parametrize(("code", "line", "field"), ROW_CASES)
def test_every_bad_cell_is_reported_with_its_line_column_and_reason(
    code: str, line: str, field: str
) -> None:
    plan = plan_of(csv_bytes("P0,Fine", line))
    assert codes(plan) == [(3, field, code)], report_text(plan)
    issue = plan.errors[0]
    assert issue.column == (field if field else "")
    assert not plan.ok
    assert plan.master == ()
    assert plan.postings == ()
    assert plan.counts.rows == 2
    assert plan.counts.rows_invalid == 1
    assert plan.audit.outcome == "rejected"


TICKET_HEADER = "person_id,name,ticket_service,ticket_count,period_service,period_from,period_to"
TICKET_CASES = [
    ("count_invalid", "P1,A,swim,0,,,", "ticket_count"),
    ("count_invalid", "P1,A,swim,-3,,,", "ticket_count"),
    ("count_invalid", "P1,A,swim,2.5,,,", "ticket_count"),
    ("count_invalid", "P1,A,swim,10001,,,", "ticket_count"),
    ("formula", "P1,A,swim,=1+2,,,", "ticket_count"),
    ("ticket_incomplete", "P1,A,swim,,,,", "ticket_count"),
    ("ticket_incomplete", "P1,A,,5,,,", "ticket_service"),
    ("ticket_incomplete", "P1,A,,,gym,,", "period_to"),
    ("ticket_incomplete", "P1,A,,,,2026-04-01,2026-05-01", "period_service"),
    ("period_invalid", "P1,A,,,gym,2026-06-01,2026-05-01", "period_to"),
    ("period_ended", "P1,A,,,gym,2026-01-01,2026-03-03", "period_to"),
    ("date_invalid", "P1,A,,,gym,soon,2026-05-01", "period_from"),
]


@pytest.mark.parametrize(("code", "line", "field"), TICKET_CASES)
def test_every_bad_ticket_is_reported(code: str, line: str, field: str) -> None:
    plan = plan_of(csv_bytes(line, header=TICKET_HEADER))
    assert codes(plan) == [(2, field, code)], report_text(plan)


def test_duplicates_within_the_file_name_the_first_line() -> None:
    plan = plan_of(
        csv_bytes(
            "P1,A,,,04a1b2c3,,,",
            "P2,B,,,04 A1 B2 C3,,,",  # the same UID once normalised
            "P1,C,,,,,,",
            "P3,D,,,04:A1:B2:C3,,,",
        )
    )
    assert codes(plan) == [
        (3, "card_uid", "duplicate_uid"),
        (4, "person_id", "duplicate_person"),
        (5, "card_uid", "duplicate_uid"),
    ]
    assert "line 2" in plan.errors[0].message
    assert "line 2" in plan.errors[1].message


def test_all_problems_of_one_row_are_reported_together() -> None:
    plan = plan_of(csv_bytes(",=x,boss,,zz,1.001,-1,2026-13-01"))
    assert [code for _, _, code in codes(plan)] == [
        "required",
        "formula",
        "kind_invalid",
        "uid_invalid",
        "amount_fraction",
        "amount_negative",
        "date_invalid",
    ]
    assert plan.counts.rows_invalid == 1


def test_the_report_shows_line_column_reason_and_a_terminal_safe_value() -> None:
    plan = plan_of(csv_bytes("P1,A,,,,12.345,,", "P2,=\x1b[2Jevil,,,,,,"), batch="b1")
    assert plan.errors[1].value == "=\x1b[2Jevil"
    text = report_text(plan)
    assert "NOT OK: 2 error(s); nothing will be imported" in text
    assert "line 2, cash: amount_fraction:" in text
    assert "'12.345'" in text
    assert "line 3, name: formula" in text
    assert "\x1b" not in text
    assert "['=\\x1b[2Jevil']" in text
    header = plan_of(csv_bytes("P1,A,x", header="person_id,name,\x1b]0;pwned\x07"))
    assert "\x1b" not in report_text(header)
    assert "columns ignored: \\x1b]0;pwned\\x07" in report_text(header)
    assert "errors by reason: amount_fraction 1, formula 1" in text


def test_the_text_report_lists_the_first_errors_and_the_json_report_all() -> None:
    plan = plan_of(csv_bytes(*(f"P{i},A,,,,bad,," for i in range(30))))
    text = report_text(plan, limit=5)
    assert text.count(": amount_invalid:") == 5
    assert "… and 25 more" in text
    decoded = msgspec.json.decode(report_json(plan))
    assert decoded["ok"] is False
    assert len(decoded["errors"]) == 30
    assert decoded["errors"][0] == {
        "line": 2,
        "code": "amount_invalid",
        "message": "'bad' is not an amount of yuan",
        "column": "cash",
        "field": "cash",
        "value": "bad",
    }
    assert decoded["errors_by_reason"] == {"amount_invalid": 30}


def test_the_report_totals_opening_cash_and_subsidy_in_yuan_and_fen() -> None:
    plan = plan_of(csv_bytes("P1,A,,,,12.50,0.05,", "P2,B,,,,1000,,"))
    text = report_text(plan)
    assert "OK: nothing wrong, ready to import" in text
    assert "opening balances: 2 entries; cash 1012.50 yuan (101250 fen); " in text
    assert "subsidy 0.05 yuan (5 fen)" in text
    totals = msgspec.json.decode(report_json(plan))["totals"]
    assert totals == {
        "cash_fen": 101250,
        "cash_yuan": "1012.50",
        "subsidy_fen": 5,
        "subsidy_yuan": "0.05",
    }


# -- amounts (parsing itself: test_central_core_amounts) -------------------------------------


def test_an_opening_amount_is_any_yuan_text_a_blank_is_zero_and_the_cap_holds() -> None:
    plan = plan_of(csv_bytes('P1,A,,,,"￥1,234.5",１２.５元,', "P2,B,,,,100000.00,,", "P3,C,,,,,,"))
    assert plan.ok, report_text(plan)
    assert [(p.cash_fen, p.subsidy_fen) for p in plan.postings] == [
        (123450, 1250),
        (MAX_OPENING_FEN, 0),
    ]


# -- dates ------------------------------------------------------------------------------------


def test_dates_are_local_to_the_given_zone_and_ends_include_their_day() -> None:
    header = "person_id,name,subsidy,subsidy_expires,period_service,period_from,period_to"
    data = csv_bytes(
        "P1,A,1,2026/12/31,gym,2026-04-01,2026年5月1日",
        "P2,B,1,2026-12-31 08:30,gym,2026-04-01 09:00,2026-05-01 18:00:30",
        header=header,
    )
    table = read_table(data, "m.csv")
    york = ZoneInfo("America/New_York")
    plan = plan_import(table, batch_id="b", operator="op", now=NOW, tz=york)
    assert plan.ok, report_text(plan)
    tickets = {w.ticket.person_id: w.ticket for w in writes(plan, PutTicket)}
    accounts = {w.account.person_id: w.account for w in writes(plan, PutAccount)}
    assert accounts["P1"].subsidy_expires_at == datetime(2027, 1, 1, tzinfo=york)
    assert tickets["P1"].valid_from == datetime(2026, 4, 1, tzinfo=york)
    assert tickets["P1"].valid_to == datetime(2026, 5, 2, tzinfo=york)
    assert accounts["P2"].subsidy_expires_at == datetime(2026, 12, 31, 8, 30, tzinfo=york)
    assert tickets["P2"].valid_to == datetime(2026, 5, 1, 18, 0, 30, tzinfo=york)
    assert all(t.valid_to is not None and t.valid_to.tzinfo is UTC for t in tickets.values())
    default = plan_import(table, batch_id="b", operator="op", now=NOW)  # Asia/Shanghai
    first = next(w.account for w in writes(default, PutAccount))
    assert first.subsidy_expires_at == datetime(2027, 1, 1, tzinfo=SHANGHAI)


# -- the plan ---------------------------------------------------------------------------------

FULL_HEADER = (
    "person_id,name,number,kind,department,card_uid,card_type,cash,subsidy,subsidy_expires,"
    "ticket_service,ticket_count,period_service,period_from,period_to"
)
FULL_ROW = (
    "P1,Zhang San,S-001,staff,Finance,04a1b2c3,vip,12.50,30,2026-03-31,swim,10,gym,,2026-06-30"
)


def test_a_new_person_becomes_person_account_card_tickets_and_one_opening_entry() -> None:
    existing = ExistingData(card_types=frozenset({"standard", "vip"}))
    plan = plan_of(csv_bytes(FULL_ROW, header=FULL_HEADER), existing=existing, batch="mig-1")
    assert plan.ok, report_text(plan)
    person, account, card, count, period = plan.master
    assert person == PutPerson(
        person=Person(id="P1", name="Zhang San", number="S-001", kind="staff", department="Finance")
    )
    assert account == PutAccount(
        account=Account(person_id="P1", subsidy_expires_at=datetime(2026, 3, 31, 16, 0, tzinfo=UTC))
    )
    assert card == PutCard(card=Card(uid="04A1B2C3", person_id="P1", card_type="vip"))
    assert isinstance(count, PutTicket)
    assert (count.ticket.kind, count.ticket.service, count.ticket.remaining) == (
        "count",
        "swim",
        10,
    )
    assert count.ticket.id == ticket_id("mig-1", "P1", "count")
    assert isinstance(period, PutTicket)
    assert period.ticket.valid_from is None
    assert period.ticket.valid_to == datetime(2026, 6, 30, 16, 0, tzinfo=UTC)
    (posting,) = plan.postings
    assert posting.entry_id == "import:mig-1:P1" == opening_entry_id("mig-1", "P1")
    assert (posting.kind, posting.cash_fen, posting.subsidy_fen) == ("opening", 1250, 3000)
    assert (posting.at, posting.card_uid, posting.deposit_fen) == (NOW, "04A1B2C3", 0)
    assert plan.audit.action == "members.import"
    assert plan.audit.source == "hq:import"
    assert plan.audit.request_id == "import:mig-1"
    assert plan.audit.outcome == "accepted"
    assert plan.audit.after["cash_fen"] == 1250
    assert plan.audit.after["persons_new"] == 1
    assert plan.audit.note == "members.csv (csv, utf-8)"


def test_master_writes_and_postings_encode_like_any_other_effects() -> None:
    plan = plan_of(csv_bytes(FULL_ROW, header=FULL_HEADER))
    encoded = msgspec.json.encode(plan.master)
    assert b'"type":"person"' in encoded
    assert [w.entity for w in plan.master] == ["person", "account", "card", "ticket", "ticket"]
    assert [w.key for w in plan.master][:3] == ["P1", "P1", "04A1B2C3"]


def test_the_same_batch_again_plans_the_same_ids_and_posts_nothing_new() -> None:
    data = csv_bytes(FULL_ROW, "P2,Li Si,,,,04B2C3D4,,5,,,,,,,", header=FULL_HEADER)
    first = plan_of(data, batch="mig-1")
    assert plan_of(data, batch="mig-1") == first  # deterministic
    # central after applying the first plan:
    applied = ExistingData(
        persons={w.person.id: w.person for w in writes(first, PutPerson)},
        accounts={w.account.person_id: w.account for w in writes(first, PutAccount)},
        cards={w.card.uid: w.card for w in writes(first, PutCard)},
        openings={
            p.person_id: (
                OpeningEntry(entry_id=p.entry_id, cash_fen=p.cash_fen, subsidy_fen=p.subsidy_fen),
            )
            for p in first.postings
        },
    )
    again = plan_of(data, batch="mig-1", existing=applied)
    assert again.ok, report_text(again)
    assert again.postings == first.postings  # same entry ids: the ledger's unique key drops them
    assert writes(again, PutPerson) == []  # unchanged persons are not written again
    assert writes(again, PutCard) == []  # their cards are already theirs
    assert writes(again, PutAccount) == []
    assert writes(again, PutTicket) == []  # written by the first run, maybe changed since
    counts = again.counts
    assert (counts.persons_unchanged, counts.cards_kept, counts.tickets_kept) == (2, 2, 2)
    assert (counts.openings, counts.openings_already) == (2, 2)
    assert "2 of those entries this batch posted before" in report_text(again)
    assert {w.ticket.id for w in writes(first, PutTicket)} == {
        ticket_id("mig-1", "P1", "count"),
        ticket_id("mig-1", "P1", "period"),
    }


def test_another_batch_for_a_person_with_an_opening_entry_is_already_imported() -> None:
    existing = ExistingData(
        persons={"P1": Person(id="P1", name="Zhang San")},
        openings={"P1": (OpeningEntry(entry_id="import:mig-1:P1", cash_fen=1250),)},
    )
    plan = plan_of(csv_bytes("P1,Zhang San,,,,12.50,,"), batch="mig-2", existing=existing)
    assert codes(plan) == [(2, "person_id", "already_imported")]
    assert "batch mig-1" in plan.errors[0].message
    seeded = ExistingData(openings={"P1": (OpeningEntry(entry_id="seed:x:P1"),)})
    plan = plan_of(csv_bytes("P1,A,,,,,,"), existing=seeded)  # no opening values: fine
    assert plan.ok
    plan = plan_of(csv_bytes("P1,A,,,,1,,"), existing=seeded)
    assert "entry seed:x:P1" in plan.errors[0].message


def test_the_same_batch_with_other_amounts_is_an_opening_conflict() -> None:
    existing = ExistingData(openings={"P1": (OpeningEntry(entry_id="import:b:P1", cash_fen=1250),)})
    plan = plan_of(csv_bytes("P1,A,,,,13.50,,"), batch="b", existing=existing)
    assert codes(plan) == [(2, "person_id", "opening_conflict")]


def test_a_person_only_row_updates_name_and_department_and_keeps_the_rest() -> None:
    before = Person(id="P1", name="Zhang", number="S-1", kind="staff", department="HR")
    account = Account(person_id="P1", txn_limit_fen=5000, subsidy_expires_at=NOW)
    existing = ExistingData(persons={"P1": before}, accounts={"P1": account})
    plan = plan_of(csv_bytes("P1,Zhang San,,Finance,,,,"), existing=existing)
    assert plan.ok
    assert plan.master == (
        PutPerson(
            person=Person(
                id="P1", name="Zhang San", number="S-1", kind="staff", department="Finance"
            )
        ),
    )
    assert plan.postings == ()
    assert plan.counts.persons_updated == 1
    later = datetime(2026, 12, 31, 16, 0, tzinfo=UTC)
    plan = plan_of(csv_bytes("P1,Zhang,,,,,,2026-12-31"), existing=existing)
    (write,) = writes(plan, PutAccount)
    assert write.account == Account(person_id="P1", txn_limit_fen=5000, subsidy_expires_at=later)


def test_cards_central_already_holds_are_checked_against_the_person() -> None:
    existing = ExistingData(
        cards={
            "04A1B2C3": Card(uid="04A1B2C3", person_id="P9"),
            "04B2C3D4": Card(uid="04B2C3D4", person_id="P2"),
            "04C3D4E5": Card(uid="04C3D4E5", person_id="P3", status=CardStatus.REPLACED),
        },
        card_types=frozenset({"standard"}),
    )
    plan = plan_of(
        csv_bytes(
            "P1,A,,,04A1B2C3,,,",  # someone else's card
            "P2,B,,,04B2C3D4,,,",  # already P2's: kept as it is
            "P2X,C,,,04D4E5F6,,,",
            "P3,D,,,04E5F6A7,,,",  # P3's old card is replaced, so a new one is fine
        ),
        existing=existing,
    )
    assert codes(plan) == [(2, "card_uid", "uid_bound")]
    assert "belongs to person P9" in plan.errors[0].message
    assert plan.counts.cards_kept == 1
    assert plan.counts.cards_new == 2
    live = ExistingData(cards={"04B2C3D4": Card(uid="04B2C3D4", person_id="P2")})
    plan = plan_of(csv_bytes("P2,B,,,04A1B2C3,,,"), existing=live)
    assert codes(plan) == [(2, "card_uid", "person_has_card")]
    types = ExistingData(card_types=frozenset({"standard"}))
    plan = plan_of(
        csv_bytes("P1,A,04A1B2C3,gold", header="person_id,name,card_uid,card_type"), existing=types
    )
    assert codes(plan) == [(2, "card_type", "card_type_unknown")]


def test_a_row_with_only_tickets_still_posts_a_zero_opening_entry() -> None:
    plan = plan_of(csv_bytes("P1,A,swim,3,,,", header=TICKET_HEADER), batch="t")
    assert [(p.entry_id, p.cash_fen, p.subsidy_fen) for p in plan.postings] == [
        ("import:t:P1", 0, 0)
    ]


def test_a_bad_plan_carries_counts_but_no_effects() -> None:
    plan = plan_of(csv_bytes("P1,A,,,,1.00,,", "P2,B,,,,x,,"))
    assert not plan.ok
    assert (plan.master, plan.postings) == ((), ())
    assert (plan.counts.persons_new, plan.counts.cash_fen) == (1, 100)
    assert plan.audit.reason_code == "batch_invalid"
    assert plan.audit.after["errors"] == 1


def test_the_callers_own_bad_arguments_raise() -> None:
    table = read_table(csv_bytes("P1,A"), "m.csv")
    with pytest.raises(ValueError, match="batch id"):
        plan_import(table, batch_id="a:b", operator="op", now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_import(table, batch_id="b", operator="op", now=NOW.replace(tzinfo=None))


def test_the_default_batch_id_is_the_files_content() -> None:
    data = csv_bytes("P1,A")
    assert default_batch_id(data) == default_batch_id(bytes(data))
    assert default_batch_id(data) != default_batch_id(data + b"\n")
    assert plan_of(data, batch=default_batch_id(data)).ok


def test_keys_named_lists_what_to_load_from_central() -> None:
    table = read_table(csv_bytes("P1,A,,,04a1b2c3,,,", "P2,B,,,bad,,,", ",C,,,,,,"), "m.csv")
    assert keys_named(table) == (frozenset({"P1", "P2"}), frozenset({"04A1B2C3"}))
    assert keys_named(read_table(b"x,y\n1,2\n", "m.csv")) == (frozenset(), frozenset())


@pytest.mark.slow
def test_a_hundred_thousand_rows_are_planned_in_one_pass() -> None:
    rows = (
        f"P{i:06d},Name {i},,,{0x10000000 + i:08X},{i % 1000}.{i % 100:02d},5,2027-01-31"
        for i in range(100_000)
    )
    plan = plan_of(csv_bytes(*rows, "P000007,dup,,,,,,"))
    assert codes(plan) == [(100_002, "person_id", "duplicate_person")]
    assert plan.counts.rows == 100_001
    assert plan.counts.persons_new == 100_000
    assert plan.counts.subsidy_fen == 100_000 * 500


# -- the samples the docs point at ------------------------------------------------------------


@pytest.mark.parametrize("name", ["members.csv", "members-gbk.csv"])
def test_the_sample_files_import_cleanly(name: str) -> None:
    data = (REPO / "docs" / "samples" / name).read_bytes()
    plan = plan_of(data, name=name, batch=default_batch_id(data))
    assert plan.ok, report_text(plan)
    assert plan.counts.persons_new >= 3
    assert plan.counts.openings >= 3
    if name == "members-gbk.csv":
        assert plan.encoding == "gb18030"


def test_now_is_the_boundary_for_expiry_and_period_ends() -> None:
    expires = (NOW + timedelta(hours=1)).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
    assert plan_of(csv_bytes(f"P1,A,,,,,1,{expires}")).ok
