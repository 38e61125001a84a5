"""Central's PostgreSQL schema matches its SQLite schema, version for version.

Against the private cluster (``pg_dsn``): the migrations apply to a fresh database; every
table of a freshly migrated SQLite central database exists in PostgreSQL with the same
columns (in order, NOT NULL alike), the same primary key and the same other indexes
(unique or not, columns in order, partial or not); a second ``migrate`` changes nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from postgres import PrivateCluster, PsqlConnection, PsqlError

from central.adapters.postgres_schema import POSTGRES_MIGRATIONS, migrate
from central.adapters.sqlite_store import CentralStore

#: Picks its own store whatever ONECARD_TEST_STORE says: run once, not once per store.
pytestmark = pytest.mark.store_fixed

#: One index: (unique, its columns in order — None for an expression —, partial).
IndexShape = tuple[bool, tuple[str | None, ...], bool]


def sqlite_migration_names() -> list[str]:
    """The combined SQLite list's names, in the order the store applies them."""
    conn = _migrated_sqlite(None)
    return [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")]


def _migrated_sqlite(path: Path | None) -> sqlite3.Connection:
    """A central SQLite database migrated by the store's own ``migrate``."""
    conn = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
    store = CentralStore(path=path or Path(":memory:"))
    store.migrate(conn)
    return conn


def sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    """User tables (not SQLite's own)."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    return sorted(r[0] for r in rows)


def sqlite_columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, bool]]:
    """(name, NOT NULL) in order; primary-key columns count as NOT NULL (as in PostgreSQL)."""
    return [(r[1], bool(r[3]) or r[5] > 0) for r in conn.execute(f"PRAGMA table_info({table})")]


def sqlite_primary_key(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    """The primary key's columns in key order."""
    cols = [(r[5], r[1]) for r in conn.execute(f"PRAGMA table_info({table})") if r[5] > 0]
    return tuple(name for _, name in sorted(cols))


def sqlite_indexes(conn: sqlite3.Connection, table: str) -> Counter[IndexShape]:
    """Every index but the primary key's, by shape."""
    shapes: Counter[IndexShape] = Counter()
    for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({table})"):
        if origin == "pk":
            continue
        cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_xinfo({name})") if r[5])
        shapes[(bool(unique), cols, bool(partial))] += 1
    return shapes


def sqlite_index_names(conn: sqlite3.Connection) -> set[str]:
    """Indexes created by name (CREATE INDEX), not SQLite's automatic ones."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    return {r[0] for r in rows}


async def pg_tables(pg: PsqlConnection) -> list[str]:
    rows = await pg.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    return sorted(str(r[0]) for r in rows)


async def pg_columns(pg: PsqlConnection) -> dict[str, list[tuple[str, bool]]]:
    """Every public table's (name, NOT NULL) in order (one query: psql is a process each)."""
    rows = await pg.fetch(
        "SELECT table_name, column_name, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    )
    columns: dict[str, list[tuple[str, bool]]] = {}
    for table, name, nullable in rows:
        columns.setdefault(str(table), []).append((str(name), nullable == "NO"))
    return columns


async def pg_indexes(pg: PsqlConnection) -> dict[str, list[tuple[str | None, ...]]]:
    """Every public table's indexes as (name, primary, unique, partial, columns '|'-joined,
    '' standing for an expression)."""
    rows = await pg.fetch(
        "SELECT t.relname, c.relname, i.indisprimary, i.indisunique, i.indpred IS NOT NULL,"
        " array_to_string(ARRAY("
        "   SELECT coalesce(a.attname, '') FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
        "   LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        "   ORDER BY k.n), '|')"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_class t ON t.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public'"
    )
    indexes: dict[str, list[tuple[str | None, ...]]] = {}
    for row in rows:
        indexes.setdefault(str(row[0]), []).append(row[1:])
    return indexes


def _pg_shape(row: tuple[str | None, ...]) -> IndexShape:
    cols = tuple(c or None for c in str(row[4]).split("|"))
    return (row[2] == "t", cols, row[3] == "t")


@pytest.fixture
def sqlite_central(tmp_path: Path) -> sqlite3.Connection:
    """A freshly migrated SQLite central database on disk."""
    return _migrated_sqlite(tmp_path / "central.db")


def test_migrations_mirror_the_sqlite_list_one_for_one() -> None:
    """Same count, names and order: a version number means the same on both stores."""
    assert [name for name, _ in POSTGRES_MIGRATIONS] == sqlite_migration_names()


