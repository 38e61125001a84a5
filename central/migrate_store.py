"""``onecard-central migrate-store``: copy an HQ's SQLite database into PostgreSQL, verified.

The copy is taken from a **snapshot**, not from the live file: SQLite's online backup
(``Connection.backup`` with ``pages=-1``, a single step under one read transaction) writes
a consistent image of the database into a temporary directory next to it, and everything
after reads that image. Central may keep writing meanwhile (WAL: a reader never blocks the
writer), and what is copied is the database as of one instant — never half a batch.
Reading the live file inside one long read transaction would be as consistent and would
need no disk space, but it would pin the WAL for the whole copy to PostgreSQL (minutes on a
big HQ): central's checkpoints could not complete and its WAL would grow. The backup pins
it only for a local file copy, and the snapshot also gives the figures the target is
verified against, unchanged while we verify.

Then, in **one PostgreSQL transaction** (so a refusal or a failure leaves the target as it
was — no tables even, if it had none):

1. refuse if any of central's tables in the target already holds a row;
2. create the schema (:func:`central.adapters.postgres_schema.migrate`) and check that
   both stores are at the same schema version with the same migration names;
3. copy every table found in the snapshot's ``sqlite_master`` (not SQLite's own tables,
   not ``schema_migrations``, which the target keeps itself) with ``COPY``, one statement
   per table fed in chunks of :data:`CHUNK_ROWS` rows (memory stays bounded; a
   self-referencing foreign key, ``departments.parent_id``, is checked at the end of the
   statement, so a child stored before its parent still copies). Values are converted to
   the target column's type — see :func:`converter`;
4. move every identity column's sequence past the largest copied id;
5. verify: every table's row count, and the ledger's and the accounts' money sums
   (integer fen), overall and per person, read back from PostgreSQL inside the
   transaction; any difference rolls everything back.

The SQLite database must be at exactly this onecard's schema version (start the current
``onecard-central`` on it once to migrate it); the target must be a fresh database.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from central.adapters.postgres_schema import POSTGRES_MIGRATIONS, migrate

__all__ = [
    "CHUNK_ROWS",
    "MigrateStoreError",
    "MigrationReport",
    "TableCopy",
    "converter",
    "migrate_store",
    "parse_sqlite_source",
]

#: Rows read from the snapshot and handed to ``COPY`` at a time.
CHUNK_ROWS = 5000

#: Serialises migrate-store runs on one target (the second then finds rows and refuses).
COPY_LOCK_KEY = 0x6F6E6563617265  # "onecare"

#: Tables the copy leaves alone: each store records its own migrations.
BOOKKEEPING = frozenset({"schema_migrations"})

#: The ledger and the balances derived from it: their ``*_fen`` sums are verified.
MONEY_TABLES = ("ledger", "accounts")

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_INT64 = (-(2**63), 2**63 - 1)

#: ``progress(table, rows_copied, rows_in_table)``, called after every chunk.
Progress = Callable[[str, int, int], None]


class MigrateStoreError(RuntimeError):
    """Refused or failed; nothing was written to the target. The message says why and what
    to do."""


@dataclass(frozen=True)
class TableCopy:
    """One table's copy."""

    name: str
    rows: int
    seconds: float


@dataclass(frozen=True)
class MoneySums:
    """A money table's ``*_fen`` sums: overall, and per person (compared, not printed)."""

    table: str
    rows: int
    totals: dict[str, int]
    per_person: dict[str, tuple[int, ...]] = field(repr=False)


