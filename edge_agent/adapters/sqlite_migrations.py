"""Numbered schema migrations of the edge's SQLite store.

Each migration runs in one transaction together with the row that records it in
``schema_migrations``, so a crash mid-migration leaves the previous schema intact. Append
new migrations at the end; never edit one that has shipped.

Conventions: instants are INTEGER milliseconds since the Unix epoch, UTC (``*_ms``); money
is INTEGER fen; JSON columns hold msgspec-encoded values.
"""

from __future__ import annotations

import sqlite3
import time

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial schema",
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;

        -- master data (central is the only writer; the edge holds a replica) -----------------
        CREATE TABLE persons (
            id         TEXT PRIMARY KEY,
            name       TEXT NOT NULL,
            number     TEXT NOT NULL DEFAULT '',
            kind       TEXT NOT NULL CHECK (kind IN ('staff', 'member')),
            department TEXT
        ) STRICT;

        CREATE TABLE cards (
            uid           TEXT PRIMARY KEY,
            person_id     TEXT NOT NULL,
            status        TEXT NOT NULL
                          CHECK (status IN ('active','lost','frozen','cancelled','replaced')),
            valid_from_ms INTEGER,
            valid_to_ms   INTEGER,
            card_type     TEXT NOT NULL DEFAULT 'standard'
        ) STRICT;
        CREATE INDEX cards_person ON cards (person_id);

        CREATE TABLE accounts (
            person_id          TEXT PRIMARY KEY,
            cash_fen           INTEGER NOT NULL DEFAULT 0,
            subsidy_fen        INTEGER NOT NULL DEFAULT 0,
            subsidy_expires_ms INTEGER,
            covers_seq         INTEGER NOT NULL DEFAULT 0,
            txn_limit_fen      INTEGER,
            daily_limit_fen    INTEGER
        ) STRICT;

        CREATE TABLE tickets (
            id            TEXT PRIMARY KEY,
            person_id     TEXT NOT NULL,
            kind          TEXT NOT NULL CHECK (kind IN ('count', 'period')),
            service       TEXT NOT NULL,
            remaining     INTEGER,
            valid_from_ms INTEGER,
            valid_to_ms   INTEGER
        ) STRICT;
        CREATE INDEX tickets_person_service ON tickets (person_id, service);

        CREATE TABLE time_zones (
            id   TEXT PRIMARY KEY,
            data BLOB NOT NULL
        ) STRICT;

        CREATE TABLE holidays (
            day  TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT ''
        ) STRICT;

        CREATE TABLE door_groups (
            id            TEXT PRIMARY KEY,
            name          TEXT NOT NULL DEFAULT '',
            anti_passback TEXT NOT NULL DEFAULT 'none'
                          CHECK (anti_passback IN ('none', 'soft', 'hard')),
            fail_mode     TEXT NOT NULL DEFAULT 'secure' CHECK (fail_mode IN ('secure', 'safe'))
        ) STRICT;

        CREATE TABLE doors (
            id          TEXT PRIMARY KEY,
            group_id    TEXT NOT NULL,
            terminal_id TEXT NOT NULL,
            name        TEXT NOT NULL DEFAULT '',
            direction   TEXT CHECK (direction IN ('in', 'out')),
            open_ms     INTEGER NOT NULL DEFAULT 3000
        ) STRICT;
        CREATE INDEX doors_terminal ON doors (terminal_id);

        CREATE TABLE access_levels (
            id            TEXT PRIMARY KEY,
            door_group_id TEXT NOT NULL,
            time_zone_id  TEXT NOT NULL,
            valid_from_ms INTEGER,
            valid_to_ms   INTEGER
        ) STRICT;

        CREATE TABLE access_grants (
            person_id       TEXT NOT NULL,
            access_level_id TEXT NOT NULL,
            valid_from_ms   INTEGER,
            valid_to_ms     INTEGER,
            PRIMARY KEY (person_id, access_level_id)
        ) STRICT;

        CREATE TABLE terminals (
            id      TEXT PRIMARY KEY,
            kind    TEXT NOT NULL CHECK (kind IN ('door', 'attendance', 'pos', 'recharge')),
            key_hex TEXT NOT NULL,
            name    TEXT NOT NULL DEFAULT '',
            config  BLOB NOT NULL DEFAULT '{}'
        ) STRICT;

        CREATE TABLE policy (
            id   INTEGER PRIMARY KEY CHECK (id = 1),
            data BLOB NOT NULL
        ) STRICT;

        CREATE TABLE blacklist (
            uid             TEXT PRIMARY KEY,
            reason          TEXT NOT NULL,
            effective_at_ms INTEGER NOT NULL,
            version         INTEGER NOT NULL
        ) STRICT;

        -- the outbox: every record, numbered, kept until central's ack covers it ------------
        -- lane 0 = card intents and money, lane 1 = the rest; each lane numbers its records
        -- with its own 64-bit seq per epoch, never reused
        CREATE TABLE outbox (
            lane       INTEGER NOT NULL CHECK (lane IN (0, 1)),
            seq        INTEGER NOT NULL,
            epoch      INTEGER NOT NULL,
            id         TEXT NOT NULL UNIQUE,         -- globally unique record id
            kind       TEXT NOT NULL,
            payload    BLOB NOT NULL,                -- the protocol Record, JSON
            created_ms INTEGER NOT NULL,
            acked      INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (lane, seq)
        ) STRICT;
        CREATE INDEX outbox_unacked ON outbox (lane, seq) WHERE acked = 0;

        -- what a terminal was told, by (terminal, its record number): retransmissions after a
        -- restart of either side get the original answer back, never a second decision
        CREATE TABLE terminal_txns (
            terminal_id TEXT NOT NULL,
            term_rec    INTEGER NOT NULL,
            frame_type  INTEGER NOT NULL,
            record_id   TEXT,                        -- the outbox record it produced
            reply       BLOB NOT NULL,               -- the reply body, MessagePack
            created_ms  INTEGER NOT NULL,
            PRIMARY KEY (terminal_id, term_rec)
        ) STRICT, WITHOUT ROWID;

        -- local money and ticket effects not yet covered by central's published balances
        -- (seq = the lane-0 seq of the record that caused it)
        CREATE TABLE local_deltas (
            seq         INTEGER PRIMARY KEY,
            person_id   TEXT NOT NULL,
            cash_fen    INTEGER NOT NULL,
            subsidy_fen INTEGER NOT NULL,
            ticket_id   TEXT,
            ticket_uses INTEGER NOT NULL DEFAULT 0
        ) STRICT;
        CREATE INDEX local_deltas_person ON local_deltas (person_id, seq);

        -- spending history for per-day, per-meal and offline caps (seq: lane 0)
        CREATE TABLE purchases (
            seq       INTEGER PRIMARY KEY,
            person_id TEXT NOT NULL,
            card_uid  TEXT NOT NULL,
            amount    INTEGER NOT NULL,
            at_ms     INTEGER NOT NULL,
            offline   INTEGER NOT NULL,
            meal_period TEXT                     -- set for canteen sales in a meal period
        ) STRICT;
        CREATE INDEX purchases_person_at ON purchases (person_id, at_ms);
        CREATE INDEX purchases_offline ON purchases (offline, seq) WHERE offline = 1;

        -- anti-passback state per person and door group, and the last attendance punch
        CREATE TABLE passages (
            person_id TEXT NOT NULL,
            group_id  TEXT NOT NULL,
            direction TEXT NOT NULL,
            at_ms     INTEGER NOT NULL,
            PRIMARY KEY (person_id, group_id)
        ) STRICT, WITHOUT ROWID;

        CREATE TABLE last_punch (
            person_id TEXT PRIMARY KEY,
            at_ms     INTEGER NOT NULL
        ) STRICT;

        -- two-phase recharges by payment reference
        CREATE TABLE recharges (
            pay_ref     TEXT PRIMARY KEY,
            data        BLOB NOT NULL,
            state       TEXT NOT NULL,
            prepared_ms INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX recharges_open ON recharges (prepared_ms) WHERE state = 'prepared';

        -- what a peer sent us that we could not accept, kept for a person to look at
        CREATE TABLE dead_letters (
            id      INTEGER PRIMARY KEY,
            at_ms   INTEGER NOT NULL,
            source  TEXT NOT NULL,
            reason  TEXT NOT NULL,
            payload BLOB NOT NULL
        ) STRICT;
        """,
    ),
    (
        "outbox acked by watermark",
        """
        -- Central acks a lane up to a seq; the lane's watermark (meta acked_seq_{lane}) now
        -- is the acked state, so an ack writes one row instead of rewriting every record it
        -- covers (~40 % of an edge's CPU when draining a backlog). The records move to
        -- outbox_rows; `outbox` stays, as a view with the same columns, acked computed.
        INSERT INTO meta (key, value)
            SELECT 'acked_seq_' || lane, CAST(max(seq) AS TEXT) FROM outbox
            WHERE acked = 1 GROUP BY lane
            ON CONFLICT (key) DO UPDATE SET value = CAST(
                max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT);
        DROP INDEX outbox_unacked;
        ALTER TABLE outbox RENAME TO outbox_rows;
        ALTER TABLE outbox_rows DROP COLUMN acked;
        CREATE VIEW outbox AS
            SELECT o.rowid AS rowid, o.lane, o.seq, o.epoch, o.id, o.kind, o.payload,
                   o.created_ms,
                   o.seq <= coalesce((SELECT CAST(m.value AS INTEGER) FROM meta m
                                      WHERE m.key = 'acked_seq_' || o.lane), 0) AS acked
            FROM outbox_rows o;
        """,
    ),
    (
        "lists of terminals that decide locally, and their record gaps",
        """
        -- per terminal and list (`blacklist`, `whitelist`, `whitelist:<door>`): the version
        -- of the link's chain the terminal acknowledged, the site version it stands for, and
        -- since when it has been behind the site (edge_agent.lists)
        CREATE TABLE terminal_lists (
            terminal_id  TEXT NOT NULL,
            list         TEXT NOT NULL,
            version      INTEGER NOT NULL,
            covers       INTEGER NOT NULL,
            behind_ms    INTEGER,
            updated_ms   INTEGER NOT NULL,
            PRIMARY KEY (terminal_id, list)
        ) STRICT, WITHOUT ROWID;

        -- the UIDs each terminal holds on each list, as of its acknowledged version
        CREATE TABLE terminal_list_uids (
            terminal_id TEXT NOT NULL,
            list        TEXT NOT NULL,
            uid         TEXT NOT NULL,
            PRIMARY KEY (terminal_id, list, uid)
        ) STRICT, WITHOUT ROWID;

        -- record numbers checked for gaps: every number up to checked_upto is held (in
        -- terminal_txns) or void; missing ones above it are in terminal_gaps
        CREATE TABLE terminal_recs (
            terminal_id  TEXT PRIMARY KEY,
            checked_upto INTEGER NOT NULL
        ) STRICT;

        CREATE TABLE terminal_gaps (
            terminal_id TEXT NOT NULL,
            rec         INTEGER NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('missing', 'void')),
            found_ms    INTEGER NOT NULL,
            asked       INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (terminal_id, rec)
        ) STRICT, WITHOUT ROWID;
        """,
    ),
]


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    """Versions already applied (empty for a new database)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
    )
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(conn: sqlite3.Connection, migrations: list[tuple[str, str]] | None = None) -> list[int]:
    """Apply every pending migration (the edge's by default), each in its own transaction
    with the row recording it; return those applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    done = applied_versions(conn)
    applied = []
    for version, (name, sql) in enumerate(migrations or MIGRATIONS, start=1):
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)",
                (version, name, int(time.time() * 1000)),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        applied.append(version)
    return applied


def _statements(sql: str) -> list[str]:
    # executescript() would COMMIT first; split on ';' instead (no ';' inside our literals).
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
