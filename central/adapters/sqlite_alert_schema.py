"""Schema of central's alerts (``central/alerts.py``) and of the sites' health reports.

Appended at the end of the combined migration list in ``sqlite_store.py``, so an existing
database upgrades. Never edit a migration that has shipped; append a new one.
"""

from __future__ import annotations

ALERT_MIGRATIONS: list[tuple[str, str]] = [
    (
        "alerts, alert hold times, site health",
        """
        -- one row per alert; at most one not-resolved alert per key (e.g. site_offline:SZ-1)
        CREATE TABLE alerts (
            id           INTEGER PRIMARY KEY,
            key          TEXT NOT NULL,
            kind         TEXT NOT NULL,
            severity     TEXT NOT NULL CHECK (severity IN ('emergency', 'important', 'normal')),
            site         TEXT,                      -- NULL: HQ itself
            subject      TEXT NOT NULL DEFAULT '',  -- e.g. the terminal
            detail       TEXT NOT NULL DEFAULT '{}', -- JSON, as the rule saw it when it opened
            state        TEXT NOT NULL DEFAULT 'open'
                         CHECK (state IN ('open', 'acknowledged', 'resolved')),
            since_ms     INTEGER NOT NULL,          -- the condition first seen
            opened_ms    INTEGER NOT NULL,          -- held for its detection time: alerted
            acked_by     TEXT,
            acked_ms     INTEGER,
            note         TEXT NOT NULL DEFAULT '',
            resolved_by  TEXT,                      -- 'auto': the condition cleared
            resolved_ms  INTEGER
        ) STRICT;
        CREATE UNIQUE INDEX alerts_active_key ON alerts (key) WHERE state != 'resolved';
        CREATE INDEX alerts_state ON alerts (state, severity);

        -- conditions seen but not yet held for their detection time
        CREATE TABLE alert_pending (
            key      TEXT PRIMARY KEY,
            since_ms INTEGER NOT NULL
        ) STRICT;

        -- each site's latest up/health report
        CREATE TABLE site_health (
            site            TEXT PRIMARY KEY,
            received_ms     INTEGER NOT NULL,       -- central's clock
            at_ms           INTEGER NOT NULL,       -- the edge's clock
            terminals       TEXT NOT NULL,          -- JSON [{id, kind, online}]
            outbox_depth    INTEGER NOT NULL,
            disk_free_bytes INTEGER
        ) STRICT;
        """,
    ),
]

#: Appended after every other list (positional); see :mod:`central.adapters.sqlite_store`.
HEALTH_MIGRATIONS: list[tuple[str, str]] = [
    (
        "site health: the edge's disk state (money refused below its reserve)",
        """
        ALTER TABLE site_health ADD COLUMN disk_state TEXT
            CHECK (disk_state IS NULL OR disk_state IN ('ok', 'low', 'full'));
        """,
    ),
]