@dataclass
class MigrationReport:
    """What was copied and verified. ``str(report)`` is the table the CLI prints."""

    source: Path
    target: str
    schema_version: int
    snapshot_seconds: float
    tables: list[TableCopy]
    money: list[MoneySums]
    seconds: float

    @property
    def rows(self) -> int:
        """Rows copied in all."""
        return sum(t.rows for t in self.tables)

    def rows_of(self, table: str) -> int:
        """Rows copied into ``table``."""
        return next(t.rows for t in self.tables if t.name == table)

    def __str__(self) -> str:
        width = max([len("total"), *(len(t.name) for t in self.tables)])
        lines = [
            f"migrate-store {self.source} -> {self.target}",
            (
                f"schema version {self.schema_version}; snapshot {self.snapshot_seconds:.2f} s;"
                f" total {self.seconds:.2f} s"
            ),
            "",
            f"{'table':<{width}} {'rows':>12} {'seconds':>9}",
        ]
        lines += [f"{t.name:<{width}} {t.rows:>12,} {t.seconds:>9.2f}" for t in self.tables]
        copy_s = sum(t.seconds for t in self.tables)
        lines += [f"{'total':<{width}} {self.rows:>12,} {copy_s:>9.2f}", ""]
        for sums in self.money:
            figures = ", ".join(f"{k} {v:,}" for k, v in sums.totals.items())
            lines.append(
                f"{sums.table}: {sums.rows:,} rows, {len(sums.per_person):,} persons; {figures}"
            )
        lines.append(
            "verified in PostgreSQL before commit: every table's row count; the ledger's and"
            " the accounts' fen sums, overall and per person"
        )
        return "\n".join(lines)


def parse_sqlite_source(text: str) -> Path:
    """``sqlite:///abs/path/central.db`` (``sqlite:////abs/…`` too) or a plain path."""
    if text.startswith("sqlite:"):
        rest = text.removeprefix("sqlite:")
        if not rest.startswith("///"):
            raise MigrateStoreError(f"{text!r}: use sqlite:///absolute/path/central.db")
        return Path("/" + rest.lstrip("/"))
    return Path(text)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and the report."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable DSN>"


# -- values ---------------------------------------------------------------------------------------


def _to_bigint(value: Any) -> Any:
    # INTEGER affinity already made integral text and reals ints; what is left is either
    # an int or a value SQLite could not convert (text like "12 ", a blob) — take the
    # unambiguous ones, refuse the rest.
    integral = (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value)
    )
    if value is None or type(value) is int:
        result = value
    elif integral:
        result = int(value)
    else:
        raise ValueError("not an integer")
    if result is not None and not _INT64[0] <= result <= _INT64[1]:
        raise ValueError("outside BIGINT's range")
    return result


def _to_text(value: Any) -> Any:
    # TEXT affinity stores numbers as text already; a blob bound to a TEXT column stays a
    # blob in SQLite, and PostgreSQL's text must be valid UTF-8 without NUL.
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a blob that is not UTF-8 text") from None
    elif isinstance(value, int | float):
        value = str(value)
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("text holding a NUL character")
    return value


def _to_bytea(value: Any) -> Any:
    # A BLOB column has no affinity: a str bound to it is stored as text.
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError("a number in a BLOB column")


def _to_double(value: Any) -> Any:
    if value is None or isinstance(value, float):
        return value
    if type(value) is int:
        if float(value) != value:
            raise ValueError("an integer a double cannot hold exactly")
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError("not a number") from None
    raise ValueError("a blob in a REAL column")


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bigint": _to_bigint,
    "text": _to_text,
    "bytea": _to_bytea,
    "double precision": _to_double,
}


