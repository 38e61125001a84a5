"""Numbered schema migrations of central's SQLite store (same runner as the edge's).

JSON is stored as TEXT (never BLOB: SQLite 3.45+ reads a BLOB given to its JSON functions as
its binary JSONB format).

Instants are INTEGER Unix milliseconds (UTC), money INTEGER fen, JSON columns msgspec JSON.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial schema",
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;

        -- sites and what they last told us about themselves ------------------------------
        CREATE TABLE sites (
            id                  TEXT PRIMARY KEY,
            created_ms          INTEGER NOT NULL,
            removed             INTEGER NOT NULL DEFAULT 0,
            online              INTEGER NOT NULL DEFAULT 0,
            last_seen_ms        INTEGER,
            state               BLOB,              -- the last birth message, JSON
            version             TEXT,
            epoch               INTEGER,
            feed_version        INTEGER NOT NULL DEFAULT 0,   -- as the edge reported it
            blacklist_version   INTEGER NOT NULL DEFAULT 0,   -- as the edge reported it
            outbox_depth        INTEGER,
            outbox_oldest_age_s REAL
        ) STRICT;

        -- the ack watermark of every (site, epoch, lane) stream ------------------------------
        CREATE TABLE lanes (
            site          TEXT NOT NULL,
            epoch         INTEGER NOT NULL,
            lane          INTEGER NOT NULL,
            acked_seq     INTEGER NOT NULL DEFAULT 0,  -- highest contiguous seq committed
            max_seen_seq  INTEGER NOT NULL DEFAULT 0,
            gap_since_ms  INTEGER,                     -- a gap above acked_seq since then
            resend_ms     INTEGER,                     -- when resend_from was last asked
            PRIMARY KEY (site, epoch, lane)
        ) STRICT;

        -- every record, exactly once --------------------------------------------------------
        CREATE TABLE records (
            site        TEXT NOT NULL,
            epoch       INTEGER NOT NULL,
            lane        INTEGER NOT NULL,
            seq         INTEGER NOT NULL,
            id          TEXT NOT NULL UNIQUE,
            kind        TEXT NOT NULL,              -- 'dead' for a record that failed validation
            payload     BLOB NOT NULL,
            digest      BLOB NOT NULL,              -- sha256 of payload: same id, other content?
            received_ms INTEGER NOT NULL,
            applied     INTEGER NOT NULL DEFAULT 0, -- its effects are in the ledger
            PRIMARY KEY (site, epoch, lane, seq)
        ) STRICT;
        CREATE INDEX records_unapplied ON records (site, epoch, lane, seq) WHERE applied = 0;

        CREATE TABLE dead_letters (
            id      INTEGER PRIMARY KEY,
            at_ms   INTEGER NOT NULL,
            topic   TEXT NOT NULL,
            site    TEXT,
            reason  TEXT NOT NULL,
            payload BLOB NOT NULL
        ) STRICT;

        CREATE TABLE anomalies (
            id        INTEGER PRIMARY KEY,
            at_ms     INTEGER NOT NULL,
            kind      TEXT NOT NULL,
            site      TEXT,
            record_id TEXT,
            detail    TEXT NOT NULL,                -- JSON
            state     TEXT NOT NULL DEFAULT 'open'
                      CHECK (state IN ('open', 'acknowledged', 'resolved'))
        ) STRICT;
        CREATE INDEX anomalies_open ON anomalies (state, at_ms);

        -- master data: the current row of every entity, global (scope '') or per site -------
        CREATE TABLE master (
            scope  TEXT NOT NULL,                   -- '' = every site, else a site id
            entity TEXT NOT NULL,
            key    TEXT NOT NULL,
            data   TEXT NOT NULL,                   -- JSON of edge_agent.core.model's Struct
            version INTEGER NOT NULL,               -- the change that wrote it
            PRIMARY KEY (scope, entity, key)
        ) STRICT;

        -- the change feed: every master-data change, in one global version order ------------
        CREATE TABLE changes (
            version INTEGER PRIMARY KEY,
            scope   TEXT NOT NULL,
            entity  TEXT NOT NULL,
            key     TEXT NOT NULL,
            op      TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
            data    TEXT,
            at_ms   INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX changes_scope ON changes (scope, version);

        -- money: the append-only ledger and the balances that are its sums ------------------
        CREATE TABLE ledger (
            id          INTEGER PRIMARY KEY,
            person_id   TEXT NOT NULL,
            cash_fen    INTEGER NOT NULL,
            subsidy_fen INTEGER NOT NULL,
            ticket_id   TEXT,
            ticket_uses INTEGER NOT NULL DEFAULT 0,
            kind        TEXT NOT NULL,
            record_id   TEXT,                       -- the site record it came from, if any
            site        TEXT,
            at_ms       INTEGER NOT NULL,
            pay_ref     TEXT,                       -- a recharge's payment reference
            UNIQUE (record_id, kind)
        ) STRICT;
        CREATE INDEX ledger_person ON ledger (person_id, id);
        -- a payment is credited once, whichever kiosk, site or database commits it
        CREATE UNIQUE INDEX ledger_payment ON ledger (pay_ref) WHERE pay_ref IS NOT NULL;

        CREATE TABLE accounts (
            person_id   TEXT PRIMARY KEY,
            cash_fen    INTEGER NOT NULL DEFAULT 0,
            subsidy_fen INTEGER NOT NULL DEFAULT 0,
            covers      TEXT NOT NULL DEFAULT '{}', -- {site: [epoch, lane-0 seq]} applied
            dirty       INTEGER NOT NULL DEFAULT 0  -- changed since last published on the feed
        ) STRICT;
        CREATE INDEX accounts_dirty ON accounts (dirty) WHERE dirty = 1;

        -- the blacklist and its version chain ----------------------------------------------
        CREATE TABLE blacklist (
            uid          TEXT PRIMARY KEY,
            reason       TEXT NOT NULL,
            effective_ms INTEGER NOT NULL,
            version      INTEGER NOT NULL
        ) STRICT;

        CREATE TABLE blacklist_log (
            version      INTEGER PRIMARY KEY,
            prev_version INTEGER NOT NULL,
            at_ms        INTEGER NOT NULL,
            delta        TEXT NOT NULL,             -- the BlacklistDelta as published, JSON
            published    INTEGER NOT NULL DEFAULT 0 -- broadcast to the sites yet?
        ) STRICT;
        """,
    ),
]
