"""The Anomalies and Clearing pages over real HTTP: anomalies listed newest first and
filtered, acknowledged then resolved through the forms (audited, resolved is final, a note
required), the day's clearing with its CSV for Excel and its SVG chart, and who may see
and do what."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

import pytest
from web_harness import sign_in

from central import anomalies

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_SVG = re.compile(r"<svg\b.*?</svg>", re.S)


@pytest.fixture
async def flagged(dash):
    at = int(time.time() * 1000)

    def seed(conn):
        anomalies.anomaly(
            conn, "negative_balance", site="SZ-FUTIAN", at_ms=at, person_id="P1", cash_fen=-50
        )
        anomalies.anomaly(
            conn, "clock_skew", site="BJ-CHAOYANG", at_ms=at + 1, terminal="T-<1>", skew_s=900
        )

    await dash.store.run(seed)
    return dash


async def signed_in(dash, username: str):
    http = dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, username)).status_code == 303
    return http


def listed(page: str) -> list[tuple[str, str]]:
    return re.findall(r'data-anomaly="(\d+)" data-state="([a-z]+)"', page)


async def csrf(http, path: str = "/anomalies") -> str:
    found = _CSRF.search((await http.get(path)).text)
    assert found
    return found[1]


async def test_anomalies_are_listed_newest_first_and_filtered(flagged):
    http = await signed_in(flagged, "auditor-1")
    page = await http.get("/anomalies")
    assert page.status_code == 200
    assert listed(page.text) == [("2", "open"), ("1", "open")]
    assert "Terminal clock skew" in page.text and "T-&lt;1&gt;" in page.text
    assert "-50" in page.text
    by_site = (await http.get("/anomalies", params={"site": "SZ-FUTIAN"})).text
    assert listed(by_site) == [("1", "open")]
    by_kind = (await http.get("/anomalies", params={"kind": "clock_skew"})).text
    assert listed(by_kind) == [("2", "open")]
    resolved = (await http.get("/anomalies", params={"state": "resolved"})).text
    assert listed(resolved) == [] and "No anomalies match." in resolved
    # An auditor may look but not act: no forms.
    assert "/acknowledge" not in page.text


async def test_acknowledge_then_resolve_through_the_forms_audited(flagged):
    http = await signed_in(flagged, "operator-1")
    token = await csrf(http)
    done = await http.post("/anomalies/1/acknowledge", data={"csrf": token, "note": "looking"})
    assert done.status_code == 200 and "Anomaly #1 is acknowledged." in done.text
    assert ("1", "acknowledged") in listed(done.text)
    done = await http.post("/anomalies/1/resolve", data={"csrf": token, "note": "topped up"})
    assert done.status_code == 200 and "Anomaly #1 is resolved." in done.text
    assert ("1", "resolved") in listed(done.text) and "topped up" in done.text
    again = await http.post("/anomalies/1/resolve", data={"csrf": token, "note": "again"})
    assert again.status_code == 409 and "it cannot become resolved" in again.text
    rows = await flagged.audit(target="anomaly:1")
    assert [(r["action"], r["operator"], r["source"]) for r in rows] == [
        ("anomaly.resolve", "operator-1", "hq:web"),
        ("anomaly.acknowledge", "operator-1", "hq:web"),
    ]
    assert rows[0]["role"] == "operator" and rows[0]["ip"] == "127.0.0.1"
    missing = await http.post("/anomalies/99/acknowledge", data={"csrf": token})
    assert missing.status_code == 404


async def test_resolve_without_a_note_is_refused(flagged):
    http = await signed_in(flagged, "finance-1")
    token = await csrf(http)
    refused = await http.post("/anomalies/2/resolve", data={"csrf": token, "note": "  "})
    assert refused.status_code == 400 and "a note is required" in refused.text
    assert ("2", "open") in listed(refused.text)
    assert await flagged.audit(target="anomaly:2") == []


async def test_a_post_without_csrf_is_refused(flagged):
    http = await signed_in(flagged, "admin-1")
    refused = await http.post("/anomalies/2/acknowledge", data={"note": "x"})
    assert refused.status_code == 403
    assert listed((await http.get("/anomalies")).text)[0] == ("2", "open")


async def test_who_may_open_which_page(flagged):
    tech = await signed_in(flagged, "technician-1")
    assert (await tech.get("/anomalies")).status_code == 403
    assert (await tech.get("/clearing")).status_code == 403
    assert (await tech.get("/clearing.csv")).status_code == 403
    token = await csrf(tech, "/")
    assert (await tech.post("/anomalies/1/acknowledge", data={"csrf": token})).status_code == 403
    operator = await signed_in(flagged, "operator-1")
    assert (await operator.get("/clearing")).status_code == 403
    assert "/clearing" not in (await operator.get("/")).text
    for role in ("finance-1", "auditor-1", "admin-1"):
        http = await signed_in(flagged, role)
        assert (await http.get("/clearing")).status_code == 200, role


async def test_the_clearing_page_its_csv_and_its_chart(dash):
    http = await signed_in(dash, "finance-1")
    page = await http.get("/clearing", params={"day": "2024-05-01"})
    assert page.status_code == 200
    assert re.findall(r'<tr data-site="([^"]+)">\s*<th scope="row" class="mono">', page.text)[
        :3
    ] == ["BJ-CHAOYANG", "SZ-FUTIAN", "HQ"]
    assert "¥0.00" in page.text and 'href="/clearing.csv?day=2024-05-01"' in page.text
    assert "Settlement, 2024-04-02 – 2024-05-01" in page.text
    charts = _SVG.findall(page.text)
    assert len(charts) == 3
    for svg in charts:
        root = ET.fromstring(svg)  # noqa: S314 - our own output
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert len(root.findall("{http://www.w3.org/2000/svg}rect")) == 30
        assert root.findall("{http://www.w3.org/2000/svg}text")
    download = await http.get("/clearing.csv", params={"day": "2024-05-01"})
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert 'filename="clearing-2024-05-01.csv"' in download.headers["content-disposition"]
    assert download.content.startswith(b"\xef\xbb\xbf")
    assert download.content.decode("utf-8-sig").count("\r\n") == 4  # header + 2 sites + HQ
    assert (await http.get("/clearing", params={"day": "May 1"})).status_code == 400
    assert (await http.get("/clearing")).status_code == 200


def test_the_chart_escapes_its_text():
    from central.web.clearing import bar_chart

    svg = bar_chart("<b>&", [("a<b", 5), ("c", 0)], value=lambda fen: f"{fen}<")
    root = ET.fromstring(str(svg))  # noqa: S314 - our own output
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts[0] == "<b>&" and "a<b" in texts
    assert "<b>" not in str(svg)