def converter(pg_type: str) -> Callable[[Any], Any]:
    """The function that turns a value read from SQLite into one for a PostgreSQL column
    of ``pg_type`` (``information_schema.columns.data_type``), or raises ``ValueError``.

    asyncpg's ``COPY`` encoder accepts exactly the Python type of the column. Central's
    tables are STRICT, so SQLite already keeps each column's storage class (INTEGER holds
    ints, TEXT str, BLOB bytes, REAL floats); a table without STRICT holds whatever was
    bound, within its affinity (which converts numbers and numeric text, never a blob into
    TEXT or text into a BLOB column). So nothing is left to chance. Explicitly:

    - ``bigint``: int; an integral float; integer text (surrounding spaces allowed). Else
      refused — never truncated.
    - ``text``: str; an int or float as its decimal text; a UTF-8 blob as its text.
      Refused: a blob that is not UTF-8, a NUL character (PostgreSQL cannot store it).
    - ``bytea``: bytes; text as its UTF-8 bytes. A number is refused.
    - ``double precision``: float; an int that a double holds exactly; numeric text.

    NULL stays NULL (PostgreSQL's NOT NULL constraints then decide). Another column type
    is refused when the copy is planned, before a row is read.
    """
    try:
        return _CONVERTERS[pg_type]
    except KeyError:
        raise MigrateStoreError(f"no conversion into a PostgreSQL {pg_type} column") from None


# -- the snapshot ---------------------------------------------------------------------------------


def take_snapshot(source: Path, dest: Path) -> None:
    """A consistent copy of ``source`` at ``dest`` (SQLite's online backup, one step)."""
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(dest)
        try:
            # pages=-1: one backup step, inside one read transaction on the source; a
            # stepwise backup would restart whenever central commits in between.
            src.backup(dst, pages=-1)
        finally:
            dst.close()
    finally:
        src.close()


@dataclass(frozen=True)
class SourceTable:
    """A table of the snapshot: its columns in order and its row count."""

    name: str
    columns: list[str]
    rows: int


def _quoted(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise MigrateStoreError(f"unexpected table or column name {name!r} in the SQLite database")
    return f'"{name}"'


def read_versions(snap: sqlite3.Connection) -> list[tuple[int, str]]:
    """The snapshot's applied migrations, (version, name) in order."""
    try:
        rows = snap.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        return [(int(v), str(n)) for v, n in rows]
    except sqlite3.DatabaseError as exc:
        raise MigrateStoreError(
            f"not an onecard-central database (no schema_migrations: {exc})"
        ) from None


def check_versions(versions: list[tuple[int, str]], source: Path) -> int:
    """Refuse unless the SQLite database's ``versions`` are exactly this onecard's
    migrations (the PostgreSQL list mirrors SQLite's one for one); return the version."""
    store = f"the SQLite database {source}"
    expected = [name for name, _ in POSTGRES_MIGRATIONS]
    have = len(versions)
    if [v for v, _ in versions] != list(range(1, have + 1)):
        raise MigrateStoreError(f"{store} has gaps in its schema_migrations: {versions}")
    if have < len(expected):
        raise MigrateStoreError(
            f"{store} is at schema version {have}; this onecard's is"
            f" {len(expected)}. Start the current onecard-central on it once so that it"
            f" migrates (e.g. `onecard-central site list --db {source}`), then run"
            f" migrate-store again."
        )
    if have > len(expected):
        raise MigrateStoreError(
            f"{store} is at schema version {have}, newer than this onecard's"
            f" {len(expected)}: run migrate-store from the onecard version that wrote it."
        )
    names = [n for _, n in versions]
    if names != expected:
        wrong = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
        raise MigrateStoreError(
            f"{store}'s migration {wrong + 1} is {names[wrong]!r}, this onecard's is"
            f" {expected[wrong]!r}: not the same schema"
        )
    return have


def read_tables(snap: sqlite3.Connection) -> list[SourceTable]:
    """Every table to copy, parents before the tables whose foreign keys point at them."""
    names = sorted(
        r[0]
        for r in snap.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        if r[0] not in BOOKKEEPING
    )
    parents = {
        name: {
            r[2] for r in snap.execute(f"PRAGMA foreign_key_list({_quoted(name)})") if r[2] != name
        }
        for name in names
    }
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= {*ordered}]
        if not ready:  # a cycle between tables: keep SQLite's order, PostgreSQL will judge
            ready = [n for n in names if n not in ordered]
        ordered += ready
    tables = []
    for name in ordered:
        columns = [r[1] for r in snap.execute(f"PRAGMA table_info({_quoted(name)})")]
        (rows,) = snap.execute(f"SELECT count(*) FROM {_quoted(name)}").fetchone()  # noqa: S608
        tables.append(SourceTable(name, columns, int(rows)))
    return tables