async def test_migrate_applies_every_migration_and_a_second_run_is_a_no_op(pg_dsn: str) -> None:
    pg = PsqlConnection(pg_dsn)
    assert await migrate(pg) == list(range(1, len(POSTGRES_MIGRATIONS) + 1))
    before = await pg.fetch("SELECT version, name, applied_ms FROM schema_migrations ORDER BY 1")
    tables = await pg_tables(pg)

    assert await migrate(pg) == []

    assert (
        await pg.fetch("SELECT version, name, applied_ms FROM schema_migrations ORDER BY 1")
        == before
    )
    assert await pg_tables(pg) == tables
    assert [r[1] for r in before] == [name for name, _ in POSTGRES_MIGRATIONS]


async def test_every_sqlite_table_exists_with_the_same_columns_and_indexes(
    pg_dsn: str, sqlite_central: sqlite3.Connection
) -> None:
    pg = PsqlConnection(pg_dsn)
    await migrate(pg)
    lite_tables = sqlite_tables(sqlite_central)
    assert await pg_tables(pg) == lite_tables

    columns, indexes = await pg_columns(pg), await pg_indexes(pg)
    pg_named: set[str] = set()
    for table in lite_tables:
        assert columns[table] == sqlite_columns(sqlite_central, table), table
        rows = indexes[table]
        primary = [tuple(str(r[4]).split("|")) for r in rows if r[1] == "t"]
        assert primary == [sqlite_primary_key(sqlite_central, table)], table
        others = Counter(_pg_shape(r) for r in rows if r[1] != "t")
        assert others == sqlite_indexes(sqlite_central, table), table
        pg_named |= {str(r[0]) for r in rows}
    assert sqlite_index_names(sqlite_central) <= pg_named


async def test_a_failed_migration_leaves_the_previous_version(pg_dsn: str) -> None:
    """Each migration is atomic with its version row: a failing one applies nothing."""
    pg = PsqlConnection(pg_dsn)
    broken = [*POSTGRES_MIGRATIONS[:1], ("broken", "CREATE TABLE half (x BIGINT); SELECT 1/0;")]
    with pytest.raises(PsqlError, match="division by zero"):
        await migrate(pg, broken)
    assert await pg.fetch("SELECT version FROM schema_migrations") == [("1",)]
    assert "half" not in await pg_tables(pg)


#: SQLite's declared type → PostgreSQL's (the rules in postgres_schema's docstring); the
#: one exception: an INTEGER PRIMARY KEY is an identity column (still bigint).
PG_TYPE = {"INTEGER": "bigint", "TEXT": "text", "BLOB": "bytea", "REAL": "double precision"}


async def test_column_types_follow_the_translation_rules(
    pg_dsn: str, sqlite_central: sqlite3.Connection
) -> None:
    """INTEGER → bigint everywhere, BLOB → bytea, TEXT (JSON too) → text, REAL → double;
    SQLite's rowid aliases are identity columns."""
    pg = PsqlConnection(pg_dsn)
    await migrate(pg)
    rows = await pg.fetch(
        "SELECT table_name, column_name, data_type, is_identity FROM information_schema.columns"
        " WHERE table_schema = 'public'"
    )
    pg_types = {(str(t), str(c)): (str(d), i == "YES") for t, c, d, i in rows}
    for table in sqlite_tables(sqlite_central):
        info = list(sqlite_central.execute(f"PRAGMA table_info({table})"))
        pk_cols = [r for r in info if r[5] > 0]
        for _, name, decl, _, _, pk in info:
            rowid_alias = (
                pk == 1 and len(pk_cols) == 1 and decl == "INTEGER" and table != "schema_migrations"
            )
            expected = (PG_TYPE[decl], rowid_alias)
            assert pg_types[(table, name)] == expected, (table, name)


async def test_workers_migrating_at_once_apply_each_version_once(pg_dsn: str) -> None:
    """Two migrators racing on one empty database: no error, every version once."""
    first, second = await asyncio.gather(
        migrate(PsqlConnection(pg_dsn)), migrate(PsqlConnection(pg_dsn))
    )
    pg = PsqlConnection(pg_dsn)
    versions = [
        int(str(r[0])) for r in await pg.fetch("SELECT version FROM schema_migrations ORDER BY 1")
    ]
    assert versions == list(range(1, len(POSTGRES_MIGRATIONS) + 1))
    assert set(first) | set(second) == set(versions)


def test_the_cluster_is_private(pg_cluster: PrivateCluster) -> None:
    """Loopback only, on its own port and socket directory, never the machine's 5432."""
    assert pg_cluster.port != 5432
    settings = pg_cluster.psql(
        "SELECT current_setting('listen_addresses'), current_setting('port'),"
        " current_setting('unix_socket_directories'), current_setting('fsync')"
    )
    assert settings.strip().split("|") == [
        "127.0.0.1",
        str(pg_cluster.port),
        str(pg_cluster.socket_dir),
        "off",
    ]
