"""Door events HQ alerts on (forced, held open), taken at ingest (``central.doors``).

Appended after every other list in :mod:`central.adapters.sqlite_store` (positional: never
edit a migration that has shipped; append).
"""

from __future__ import annotations

DOOR_MIGRATIONS: list[tuple[str, str]] = [
    (
        "door events: forced and held open, for alerts",
        """
        CREATE TABLE door_events (
            record_id TEXT PRIMARY KEY,
            site      TEXT NOT NULL,
            door      TEXT NOT NULL,             -- the door, or the terminal when none is named
            terminal  TEXT,
            event     TEXT NOT NULL CHECK (event IN ('door_forced', 'door_held')),
            at_ms     INTEGER NOT NULL           -- when it happened (the record's time), UTC
        ) STRICT;
        CREATE INDEX door_events_recent ON door_events (at_ms);
        """,
    ),
]
