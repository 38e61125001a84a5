"""The Access page over real HTTP: a site's levels, zones and door groups; grants to a
department and to a person made and revoked from the page (audited, sent to the sites as
person grants), read-only for auditors."""

from __future__ import annotations

import re

import msgspec
import pytest
from web_harness import sign_in

from central import access, attendance, master
from edge_agent.core.model import AccessLevel, DoorGroup, TimeZone

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SITE = "SZ-FUTIAN"


@pytest.fixture
async def site(dash):
    seed = msgspec.convert(
        {"persons": [{"id": "E1", "name": "Ann", "kind": "staff", "department": "ops"}]},
        master.CentralSeed,
    )

    def setup(conn) -> None:
        master.apply_seed(conn, seed, batch="t")
        attendance.put_department(conn, "ops", "运营", None, operator="hr")
        access.put(conn, SITE, DoorGroup(id="MAIN", anti_passback="hard"), operator="it")
        zone = TimeZone(id="OFFICE", weekly=access.parse_weekly(["mon-fri 08:00-19:00"]))
        access.put(conn, SITE, zone, operator="it")
        level = AccessLevel(id="STAFF", door_group_id="MAIN", time_zone_id="OFFICE")
        access.put(conn, SITE, level, operator="it")

    await dash.store.run(setup)
    return dash


async def grants(dash) -> dict[str, object]:
    return await dash.store.run(
        lambda c: dict(
            c.execute("SELECT key, data FROM master WHERE entity = 'access_grant'").fetchall()
        )
    )


async def test_a_department_and_a_person_are_granted_and_revoked_from_the_page(site):
    http = site.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, "operator-1")).status_code == 303
    page = await http.get("/access", params={"site": SITE})
    assert 'data-level="STAFF"' in page.text and "08:00-19:00" in page.text and "hard" in page.text
    token = _CSRF.search(page.text)[1]  # type: ignore[index]
    form = {"csrf": token, "confirm": "yes", "level": "STAFF"}
    granted = await http.post(f"/access/grant-dept?site={SITE}", data={**form, "department": "ops"})
    assert "Granted (1 person grants written)" in granted.text
    assert list(await grants(site)) == ["E1:STAFF"]
    lookup = await http.get("/access", params={"site": SITE, "person": "E1"})
    assert "from a department" in lookup.text
    unknown = await http.post(f"/access/grant?site={SITE}", data={**form, "person": "NOBODY"})
    assert unknown.status_code == 409 and "unknown person NOBODY" in unknown.text
    revoked = await http.post(
        f"/access/revoke-dept?site={SITE}", data={**form, "department": "ops"}
    )
    assert "Revoked (1 person grants removed)" in revoked.text
    assert await grants(site) == {}
    own = await http.post(
        f"/access/grant?site={SITE}", data={**form, "person": "E1", "valid_to": "2026-12-31"}
    )
    assert "Granted." in own.text and list(await grants(site)) == ["E1:STAFF"]
    audit = await site.audit(action="access.grant")
    assert [(a["operator"], a["source"]) for a in audit][:1] == [("operator-1", "hq:web")]


async def test_auditors_read_and_change_nothing(site):
    http = site.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, "auditor-1")).status_code == 303
    page = await http.get("/access", params={"site": SITE})
    assert page.status_code == 200 and 'id="grant-dept"' not in page.text
    token = _CSRF.search(page.text)[1]  # type: ignore[index]
    refused = await http.post(
        "/access/grant-dept",
        data={"csrf": token, "confirm": "yes", "level": "STAFF", "department": "ops"},
    )
    assert refused.status_code == 403
    assert await grants(site) == {}