def sqlite_sequences(snap: sqlite3.Connection) -> dict[str, int]:
    """AUTOINCREMENT high-water marks (ids never reused), if any table uses it."""
    if not snap.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        return {}
    return {str(n): int(s) for n, s in snap.execute("SELECT name, seq FROM sqlite_sequence")}


def sqlite_money(snap: sqlite3.Connection, table: SourceTable) -> MoneySums:
    """``table``'s ``*_fen`` sums in the snapshot."""
    fen = [c for c in table.columns if c.endswith("_fen")]
    sums = ", ".join(f"coalesce(sum({_quoted(c)}), 0)" for c in fen)
    quoted = _quoted(table.name)
    totals = snap.execute(f"SELECT count(*), {sums} FROM {quoted}").fetchone()  # noqa: S608
    per_person = {
        str(r[0]): tuple(int(v) for v in r[1:])
        for r in snap.execute(
            f"SELECT person_id, {sums} FROM {quoted} GROUP BY person_id"  # noqa: S608
        )
    }
    return MoneySums(
        table.name,
        int(totals[0]),
        dict(zip(fen, (int(v) for v in totals[1:]), strict=True)),
        per_person,
    )


# -- PostgreSQL -----------------------------------------------------------------------------------


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=30)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise MigrateStoreError(f"cannot connect to {redact_dsn(dsn)}: {exc}") from None


async def _refuse_rows(conn: asyncpg.Connection, tables: list[SourceTable]) -> None:
    """Refuse a target where any of our tables holds a row."""
    existing = {
        str(r[0])
        for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
    }
    full = [
        t.name
        for t in tables
        if t.name in existing
        and await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {_quoted(t.name)})")  # noqa: S608
    ]
    if full:
        raise MigrateStoreError(
            f"the target already holds central data (rows in {', '.join(full)}); nothing was"
            " written. migrate-store copies into a fresh database only: create an empty one"
            " (or drop and re-create this one) and run it again."
        )


async def _pg_columns(conn: asyncpg.Connection) -> dict[str, dict[str, tuple[str, bool]]]:
    """Every table's columns: name -> (data_type, is an identity column)."""
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_identity FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    )
    columns: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, column, data_type, identity in rows:
        columns.setdefault(table, {})[column] = (data_type, identity == "YES")
    return columns


@dataclass(frozen=True)
class CopyPlan:
    """One table: the columns to copy (SQLite's, all present in PostgreSQL) and their
    converters."""

    table: SourceTable
    columns: list[str]
    convert: list[Callable[[Any], Any]]


def plan(table: SourceTable, pg: dict[str, dict[str, tuple[str, bool]]]) -> CopyPlan:
    """The columns both stores have. A SQLite column missing in PostgreSQL is refused
    (its data would be lost); a PostgreSQL-only column takes its default."""
    target = pg.get(table.name)
    if target is None:
        raise MigrateStoreError(f"table {table.name} has no counterpart in PostgreSQL")
    missing = [c for c in table.columns if c not in target]
    if missing:
        raise MigrateStoreError(
            f"{table.name}: column(s) {', '.join(missing)} have no counterpart in PostgreSQL"
        )
    columns = [c for c in table.columns if c in target]
    return CopyPlan(table, columns, [converter(target[c][0]) for c in columns])


