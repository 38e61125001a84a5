"""The site page's doors and its "open now" form: shown to the roles that may open doors,
confirmed before anything is sent, and honest when central's service is not there to send
it (the end-to-end open over MQTT is in tests/central/test_central_doors.py)."""

from __future__ import annotations

import re

import msgspec
from web_harness import sign_in

from central import master
from edge_agent.core.model import Door, DoorGroup

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SITE = "SZ-FUTIAN"


async def with_door(dash) -> None:
    def seed(conn) -> None:
        master.upsert(conn, SITE, "door_group", "MAIN", msgspec.json.encode(DoorGroup(id="MAIN")))
        door = Door(id="D1", group_id="MAIN", terminal_id="DOOR-01", name="正门")
        master.upsert(conn, SITE, "door", "D1", msgspec.json.encode(door))

    await dash.store.run(seed)


async def test_the_doors_show_with_an_open_form_only_for_roles_that_may(dash):
    await with_door(dash)
    for username, may in (("technician-1", True), ("operator-1", True), ("auditor-1", False)):
        http = dash.client(**{"Accept-Language": "en"})
        assert (await sign_in(http, username)).status_code == 303
        page = await http.get(f"/sites/{SITE}")
        assert page.status_code == 200
        assert 'id="doors"' in page.text and "正门" in page.text
        assert (f"/sites/{SITE}/doors/D1/open" in page.text) is may, username


async def test_an_open_is_confirmed_first_and_says_when_it_cannot_be_sent(dash):
    await with_door(dash)
    http = dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, "operator-1")).status_code == 303
    token = _CSRF.search((await http.get(f"/sites/{SITE}")).text)[1]  # type: ignore[index]
    unconfirmed = await http.post(
        f"/sites/{SITE}/doors/D1/open", data={"csrf": token, "open_s": "5"}
    )
    assert "Tick the box" in unconfirmed.text
    no_service = await http.post(
        f"/sites/{SITE}/doors/D1/open", data={"csrf": token, "open_s": "5", "confirm": "yes"}
    )
    assert "need onecard-central serve" in no_service.text
    auditor = dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(auditor, "auditor-1")).status_code == 303
    token = _CSRF.search((await auditor.get(f"/sites/{SITE}")).text)[1]  # type: ignore[index]
    refused = await auditor.post(
        f"/sites/{SITE}/doors/D1/open", data={"csrf": token, "open_s": "5", "confirm": "yes"}
    )
    assert refused.status_code == 403
