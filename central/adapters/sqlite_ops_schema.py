"""Schema of card and money operations at central: appended after the ingest schema.

Kept apart from :mod:`central.adapters.sqlite_schema` only to read as one piece; the store
runs ``MIGRATIONS + OPS_MIGRATIONS`` in that order, so an existing database upgrades.
"""

from __future__ import annotations

OPS_MIGRATIONS: list[tuple[str, str]] = [
    (
        "card and money operations: deposit purse, posting columns, results, audit, settings",
        """
        -- the ledger learns what operations post: the deposit purse (押金), what an entry
        -- adjusts, the card and payment method, and when central wrote it (clearing
        -- revisions: a late offline record reopens its business day)
        ALTER TABLE ledger ADD COLUMN deposit_fen INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE ledger ADD COLUMN ref TEXT;
        ALTER TABLE ledger ADD COLUMN card_uid TEXT;
        ALTER TABLE ledger ADD COLUMN method TEXT;
        ALTER TABLE ledger ADD COLUMN created_ms INTEGER;
        CREATE INDEX ledger_ref ON ledger (ref) WHERE ref IS NOT NULL;
        CREATE INDEX ledger_day ON ledger (site, at_ms);
        ALTER TABLE accounts ADD COLUMN deposit_fen INTEGER NOT NULL DEFAULT 0;

        -- a person's cards and tickets, found without scanning master data
        CREATE INDEX master_person ON master (entity, json_extract(data, '$.person_id'));

        -- every operation's result under its client-supplied request id (idempotency)
        CREATE TABLE op_results (
            request_id TEXT PRIMARY KEY,
            op         TEXT NOT NULL,
            digest     TEXT NOT NULL,   -- sha256 of the request's canonical JSON
            result     TEXT NOT NULL,   -- the Accepted/Rejected as answered, JSON
            at_ms      INTEGER NOT NULL
        ) STRICT;

        -- who did what to which target, from where, when (append-only)
        CREATE TABLE audit (
            id          INTEGER PRIMARY KEY,
            at_ms       INTEGER NOT NULL,
            request_id  TEXT,
            operator    TEXT NOT NULL,
            role        TEXT,
            source      TEXT NOT NULL,  -- hq:api, hq:cli, hq:import, site:SZ-FUTIAN …
            ip          TEXT,
            action      TEXT NOT NULL,
            target      TEXT NOT NULL,
            outcome     TEXT NOT NULL CHECK (outcome IN ('accepted', 'rejected')),
            reason_code TEXT,
            before      TEXT NOT NULL DEFAULT '{}',
            after       TEXT NOT NULL DEFAULT '{}',
            note        TEXT NOT NULL DEFAULT ''
        ) STRICT;
        CREATE INDEX audit_target ON audit (target, id);
        CREATE INDEX audit_operator ON audit (operator, id);
        CREATE INDEX audit_action ON audit (action, id);

        -- HQ configuration: the money policy and card types (JSON)
        CREATE TABLE settings (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;

        -- anomalies: who acknowledged or resolved one, when, and why
        ALTER TABLE anomalies ADD COLUMN acted_by TEXT;
        ALTER TABLE anomalies ADD COLUMN acted_ms INTEGER;
        ALTER TABLE anomalies ADD COLUMN note TEXT NOT NULL DEFAULT '';
        CREATE INDEX anomalies_kind ON anomalies (kind, record_id);

        -- API tokens for integrations and scripts: only a digest is kept
        CREATE TABLE api_tokens (
            id           INTEGER PRIMARY KEY,
            name         TEXT NOT NULL UNIQUE,
            role         TEXT NOT NULL
                         CHECK (role IN ('admin', 'operator', 'finance', 'technician', 'auditor')),
            digest       TEXT NOT NULL UNIQUE,   -- sha256 of the token (high-entropy secret)
            created_ms   INTEGER NOT NULL,
            revoked_ms   INTEGER
        ) STRICT;
        """,
    ),
    (
        "clearing reports, reconciliations, payment resolutions",
        """
        -- the last computed report of every (site, business day); '' = HQ's own desk
        CREATE TABLE clearing_reports (
            site        TEXT NOT NULL,
            day         TEXT NOT NULL,              -- YYYY-MM-DD, the business day
            revision    INTEGER NOT NULL,
            digest      TEXT NOT NULL,
            report      TEXT NOT NULL,              -- the DayReport, JSON
            computed_ms INTEGER NOT NULL,
            PRIMARY KEY (site, day)
        ) STRICT;

        -- every statement matched, applied or not
        CREATE TABLE reconciliations (
            id       INTEGER PRIMARY KEY,
            at_ms    INTEGER NOT NULL,
            operator TEXT NOT NULL,
            filename TEXT NOT NULL,
            digest   TEXT NOT NULL,                 -- sha256 of the file
            applied  INTEGER NOT NULL,
            summary  TEXT NOT NULL,
            result   TEXT NOT NULL
        ) STRICT;

        -- a 单边账 settled: credited once on proof of payment, or voided on proof of absence
        CREATE TABLE payment_resolutions (
            pay_ref    TEXT PRIMARY KEY,
            resolution TEXT NOT NULL CHECK (resolution IN ('credited', 'void')),
            record_id  TEXT NOT NULL,
            operator   TEXT NOT NULL,
            at_ms      INTEGER NOT NULL
        ) STRICT;

        -- kiosk recharge records, found without scanning every record
        CREATE INDEX records_recharge ON records (kind, received_ms)
            WHERE kind IN ('recharge.prepare', 'recharge.commit', 'recharge.abort');
        """,
    ),
]
