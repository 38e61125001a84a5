"""``migrate-store``: a real central SQLite database, filled by the product's own operations,
copied into the private PostgreSQL (``pg_dsn``) — every row equal, money sums verified,
identity sequences advanced; refusals that write nothing; a copy taken while central writes.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from click.testing import CliRunner

from central import attendance, master, operations
from central.adapters.postgres_schema import POSTGRES_MIGRATIONS
from central.adapters.postgres_schema import migrate as pg_migrate
from central.adapters.sqlite_alert_schema import ALERT_MIGRATIONS, HEALTH_MIGRATIONS
from central.adapters.sqlite_attendance_schema import ATTENDANCE_MIGRATIONS
from central.adapters.sqlite_door_schema import DOOR_MIGRATIONS
from central.adapters.sqlite_ops_schema import OPS_MIGRATIONS
from central.adapters.sqlite_rollout_schema import ROLLOUT_MIGRATIONS
from central.adapters.sqlite_schema import MIGRATIONS
from central.adapters.sqlite_store import CentralStore
from central.adapters.sqlite_web_schema import WEB_MIGRATIONS
from central.cli import main
from central.core.effects import Accepted
from central.core.money import CorrectPurchase, Recharge
from central.core.state import CardType, Policy
from central.ingest import ingest_batch
from central.migrate_store import (
    MigrateStoreError,
    converter,
    migrate_store,
    parse_sqlite_source,
    redact_dsn,
)
from edge_agent.adapters.sqlite_migrations import migrate as sqlite_migrate
from protocol.messages import DoorAccess, Purchase, RawRecordBatch, decode, encode

#: Picks its own store whatever ONECARD_TEST_STORE says: run once, not once per store.
pytestmark = pytest.mark.store_fixed

SITE = "SZ-FUTIAN"
EPOCH = 1_795_440_000_000
NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
PEOPLE = 30
ALL_SQLITE_MIGRATIONS = (
    MIGRATIONS
    + OPS_MIGRATIONS
    + WEB_MIGRATIONS
    + ATTENDANCE_MIGRATIONS
    + ALERT_MIGRATIONS
    + ROLLOUT_MIGRATIONS
    + DOOR_MIGRATIONS
    + HEALTH_MIGRATIONS
)


def uid(n: int) -> str:
    return f"04{n:012X}"


def purchase(seq: int, person: int, amount: int) -> Purchase:
    return Purchase(
        id=f"{SITE}.{EPOCH}.0.{seq}",
        seq=seq,
        site=SITE,
        at=NOW,
        received_at=NOW,
        offline=False,
        card_uid=uid(person),
        terminal="POS-01",
        term_rec=seq,
        approved=True,
        reason="ok",
        amount=amount,
        cash_fen=amount,
        subsidy_fen=0,
    )


def door(seq: int, person: int) -> DoorAccess:
    return DoorAccess(
        id=f"{SITE}.{EPOCH}.1.{seq}",
        seq=seq,
        site=SITE,
        at=NOW,
        received_at=NOW,
        offline=False,
        card_uid=uid(person),
        door="D1",
        granted=True,
        reason="ok",
        blacklist_version=0,
    )


def raw_batch(records: list[Any], lane: int) -> RawRecordBatch:
    body = {
        "site": SITE,
        "epoch": EPOCH,
        "lane": lane,
        "first_seq": records[0].seq,
        "last_seq": records[-1].seq,
        "records": [json.loads(encode(r)) for r in records],
    }
    return decode(json.dumps(body).encode(), RawRecordBatch)


def recharge(rid: str, person: int, amount: int) -> Recharge:
    return Recharge(
        request_id=rid,
        operator="op-zhang",
        source="hq:cli",
        card_uid=uid(person),
        amount_fen=amount,
        method="cash",
    )


async def fill(store: CentralStore) -> None:
    """People, cards, opening balances, site records (purchases, doors), HQ recharges, a
    correction, departments (a child stored before its parent), leave."""
    seed = msgspec.convert(
        {
            "persons": [{"id": f"P{n}", "name": f"Person {n}"} for n in range(PEOPLE)],
            "cards": [{"uid": uid(n), "person_id": f"P{n}"} for n in range(PEOPLE)],
            "accounts": [
                {"person_id": f"P{n}", "cash_fen": 10_000 + n, "subsidy_fen": 100 * n}
                for n in range(PEOPLE)
            ],
            "sites": {SITE: {}},
        },
        master.CentralSeed,
    )

    def setup(conn: sqlite3.Connection) -> None:
        master.apply_seed(conn, seed, batch="migrate")
        operations.save_card_types(conn, [CardType(name="standard", deposit_fen=2000)])
        operations.save_policy(conn, Policy(cancel_fee_fen=500, reissue_fee_fen=1000))
        attendance.put_department(conn, "SALES", "Sales", None, operator="hr")
        attendance.put_department(conn, "HQ", "Head office", None, operator="hr")
        attendance.put_department(conn, "SALES", "Sales", "HQ", operator="hr")  # child first
        attendance.add_leave(
            conn, "P1", NOW, NOW.replace(hour=9), kind="annual", operator="hr", note="trip"
        )

    await store.run(setup)
    sales = [purchase(seq, seq % PEOPLE, 100 + seq) for seq in range(1, 121)]
    doors = [door(seq, seq % PEOPLE) for seq in range(1, 41)]
    for lane, records in ((0, sales[:60]), (0, sales[60:]), (1, doors)):
        batch = raw_batch(records, lane)
        await store.run(lambda c, b=batch: ingest_batch(c, SITE, b, topic="t", now_ms=EPOCH))
    for n in range(PEOPLE):
        await execute(store, recharge(f"r{n}", n, 500 + n))
    fix = CorrectPurchase(
        request_id="c1",
        operator="op-zhang",
        source="hq:cli",
        original_id=sales[0].id,
        corrected_amount_fen=50,
        reason="mis-keyed",
    )
    await execute(store, fix)


async def execute(store: CentralStore, request: Any) -> None:
    outcome = await store.run(lambda conn: operations.execute(conn, request, now=NOW))
    assert isinstance(outcome.result, Accepted), outcome.result


@pytest.fixture
async def hq_db(tmp_path: Path) -> Path:
    """A populated central database, closed (central stopped)."""
    path = tmp_path / "central.db"
    async with CentralStore.open(path) as store:
        await fill(store)
    return path


def sqlite_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def sqlite_tables(path: Path) -> list[str]:
    rows = sqlite_rows(
        path,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name != 'schema_migrations' ORDER BY name",
    )
    return [r[0] for r in rows]


async def pg_fetch(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def pg_tables(dsn: str) -> list[str]:
    rows = await pg_fetch(
        dsn,
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' ORDER BY table_name",
    )
    return [str(r[0]) for r in rows]


async def pg_counts(dsn: str, tables: list[str]) -> dict[str, int]:
    return {t: (await pg_fetch(dsn, f'SELECT count(*) FROM "{t}"'))[0][0] for t in tables}  # noqa: S608


LEDGER_SUMS = (
    "SELECT person_id, count(*), sum(cash_fen), sum(subsidy_fen), sum(deposit_fen)"
    " FROM ledger GROUP BY person_id ORDER BY person_id"
)


# -- the copy --------------------------------------------------------------------------------------


async def test_every_row_is_copied_equal_and_the_money_sums_are_verified(
    hq_db: Path, pg_dsn: str
) -> None:
    seen: list[tuple[str, int, int]] = []
    report = await migrate_store(
        hq_db, pg_dsn, progress=lambda t, done, total: seen.append((t, done, total))
    )

    tables = sqlite_tables(hq_db)
    order = [t.name for t in report.tables]
    assert sorted(order) == tables
    assert order.index("departments") < order.index("access_dept_grants")  # parents first
    # Every table, row for row (as multisets: the stores order rows differently).
    for table in tables:
        lite = Counter(sqlite_rows(hq_db, f'SELECT * FROM "{table}"'))  # noqa: S608
        pg = Counter(await pg_fetch(pg_dsn, f'SELECT * FROM "{table}"'))  # noqa: S608
        assert pg == lite, table
        assert report.rows_of(table) == sum(lite.values()), table
    records = sqlite_rows(hq_db, "SELECT count(*) FROM records")[0][0]
    assert records == 160 and report.rows_of("records") == records
    # The ledger per person, and the report's totals.
    lite_sums = sqlite_rows(hq_db, LEDGER_SUMS)
    assert await pg_fetch(pg_dsn, LEDGER_SUMS) == [
        (p, n, int(a), int(b), int(c)) for p, n, a, b, c in lite_sums
    ]
    ledger = next(m for m in report.money if m.table == "ledger")
    assert ledger.totals == {
        "cash_fen": sum(r[2] for r in lite_sums),
        "subsidy_fen": sum(r[3] for r in lite_sums),
        "deposit_fen": sum(r[4] for r in lite_sums),
    }
    assert len(ledger.per_person) == PEOPLE
    assert ("ledger", report.rows_of("ledger"), report.rows_of("ledger")) in seen
    assert "verified" in str(report) and "ledger" in str(report)


async def test_identity_sequences_continue_after_the_copied_ids(hq_db: Path, pg_dsn: str) -> None:
    await migrate_store(hq_db, pg_dsn)
    top = sqlite_rows(hq_db, "SELECT max(id) FROM ledger")[0][0]

    rows = await pg_fetch(
        pg_dsn,
        "INSERT INTO ledger (person_id, cash_fen, subsidy_fen, kind, at_ms)"
        " VALUES ('P1', 1, 0, 'test', 1) RETURNING id",
    )
    assert rows == [(top + 1,)]
    identities = await pg_fetch(
        pg_dsn,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND is_identity = 'YES'",
    )
    assert len(identities) >= 10
    for table, column in identities:
        (high,) = sqlite_rows(hq_db, f'SELECT coalesce(max("{column}"), 0) FROM "{table}"')[0]  # noqa: S608
        if table == "ledger":
            high += 1
        (nxt,) = (
            await pg_fetch(pg_dsn, "SELECT nextval(pg_get_serial_sequence($1, $2))", table, column)
        )[0]
        assert nxt == high + 1, table


async def test_a_department_stored_before_its_parent_copies(hq_db: Path, pg_dsn: str) -> None:
    """PostgreSQL enforces the foreign key SQLite only declares; rows are not sorted."""
    order = sqlite_rows(hq_db, "SELECT id, parent_id FROM departments ORDER BY rowid")
    assert order == [("SALES", "HQ"), ("HQ", None)]
    await migrate_store(hq_db, pg_dsn)
    assert sorted(await pg_fetch(pg_dsn, "SELECT id, parent_id FROM departments")) == sorted(
        order, key=lambda r: r[0]
    )


# -- values ----------------------------------------------------------------------------------------


def test_values_are_converted_to_the_column_type_or_refused() -> None:
    bigint, text, bytea, double = (
        converter(t) for t in ("bigint", "text", "bytea", "double precision")
    )
    assert [bigint(v) for v in (7, 7.0, " 42 ", "-3", None)] == [7, 7, 42, -3, None]
    for bad in ("yesterday", 1.5, b"\x01", "9" * 20):
        with pytest.raises(ValueError, match=r"integer|range"):
            bigint(bad)
    assert [text(v) for v in ("a", 12, 1.5, "中文".encode(), None)] == [
        "a",
        "12",
        "1.5",
        "中文",
        None,
    ]
    for bad in (b"\xff\xfe", "a\x00b"):
        with pytest.raises(ValueError, match=r"UTF-8|NUL"):
            text(bad)
    assert [bytea(v) for v in (b"\x00\x01", "{}", None)] == [b"\x00\x01", b"{}", None]
    with pytest.raises(ValueError, match="number"):
        bytea(5)
    assert [double(v) for v in (1.5, 3, "2.25", None)] == [1.5, 3.0, 2.25, None]
    with pytest.raises(ValueError, match="exactly"):
        double(2**63 - 1)
    with pytest.raises(MigrateStoreError, match="no conversion"):
        converter("jsonb")


def loose_schema() -> list[tuple[str, str]]:
    """Central's migrations without STRICT: the same versions and names, but columns that
    hold whatever is bound (within their affinity), as a database built by another tool
    might."""
    return [(name, re.sub(r"\bSTRICT\b,?", "", sql)) for name, sql in ALL_SQLITE_MIGRATIONS]


@pytest.fixture
async def loose_db(tmp_path: Path) -> Path:
    """A populated central database whose tables are not STRICT."""
    path = tmp_path / "loose" / "central.db"
    path.parent.mkdir()
    conn = sqlite3.connect(path, isolation_level=None)
    sqlite_migrate(conn, loose_schema())
    conn.close()
    async with CentralStore.open(path) as store:  # already at the current version
        await fill(store)
    return path


async def test_values_of_another_storage_class_arrive_in_the_column_type(
    loose_db: Path, pg_dsn: str
) -> None:
    """Central's tables are STRICT, so SQLite itself keeps these classes apart; without
    STRICT, text bound to a BLOB column stays text and a blob bound to a TEXT column stays a
    blob (affinity converts only numbers and numeric text): each arrives in PostgreSQL's
    type."""
    conn = sqlite3.connect(loose_db)
    conn.execute("UPDATE records SET payload = CAST(payload AS TEXT) WHERE lane = 1")
    conn.execute("UPDATE settings SET value = CAST(value AS BLOB)")
    conn.execute("UPDATE departments SET name = 42 WHERE id = 'HQ'")  # affinity: '42'
    conn.execute("UPDATE audit SET note = x'6f6b' WHERE id = 1")
    conn.commit()
    kinds = conn.execute(
        "SELECT DISTINCT typeof(payload) FROM records WHERE lane = 1"
        " UNION ALL SELECT DISTINCT typeof(value) FROM settings"
        " UNION ALL SELECT typeof(note) FROM audit WHERE id = 1"
    ).fetchall()
    assert kinds == [("text",), ("blob",), ("blob",)]
    payloads = dict(conn.execute("SELECT id, CAST(payload AS BLOB) FROM records"))
    settings = dict(conn.execute("SELECT key, CAST(value AS TEXT) FROM settings"))
    conn.close()

    await migrate_store(loose_db, pg_dsn)

    assert dict(await pg_fetch(pg_dsn, "SELECT id, payload FROM records")) == payloads
    assert dict(await pg_fetch(pg_dsn, "SELECT key, value FROM settings")) == settings
    assert await pg_fetch(pg_dsn, "SELECT name FROM departments WHERE id = 'HQ'") == [("42",)]
    assert await pg_fetch(pg_dsn, "SELECT note FROM audit WHERE id = 1") == [("ok",)]


async def test_a_value_that_cannot_be_converted_is_refused_and_nothing_is_written(
    loose_db: Path, pg_dsn: str
) -> None:
    conn = sqlite3.connect(loose_db)
    conn.execute("UPDATE ledger SET at_ms = 'yesterday' WHERE id = 3")
    conn.commit()
    conn.close()
    with pytest.raises(MigrateStoreError, match=r"ledger\.at_ms, row \d+: not an integer"):
        await migrate_store(loose_db, pg_dsn)
    assert await pg_tables(pg_dsn) == []  # not even the schema: one transaction


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ("NEW.cash_fen := NEW.cash_fen + 1; RETURN NEW;", r"ledger: \d+ rows \{'cash_fen'"),
        ("RETURN NULL;", r"ledger: \d+ rows in the snapshot, \d+ copied, \d+ in PostgreSQL"),
    ],
    ids=["a fen changed", "a row dropped"],
)
async def test_a_target_that_alters_what_it_receives_fails_verification(
    hq_db: Path, pg_dsn: str, body: str, found: str
) -> None:
    """A trigger on the target (changing one ledger row's cash, or dropping it): the
    read-back counts and sums differ from the snapshot's, and everything is rolled back."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await pg_migrate(conn)
        await conn.execute(
            f"CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$;"
            " CREATE TRIGGER tamper BEFORE INSERT ON ledger FOR EACH ROW"
            " WHEN (NEW.id = 5) EXECUTE FUNCTION tamper()"
        )
    finally:
        await conn.close()
    with pytest.raises(MigrateStoreError, match="verification failed") as failed:
        await migrate_store(hq_db, pg_dsn)
    assert re.search(found, str(failed.value)), str(failed.value)
    tables = sqlite_tables(hq_db)
    assert set((await pg_counts(pg_dsn, tables)).values()) == {0}


# -- refusals --------------------------------------------------------------------------------------


async def test_a_target_holding_central_data_is_refused_and_left_unchanged(
    hq_db: Path, pg_dsn: str
) -> None:
    await migrate_store(hq_db, pg_dsn)
    tables = sqlite_tables(hq_db)
    before = await pg_counts(pg_dsn, tables)
    versions = await pg_fetch(pg_dsn, "SELECT * FROM schema_migrations ORDER BY version")

    with pytest.raises(MigrateStoreError, match="already holds central data"):
        await migrate_store(hq_db, pg_dsn)

    assert await pg_counts(pg_dsn, tables) == before
    assert await pg_fetch(pg_dsn, "SELECT * FROM schema_migrations ORDER BY version") == versions


async def test_one_row_in_a_migrated_target_is_enough_to_refuse(
    hq_db: Path, tmp_path: Path, pg_dsn: str
) -> None:
    """An empty, already migrated target is fine; a single row anywhere is not."""
    empty = tmp_path / "empty" / "central.db"
    async with CentralStore.open(empty):
        pass
    await migrate_store(empty, pg_dsn)  # schema only, every table empty
    await pg_fetch(pg_dsn, "INSERT INTO att_calendar (day, kind) VALUES ('2026-10-01', 'holiday')")
    with pytest.raises(MigrateStoreError, match=r"rows in att_calendar\)"):
        await migrate_store(hq_db, pg_dsn)
    assert await pg_fetch(pg_dsn, "SELECT count(*) FROM ledger") == [(0,)]


async def test_an_older_sqlite_schema_is_refused_with_what_to_do(
    tmp_path: Path, pg_dsn: str
) -> None:
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    sqlite_migrate(conn, ALL_SQLITE_MIGRATIONS[:-1])
    conn.close()
    latest = len(POSTGRES_MIGRATIONS)
    with pytest.raises(MigrateStoreError) as refused:
        await migrate_store(old, pg_dsn)
    message = str(refused.value)
    assert f"schema version {latest - 1}; this onecard's is {latest}" in message
    assert "Start the current onecard-central on it once" in message
    assert await pg_tables(pg_dsn) == []


async def test_a_newer_sqlite_schema_is_refused(hq_db: Path, pg_dsn: str) -> None:
    conn = sqlite3.connect(hq_db)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", (999,))
    conn.commit()
    conn.close()
    with pytest.raises(MigrateStoreError, match="gaps"):
        await migrate_store(hq_db, pg_dsn)
    conn = sqlite3.connect(hq_db)
    conn.execute(
        "UPDATE schema_migrations SET version = ? WHERE version = 999",
        (len(POSTGRES_MIGRATIONS) + 1,),
    )
    conn.commit()
    conn.close()
    with pytest.raises(MigrateStoreError, match="newer than this onecard's"):
        await migrate_store(hq_db, pg_dsn)
    assert await pg_tables(pg_dsn) == []


async def test_a_missing_database_or_an_unreachable_target_is_a_clear_error(
    hq_db: Path, tmp_path: Path, pg_dsn: str
) -> None:
    with pytest.raises(MigrateStoreError, match="no SQLite database at"):
        await migrate_store(tmp_path / "nope.db", pg_dsn)
    bad = pg_dsn.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(MigrateStoreError, match="cannot connect to"):
        await migrate_store(hq_db, bad)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".migrate")]  # noqa: ASYNC240


