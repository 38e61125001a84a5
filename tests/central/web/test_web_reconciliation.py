"""The Reconciliation page over real HTTP: a statement uploaded as a file, matched (dry run,
then applied), stored and listed; a missing, unreadable or oversized file refused with a
reason; only finance and admin may import, everyone who reads finance may look."""

from __future__ import annotations

import re

from web_harness import sign_in

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
STATEMENT = "交易时间,商户订单号,金额,状态\n2026-11-27 12:00:00,WX-E,10.00,成功\n"


async def signed_in(dash, username: str):
    http = dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, username)).status_code == 303
    return http


async def post_statement(http, body: bytes, *, apply: bool = False, name: str = "wx.csv"):
    page = await http.get("/reconciliation")
    token = _CSRF.search(page.text)
    assert token, page.text[:500]
    data = {"csrf": token[1], "grace_minutes": "30"}
    if apply:
        data["apply"] = "1"
    return await http.post(
        "/reconciliation", data=data, files={"statement": (name, body, "text/csv")}
    )


async def test_a_statement_is_matched_dry_run_then_applied_and_listed(dash):
    http = await signed_in(dash, "finance-1")
    dry = await post_statement(http, STATEMENT.encode("gbk"))
    assert dry.status_code == 200
    assert 'id="outcome"' in dry.text and "dry run" in dry.text
    assert "WX-E" in dry.text and "only_in_statement" in dry.text and "review" in dry.text
    applied = await post_statement(http, STATEMENT.encode("gbk"), apply=True)
    assert applied.status_code == 200 and ">applied<" in applied.text
    runs = re.findall(r"<tr><td class=\"num\">(\d+)</td>", applied.text)
    assert runs == ["2", "1"]  # both runs stored, newest first
    audit = await dash.audit(action="payments.reconcile")
    assert len(audit) == 2


async def test_bad_uploads_are_refused_with_a_reason(dash):
    http = await signed_in(dash, "admin-1")
    page = await http.get("/reconciliation")
    token = _CSRF.search(page.text)[1]  # type: ignore[index]
    no_file = await http.post("/reconciliation", data={"csrf": token})
    assert no_file.status_code == 400 and "Choose a statement file" in no_file.text
    garbage = await post_statement(http, b"\x00\x01 not a statement", name="x.csv")
    assert garbage.status_code == 400 and "invalid_statement" in garbage.text
    huge = await post_statement(http, b"a" * (9 * 1024 * 1024), name="huge.csv")
    assert huge.status_code == 413


async def test_only_finance_and_admin_may_import(dash):
    auditor = await signed_in(dash, "auditor-1")
    assert (await auditor.get("/reconciliation")).status_code == 200
    refused = await post_statement(auditor, STATEMENT.encode("gbk"))
    assert refused.status_code == 403
    operator = await signed_in(dash, "operator-1")
    assert (await operator.get("/reconciliation")).status_code == 403
    finance = await signed_in(dash, "finance-1")
    no_csrf = await finance.post(
        "/reconciliation", files={"statement": ("wx.csv", STATEMENT.encode("gbk"), "text/csv")}
    )
    assert no_csrf.status_code == 403
