"""HQ's remote "open door now" over a real mosquitto to a real edge and a simulated door:
the door opens, the site records who asked, HQ audits every attempt, and a command that
arrives late is never carried out."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sync_system import BOB, System, edge_db, until

from central import master
from central.doors import UnknownDoorError, open_door
from firmware_sim.terminals import DoorReader
from protocol.messages import DoorOpen
from protocol.terminal import DoorOpen as TerminalDoorOpen

pytestmark = pytest.mark.integration
SITE = "SZ-FUTIAN"


def audit_rows(conn: sqlite3.Connection) -> list[tuple[str, str, str | None, str]]:
    return conn.execute(
        "SELECT target, outcome, reason_code, note FROM audit WHERE action = 'door.open'"
        " ORDER BY id"
    ).fetchall()


async def test_a_remote_open_reaches_the_door_and_is_recorded_at_the_site_and_hq(
    system: System,
):
    door = system.terminal(DoorReader, SITE, "DOOR-01")
    async with door as reader:  # type: ignore[attr-defined]
        outcome = await open_door(
            system.central, site=SITE, door_id="D1", open_ms=4000, operator="hq-li"
        )
        assert (outcome.status, outcome.detail) == ("done", "")
        assert [(d, ms) for d, ms, _ in reader.remote_opens] == [("D1", 4000)]
        assert reader.display == "远程开门"

    def site_events() -> list[tuple[str, str]]:
        with edge_db(system.edges[SITE]) as conn:
            return conn.execute(
                "SELECT json_extract(payload, '$.event'), json_extract(payload, '$.detail')"
                " FROM outbox WHERE kind = 'terminal.event'"
            ).fetchall()

    assert site_events() == [("remote_open", "hq-li: done")]

    async def at_hq() -> bool:
        rows = await system.store.run(
            lambda c: c.execute(
                "SELECT count(*) FROM records WHERE site = ? AND kind = 'terminal.event'", (SITE,)
            ).fetchone()[0]
        )
        return rows == 1

    await until(at_hq, within=5)
    assert await system.store.run(audit_rows) == [(f"{SITE}/D1", "accepted", None, "")]


async def test_an_open_that_cannot_happen_says_why_and_is_audited(system: System):
    with pytest.raises(UnknownDoorError):
        await open_door(system.central, site=SITE, door_id="D9", open_ms=3000, operator="hq-li")
    # no door terminal connected
    outcome = await open_door(
        system.central, site=SITE, door_id="D1", open_ms=3000, operator="hq-li"
    )
    assert (outcome.status, outcome.detail) == ("failed", "DOOR-01 is not connected")
    # the site's edge is down: HQ gives up after its wait, the door never opens later
    await system.stop_edge("BJ-CHAOYANG")
    outcome = await open_door(
        system.central,
        site="BJ-CHAOYANG",
        door_id="D1",
        open_ms=3000,
        operator="hq-li",
        answer_s=1.0,
    )
    assert outcome.status == "unreachable"
    rows = await system.store.run(audit_rows)
    assert [(t, o, r) for t, o, r, _ in rows] == [
        (f"{SITE}/D1", "rejected", "failed"),
        ("BJ-CHAOYANG/D1", "rejected", "unreachable"),
    ]


async def test_an_expired_command_is_refused_by_the_edge(system: System):
    door = system.terminal(DoorReader, SITE, "DOOR-01")
    async with door as reader:  # type: ignore[attr-defined]
        issued = datetime.now(UTC) - timedelta(minutes=5)
        late = DoorOpen(
            id="door-late",
            issued_at=issued,
            expires_at=issued + timedelta(seconds=30),
            terminal="DOOR-01",
            door="D1",
            operator="hq-li",
        )
        with system.central.expect_reply(late.id) as answer:
            assert await system.central.send_command(SITE, late)
            reply = await answer
        assert reply.status == "rejected" and reply.detail.startswith("expired at")
        assert reader.remote_opens == []


async def test_the_api_opens_a_door_for_the_roles_that_may(system: System):
    import socket

    import httpx

    from central import queries, users
    from central.web.app import dashboard_server

    tokens = await system.store.run(
        lambda c: {
            role: queries.add_token(c, f"{role}-bot", role)  # type: ignore[arg-type]
            for role in ("operator", "auditor")
        }
    )
    secret = await system.store.run(users.web_key)
    sock = socket.create_server(("127.0.0.1", 0))
    server = dashboard_server(
        system.store, "127.0.0.1", 0, secret_key=secret, service=system.central
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    door = system.terminal(DoorReader, SITE, "DOOR-01")
    try:
        async with door as reader, httpx.AsyncClient(base_url=base, timeout=15) as http:  # type: ignore[attr-defined]

            def call(role: str, door_id: str = "D1", body: object = None) -> object:
                return http.post(
                    f"/api/v1/sites/{SITE}/doors/{door_id}/open",
                    json=body if body is not None else {"open_ms": 2000},
                    headers={"Authorization": f"Bearer {tokens[role]}"},
                )

            done = await call("operator")
            assert done.status_code == 200, done.text
            assert done.json()["status"] == "done"
            assert [(d, ms) for d, ms, _ in reader.remote_opens] == [("D1", 2000)]
            refused = await call("auditor")
            assert refused.status_code == 403
            assert (await call("operator", "D9")).status_code == 404
            bad = await call("operator", body={"open_ms": 90_000})
            assert bad.status_code == 400 and "open_ms" in bad.text
            anonymous = await http.post(f"/api/v1/sites/{SITE}/doors/D1/open", json={})
            assert anonymous.status_code == 401
            assert len(reader.remote_opens) == 1
    finally:
        server.should_exit = True
        await serving


class _SilentDoor(DoorReader):
    """A door controller that never answers DOOR_OPEN (a hung relay board)."""

    async def _on_request(self, frame, body):  # type: ignore[no-untyped-def]
        if isinstance(body, TerminalDoorOpen):
            await asyncio.sleep(5)
            return None
        return await super()._on_request(frame, body)


async def test_a_door_that_does_not_answer_holds_up_nothing_else_at_the_site(system: System):
    """The open waits for its terminal on its own task: a blacklist change sent meanwhile is
    applied at once, not after the terminal gives up."""
    door = system.terminal(_SilentDoor, SITE, "DOOR-01")
    async with door:  # type: ignore[attr-defined]
        opening = asyncio.create_task(
            open_door(system.central, site=SITE, door_id="D1", open_ms=3000, operator="hq-li")
        )
        await asyncio.sleep(0.3)  # the command is at the site, waiting for the terminal
        started = asyncio.get_running_loop().time()
        await system.store.run(lambda c: master.report_lost(c, BOB, at=datetime.now(UTC)))

        async def listed() -> bool:
            with edge_db(system.edges[SITE]) as conn:
                return (
                    conn.execute("SELECT 1 FROM blacklist WHERE uid = ?", (BOB,)).fetchone()
                    is not None
                )

        await until(listed, within=5)
        applied_in = asyncio.get_running_loop().time() - started
        outcome = await opening
    assert applied_in < 1.5, f"the blacklist waited {applied_in:.2f}s behind the door"
    assert (outcome.status, outcome.detail) == ("failed", "DOOR-01 did not answer")
