"""Access administration at HQ: levels, zones and groups per site with their references
checked, grants to persons and departments kept in step with membership, every change
audited — and enforced at a real site's door over a real mosquitto within seconds."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from stores import central_db, open_store
from sync_system import ALICE, BOB, System, until

from central import access, attendance, master
from central.adapters.sqlite_store import CentralStore
from central.cli import main as cli
from edge_agent.core.model import AccessGrant, AccessLevel, Door, DoorGroup, Person, TimeZone
from firmware_sim.terminals import DoorReader

SITE = "SZ-FUTIAN"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CentralStore]:
    seed = msgspec.convert(
        {
            "persons": [
                {"id": "P1", "name": "安娜", "kind": "staff", "department": "ops-east"},
                {"id": "P2", "name": "鲍勃", "kind": "staff", "department": "finance"},
            ],
            "sites": {
                SITE: {
                    "door_groups": [{"id": "MAIN"}],
                    "time_zones": [{"id": "24H", "weekly": {"0": [[0, 1440]]}}],
                }
            },
        },
        master.CentralSeed,
        strict=False,
    )

    def setup(conn: sqlite3.Connection) -> None:
        master.apply_seed(conn, seed, batch="t")
        for dept, parent in (("hq", None), ("ops", "hq"), ("ops-east", "ops"), ("finance", "hq")):
            attendance.put_department(conn, dept, dept, parent, operator="hr")

    async with open_store(central_db(tmp_path)) as central:
        await central.run(setup)
        yield central


def grants(conn: sqlite3.Connection) -> dict[str, tuple[str | None, str | None]]:
    return {
        key: (
            msgspec.json.decode(data).get("valid_from"),
            msgspec.json.decode(data).get("valid_to"),
        )
        for key, data in conn.execute(
            "SELECT key, data FROM master WHERE entity = 'access_grant' ORDER BY key"
        )
    }


async def test_site_access_data_checks_what_it_refers_to(store: CentralStore):
    level = AccessLevel(id="STAFF", door_group_id="MAIN", time_zone_id="NIGHT")
    with pytest.raises(access.AccessError, match="no time zone NIGHT at SZ-FUTIAN"):
        await store.run(lambda c: access.put(c, SITE, level, operator="it"))
    door = Door(id="D9", group_id="SIDE", terminal_id="DOOR-09")
    with pytest.raises(access.AccessError, match="no door group SIDE"):
        await store.run(lambda c: access.put(c, SITE, door, operator="it"))
    with pytest.raises(access.AccessError, match="unknown site"):
        await store.run(lambda c: access.put(c, "NOWHERE", DoorGroup(id="G"), operator="it"))
    fine = AccessLevel(id="STAFF", door_group_id="MAIN", time_zone_id="24H")
    await store.run(lambda c: access.put(c, SITE, fine, operator="it"))
    with pytest.raises(access.AccessError, match="still used by access_level STAFF"):
        await store.run(lambda c: access.remove(c, SITE, "time_zone", "24H", operator="it"))
    await store.run(
        lambda c: access.grant(
            c, AccessGrant(person_id="P2", access_level_id="STAFF"), operator="it"
        )
    )
    with pytest.raises(access.AccessError, match="still granted"):
        await store.run(lambda c: access.remove(c, SITE, "access_level", "STAFF", operator="it"))
    audit = await store.run(
        lambda c: c.execute(
            "SELECT action, target FROM audit WHERE action LIKE 'access.%'"
        ).fetchall()
    )
    assert audit == [("access.access_level_put", f"{SITE}/STAFF"), ("access.grant", "P2:STAFF")]


async def test_a_department_grant_follows_membership_and_never_touches_own_grants(
    store: CentralStore,
):
    level = AccessLevel(id="STAFF", door_group_id="MAIN", time_zone_id="24H")
    await store.run(lambda c: access.put(c, SITE, level, operator="it"))
    until_new_year = datetime(2027, 1, 1, tzinfo=UTC)
    changed = await store.run(
        lambda c: access.grant_department(c, "ops", "STAFF", valid_to=until_new_year, operator="it")
    )
    assert changed == 1  # P1 is in ops-east, under ops; P2 is in finance
    assert await store.run(grants) == {"P1:STAFF": (None, "2027-01-01T00:00:00Z")}
    # P2 joins ops-east: the next sync (central's housekeeping) grants P2 too
    await store.run(
        lambda c: master.upsert(
            c,
            "",
            "person",
            "P2",
            msgspec.json.encode(Person(id="P2", name="鲍勃", kind="staff", department="ops-east")),
        )
    )
    assert await store.run(access.sync_department_grants) == 1
    assert set(await store.run(grants)) == {"P1:STAFF", "P2:STAFF"}
    assert await store.run(access.sync_department_grants) == 0  # idempotent
    # P1's own grant (no end) replaces the derived one and survives the department's revoke
    own = AccessGrant(person_id="P1", access_level_id="STAFF")
    await store.run(lambda c: access.grant(c, own, operator="it"))
    await store.run(lambda c: access.revoke_department(c, "ops", "STAFF", operator="it"))
    assert await store.run(grants) == {"P1:STAFF": (None, None)}
    shown = await store.run(lambda c: access.grants_of(c, "P1"))
    assert [(g["access_level_id"], g["derived"]) for g in shown] == [("STAFF", False)]
    with pytest.raises(access.AccessError, match="holds no grant of their own"):
        await store.run(lambda c: access.revoke(c, "P2", "STAFF", operator="it"))


def test_time_zones_are_typed_the_way_operators_say_them(tmp_path: Path):
    weekly = access.parse_weekly(["mon-fri 08:00-12:00,13:00-18:00", "sat 09:00-24:00"])
    assert [(i.start, i.end) for i in weekly[0]] == [(480, 720), (780, 1080)]
    assert [(i.start, i.end) for i in weekly[5]] == [(540, 1440)]
    assert 6 not in weekly
    for bad, message in [
        (["mon-fri"], "expected days and spans"),
        (["fri-mon 08:00-09:00"], "not a day or a range"),
        (["mon 18:00-08:00"], "end must be after the start"),
        (["holiday 08:00-09:00"], "not a weekday"),
        (["mon 8h-9h"], "not a span"),
    ]:
        with pytest.raises(access.AccessError, match=message):
            access.parse_weekly(bad)
    runner = CliRunner()
    db = ["--db", str(central_db(tmp_path))]
    result = runner.invoke(cli, ["access", "zone", SITE, "Z", "--weekly", "mon-fri 9-18", *db])
    assert result.exit_code == 2 and "not a span" in result.output
    result = runner.invoke(cli, ["access", "grant", "P1", "L", "--to", "2027-01-01", *db])
    assert result.exit_code == 2 and "needs its zone" in result.output


@pytest.mark.integration
async def test_an_access_change_at_hq_is_enforced_at_the_sites_door_within_seconds(
    system: System,
):
    """Bob loses the level at SZ-FUTIAN's door; then the level's time zone closes for
    everyone there — while the other site, with its own level, is unaffected."""
    door_a = system.terminal(DoorReader, "SZ-FUTIAN", "DOOR-01")
    door_b = system.terminal(DoorReader, "BJ-CHAOYANG", "DOOR-01")
    loop = asyncio.get_running_loop()
    async with door_a as a, door_b as b:  # type: ignore[attr-defined]
        assert (await a.tap(BOB)).ok and (await a.tap(ALICE)).ok

        def revoke_bob(conn: sqlite3.Connection) -> None:
            # the seed gave both their grants directly
            access.revoke(conn, "P2", "ALL", operator="hq-ops")

        await system.store.run(revoke_bob)
        started = loop.time()

        async def bob_refused() -> bool:
            return not (await a.tap(BOB)).ok

        await until(bob_refused, within=5)
        revoked_in = loop.time() - started
        assert (await a.tap(ALICE)).ok

        closed = TimeZone(id="CLOSED", weekly={})
        moved = AccessLevel(id="ALL", door_group_id="MAIN", time_zone_id="CLOSED")

        def close_the_door(conn: sqlite3.Connection) -> None:
            access.put(conn, "SZ-FUTIAN", closed, operator="hq-ops")
            access.put(conn, "SZ-FUTIAN", moved, operator="hq-ops")

        await system.store.run(close_the_door)
        started = loop.time()

        async def alice_refused() -> bool:
            return not (await a.tap(ALICE)).ok

        await until(alice_refused, within=5)
        closed_in = loop.time() - started
        assert (await b.tap(ALICE)).ok  # BJ-CHAOYANG's level ALL still uses its own 24H
    assert revoked_in < 2.0, f"the revoke took {revoked_in:.2f}s"
    assert closed_in < 2.0, f"the closed time zone took {closed_in:.2f}s"
    actions = await system.store.run(
        lambda c: [r[0] for r in c.execute("SELECT action FROM audit WHERE operator = 'hq-ops'")]
    )
    assert actions == ["access.revoke", "access.time_zone_put", "access.access_level_put"]


def test_the_cli_builds_a_sites_doors_and_grants_in_order(tmp_path: Path):
    runner = CliRunner()
    db = ["--db", str(central_db(tmp_path))]

    def run(*args: str) -> str:
        result = runner.invoke(cli, [*args, *db])
        assert result.exit_code == 0, result.output
        return result.output

    seed = tmp_path / "seed.json"
    seed.write_text(
        '{"persons": [{"id": "P1", "name": "Ann", "kind": "staff", "department": "ops"}],'
        ' "sites": {"SZ-FUTIAN": {}}}'
    )
    run("seed", str(seed))
    run("dept", "put", "ops", "运营")
    run("access", "group", SITE, "MAIN", "--anti-passback", "hard")
    run("access", "door", SITE, "D1", "--group", "MAIN", "--terminal", "DOOR-01")
    run("access", "zone", SITE, "OFFICE", "--weekly", "mon-fri 08:00-19:00")
    run("access", "holiday", SITE, "2026-10-01", "--name", "国庆节")
    run("access", "level", SITE, "STAFF", "--group", "MAIN", "--zone", "OFFICE")
    out = run("access", "grant-dept", "ops", "STAFF", "--to", "2027-01-01T00:00+08:00")
    assert "1 person grants written" in out
    assert "STAFF" in run("access", "show", "P1") and "department" in run("access", "show", "P1")
    refused = runner.invoke(cli, ["access", "remove", SITE, "time_zone", "OFFICE", *db])
    assert refused.exit_code == 1 and "still used by access_level STAFF" in refused.output
    assert "0 person grants" not in run("access", "revoke-dept", "ops", "STAFF")
    assert run("access", "show", "P1") == ""
