"""Schema of staged rollouts (:mod:`central.rollouts`): appended after the other lists."""

from __future__ import annotations

ROLLOUT_MIGRATIONS: list[tuple[str, str]] = [
    (
        "rollouts: the state machine's value, its effects waiting to be published, audit",
        """
        -- one row per rollout: central.core.rollout.Rollout as JSON
        CREATE TABLE rollouts (
            id          TEXT PRIMARY KEY,
            version     TEXT NOT NULL,
            status      TEXT NOT NULL,   -- running | paused | aborted | completed
            data        BLOB NOT NULL,
            created_ms  INTEGER NOT NULL,
            updated_ms  INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX rollouts_active ON rollouts (status) WHERE status IN ('running', 'paused');

        -- MQTT messages a transition asked for, written in its transaction and published by
        -- the service afterwards (an outbox: nothing is lost if central stops in between)
        CREATE TABLE rollout_messages (
            id            INTEGER PRIMARY KEY,
            rollout_id    TEXT NOT NULL,
            site          TEXT NOT NULL,
            topic         TEXT NOT NULL,
            payload       BLOB NOT NULL,
            retain        INTEGER NOT NULL,
            published_ms  INTEGER
        ) STRICT;
        CREATE INDEX rollout_messages_pending ON rollout_messages (id) WHERE published_ms IS NULL;

        -- every step of every rollout, for people (append-only)
        CREATE TABLE rollout_log (
            id          INTEGER PRIMARY KEY,
            rollout_id  TEXT NOT NULL,
            at_ms       INTEGER NOT NULL,
            action      TEXT NOT NULL,
            site        TEXT,
            operator    TEXT,
            detail      TEXT NOT NULL
        ) STRICT;
        CREATE INDEX rollout_log_rollout ON rollout_log (rollout_id, id);
        """,
    ),
]