async def _copy_table(
    conn: asyncpg.Connection,
    snap: sqlite3.Connection,
    how: CopyPlan,
    progress: Progress | None,
    chunk_rows: int,
) -> TableCopy:
    """One ``COPY`` for the table, fed from the snapshot ``chunk_rows`` rows at a time."""
    name, started = how.table.name, time.monotonic()
    copied = 0
    select = ", ".join(_quoted(c) for c in how.columns)
    cursor = snap.execute(f"SELECT {select} FROM {_quoted(name)}")  # noqa: S608

    async def rows() -> AsyncIterator[tuple[Any, ...]]:
        nonlocal copied
        while chunk := await asyncio.to_thread(cursor.fetchmany, chunk_rows):
            for raw in chunk:
                yield _converted(how, raw, copied)
                copied += 1
            if progress is not None:
                progress(name, copied, how.table.rows)

    try:
        await conn.copy_records_to_table(name, records=rows(), columns=how.columns)
    except asyncpg.PostgresError as exc:
        raise MigrateStoreError(
            f"{name}: PostgreSQL refused a row ({type(exc).__name__}: {exc}); nothing was written"
        ) from None
    finally:
        cursor.close()
    return TableCopy(name, copied, time.monotonic() - started)


def _converted(how: CopyPlan, raw: tuple[Any, ...], index: int) -> tuple[Any, ...]:
    out = []
    for column, convert, value in zip(how.columns, how.convert, raw, strict=True):
        try:
            out.append(convert(value))
        except ValueError as exc:
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise MigrateStoreError(
                f"{how.table.name}.{column}, row {index + 1}: {exc} ({shown}); nothing was written"
            ) from None
    return tuple(out)


async def _advance_identities(
    conn: asyncpg.Connection,
    pg: dict[str, dict[str, tuple[str, bool]]],
    tables: list[SourceTable],
    sequences: dict[str, int],
) -> None:
    """Every identity column's next value: past the largest id copied (and past SQLite's
    AUTOINCREMENT mark), so the next INSERT does not collide."""
    for table in tables:
        for column, (_, identity) in pg[table.name].items():
            if not identity:
                continue
            top = await conn.fetchval(
                f"SELECT max({_quoted(column)}) FROM {_quoted(table.name)}"  # noqa: S608
            )
            high = max(int(top or 0), sequences.get(table.name, 0))
            if high > 0:
                await conn.execute(
                    "SELECT setval(pg_get_serial_sequence($1, $2), $3, false)",
                    _quoted(table.name),
                    column,
                    high + 1,
                )


async def _pg_money(conn: asyncpg.Connection, expected: MoneySums) -> MoneySums:
    fen = list(expected.totals)
    sums = ", ".join(f"coalesce(sum({_quoted(c)}), 0)" for c in fen)
    quoted = _quoted(expected.table)
    totals = await conn.fetchrow(f"SELECT count(*), {sums} FROM {quoted}")  # noqa: S608
    per_person = {
        str(r[0]): tuple(int(v) for v in r[1:])
        for r in await conn.fetch(
            f"SELECT person_id, {sums} FROM {quoted} GROUP BY person_id"  # noqa: S608
        )
    }
    return MoneySums(
        expected.table,
        int(totals[0]),
        dict(zip(fen, (int(v) for v in list(totals)[1:]), strict=True)),
        per_person,
    )


async def _verify(
    conn: asyncpg.Connection,
    tables: list[SourceTable],
    copies: list[TableCopy],
    money: list[MoneySums],
) -> None:
    """Counts and sums read back inside the transaction; raise on any difference."""
    problems = []
    for table, copy in zip(tables, copies, strict=True):
        count = await conn.fetchval(f"SELECT count(*) FROM {_quoted(table.name)}")  # noqa: S608
        if not table.rows == copy.rows == count:
            problems.append(
                f"{table.name}: {table.rows} rows in the snapshot, {copy.rows} copied,"
                f" {count} in PostgreSQL"
            )
    for sums in money:
        got = await _pg_money(conn, sums)
        if (got.rows, got.totals) != (sums.rows, sums.totals):
            problems.append(
                f"{sums.table}: {sums.rows} rows {sums.totals} in the snapshot,"
                f" {got.rows} rows {got.totals} in PostgreSQL"
            )
        differ = sorted(
            p
            for p in sums.per_person.keys() | got.per_person.keys()
            if sums.per_person.get(p) != got.per_person.get(p)
        )
        if differ:
            problems.append(f"{sums.table}: {len(differ)} persons' sums differ (e.g. {differ[:5]})")
    if problems:
        raise MigrateStoreError("verification failed, nothing was written: " + "; ".join(problems))