def test_sources_and_dsns_as_the_operator_writes_them() -> None:
    assert parse_sqlite_source("sqlite:///var/lib/c.db") == Path("/var/lib/c.db")
    assert parse_sqlite_source("sqlite:////var/lib/c.db") == Path("/var/lib/c.db")
    assert parse_sqlite_source("central.db") == Path("central.db")
    with pytest.raises(MigrateStoreError, match="sqlite:///"):
        parse_sqlite_source("sqlite://host/c.db")
    assert redact_dsn("postgresql://hq:s3cret@db:5432/onecard") == (
        "postgresql://hq:***@db:5432/onecard"
    )
    assert redact_dsn("postgresql://hq@db/onecard") == "postgresql://hq@db/onecard"


# -- the command -----------------------------------------------------------------------------------


def test_the_command_copies_then_refuses_a_second_run(hq_db: Path, pg_dsn: str) -> None:
    runner = CliRunner()
    args = ["migrate-store", "--from", f"sqlite://{hq_db}", "--to", pg_dsn]
    done = runner.invoke(main, args)
    assert done.exit_code == 0, done.output
    assert f"migrate-store {hq_db} -> {pg_dsn}" in done.output
    assert "verified in PostgreSQL before commit" in done.output
    counts = asyncio.run(pg_counts(pg_dsn, ["ledger", "records"]))
    assert counts == {
        "ledger": sqlite_rows(hq_db, "SELECT count(*) FROM ledger")[0][0],
        "records": 160,
    }

    again = runner.invoke(main, ["migrate-store", "--from", str(hq_db), "--to", pg_dsn])
    assert again.exit_code == 1
    assert "Error: the target already holds central data" in again.output


def test_the_command_needs_both_ends_and_a_postgresql_url(hq_db: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["migrate-store", "--from", str(hq_db)])
    assert missing.exit_code == 2 and "--to" in missing.output
    wrong = runner.invoke(main, ["migrate-store", "--from", str(hq_db), "--to", "mysql://x/y"])
    assert wrong.exit_code == 2 and "postgresql://" in wrong.output


# -- a live HQ -------------------------------------------------------------------------------------


async def test_a_copy_taken_while_central_writes_is_one_consistent_instant(
    hq_db: Path, pg_dsn: str
) -> None:
    """Central keeps recharging (a ledger row, a balance, a result and an audit line per
    transaction) throughout: the copy holds whole transactions only, as of its snapshot."""
    stop = asyncio.Event()
    wrote = asyncio.Condition()
    written = 0

    async def writer(store: CentralStore) -> None:
        nonlocal written
        while not stop.is_set():
            await execute(store, recharge(f"live-{written}", written % PEOPLE, 1 + written))
            async with wrote:
                written += 1
                wrote.notify_all()

    async def until(count: int) -> None:
        async with wrote:
            await wrote.wait_for(lambda: written >= count)

    async with CentralStore.open(hq_db) as store:
        task = asyncio.create_task(writer(store))
        await until(20)
        before = written
        report = await migrate_store(hq_db, pg_dsn)
        after = written
        await until(after + 20)  # and the writer goes on: the copy never stalled it
        stop.set()
        await task

    live = await pg_fetch(pg_dsn, "SELECT count(*) FROM op_results WHERE request_id LIKE 'live-%'")
    copied = live[0][0]
    assert before <= copied <= after < written
    assert report.rows_of("op_results") == PEOPLE + 1 + copied
    # Whole transactions: every live recharge's ledger row, result and audit line, or none.
    assert await pg_fetch(
        pg_dsn, "SELECT count(*) FROM ledger WHERE record_id LIKE 'op:live-%'"
    ) == [(copied,)]
    assert await pg_fetch(pg_dsn, "SELECT count(*) FROM audit WHERE request_id LIKE 'live-%'") == [
        (copied,)
    ]
    # Every balance is its ledger sums (a torn copy would break this).
    torn = await pg_fetch(
        pg_dsn,
        "SELECT a.person_id FROM accounts a LEFT JOIN ledger l USING (person_id)"
        " GROUP BY a.person_id, a.cash_fen, a.subsidy_fen, a.deposit_fen"
        " HAVING (a.cash_fen, a.subsidy_fen, a.deposit_fen) IS DISTINCT FROM"
        " (coalesce(sum(l.cash_fen), 0), coalesce(sum(l.subsidy_fen), 0),"
        "  coalesce(sum(l.deposit_fen), 0))",
    )
    assert torn == []
    # The counts are the snapshot's, not the file's now.
    tables = [t.name for t in report.tables]
    assert await pg_counts(pg_dsn, tables) == {t.name: t.rows for t in report.tables}
    assert sqlite_rows(hq_db, "SELECT count(*) FROM ledger")[0][0] > report.rows_of("ledger")