# -- the whole -------------------------------------------------------------------------------------


async def migrate_store(
    sqlite_path: Path | str,
    dsn: str,
    *,
    progress: Progress | None = None,
    snapshot_dir: Path | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> MigrationReport:
    """Copy the central database at ``sqlite_path`` into the PostgreSQL database ``dsn``
    (see the module docstring); return what was copied and verified.

    ``snapshot_dir``: where the temporary snapshot goes (default: next to the database; it
    needs as much free space as the database). Raises :class:`MigrateStoreError`, with
    nothing written to the target, on any refusal or failure.
    """
    started = time.monotonic()
    source = Path(sqlite_path)
    if not await asyncio.to_thread(source.is_file):
        raise MigrateStoreError(f"no SQLite database at {source}")
    with tempfile.TemporaryDirectory(
        prefix=".migrate-store-", dir=snapshot_dir or source.parent
    ) as tmp:
        snap_path = Path(tmp) / "snapshot.db"
        try:
            await asyncio.to_thread(take_snapshot, source, snap_path)
        except sqlite3.Error as exc:
            raise MigrateStoreError(f"cannot read {source}: {exc}") from None
        snapshot_seconds = time.monotonic() - started
        snap = sqlite3.connect(f"{snap_path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        try:
            version = check_versions(read_versions(snap), source)
            tables = read_tables(snap)
            money = [sqlite_money(snap, t) for t in tables if t.name in MONEY_TABLES]
            conn = await _connect(dsn)
            try:
                copies = await _copy_all(
                    conn, snap, tables, money, sqlite_sequences(snap), progress, chunk_rows
                )
            finally:
                await conn.close()
        finally:
            snap.close()
    return MigrationReport(
        source=source,
        target=redact_dsn(dsn),
        schema_version=version,
        snapshot_seconds=snapshot_seconds,
        tables=copies,
        money=money,
        seconds=time.monotonic() - started,
    )


async def _copy_all(  # noqa: PLR0917 - the steps' shared inputs
    conn: asyncpg.Connection,
    snap: sqlite3.Connection,
    tables: list[SourceTable],
    money: list[MoneySums],
    sequences: dict[str, int],
    progress: Progress | None,
    chunk_rows: int,
) -> list[TableCopy]:
    """Everything on the target, in one transaction."""
    try:
        async with conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({COPY_LOCK_KEY})")
            await _refuse_rows(conn, tables)
            await migrate(conn)
            pg_versions = await conn.fetch(
                "SELECT version, name FROM schema_migrations ORDER BY version"
            )
            expected = [(v, name) for v, (name, _) in enumerate(POSTGRES_MIGRATIONS, start=1)]
            if [(int(v), str(n)) for v, n in pg_versions] != expected:
                raise MigrateStoreError(
                    f"the target's schema_migrations ({len(pg_versions)} versions) are not"
                    f" this onecard's {len(expected)}: it was made by another onecard"
                    " version; copy into a fresh database"
                )
            pg = await _pg_columns(conn)
            plans = [plan(t, pg) for t in tables]
            copies = [await _copy_table(conn, snap, p, progress, chunk_rows) for p in plans]
            await _advance_identities(conn, pg, tables, sequences)
            await _verify(conn, tables, copies, money)
    except asyncpg.PostgresError as exc:
        raise MigrateStoreError(
            f"PostgreSQL failed ({type(exc).__name__}: {exc}); nothing was written"
        ) from None
    return copies
