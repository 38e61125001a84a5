"""Schema of the HQ dashboard's accounts: users, login throttling, the session key.

Appended after the other lists (``MIGRATIONS + OPS_MIGRATIONS + WEB_MIGRATIONS``), so an
existing database upgrades. Never edit a migration that has shipped; append a new one.
"""

from __future__ import annotations

WEB_MIGRATIONS: list[tuple[str, str]] = [
    (
        "dashboard users, login throttling, web keys",
        """
        -- people who sign in to the dashboard; username is the audit log's operator
        CREATE TABLE users (
            id            INTEGER PRIMARY KEY,
            username      TEXT NOT NULL UNIQUE,      -- lower case: a-z 0-9 . _ -
            display_name  TEXT NOT NULL DEFAULT '',
            role          TEXT NOT NULL
                          CHECK (role IN ('admin', 'operator', 'finance', 'technician', 'auditor')),
            password_hash TEXT NOT NULL,             -- scrypt, with its parameters and salt
            session_gen   INTEGER NOT NULL DEFAULT 1, -- a cookie of an older generation is dead
            created_ms    INTEGER NOT NULL,
            password_ms   INTEGER NOT NULL,
            disabled_ms   INTEGER,                   -- set: the user cannot sign in
            last_login_ms INTEGER,
            failed_logins INTEGER NOT NULL DEFAULT 0, -- since the last good sign-in
            last_failed_ms INTEGER
        ) STRICT;

        -- failed sign-ins counted per (username, address), per username and per address,
        -- known usernames or not; a subject past its threshold is locked until a time
        CREATE TABLE login_throttle (
            kind            TEXT NOT NULL CHECK (kind IN ('user_ip', 'user', 'ip')),
            subject         TEXT NOT NULL,
            failures        INTEGER NOT NULL,
            last_ms         INTEGER NOT NULL,
            locked_until_ms INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (kind, subject)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX login_throttle_last ON login_throttle (last_ms);

        -- secrets the dashboard signs cookies with (made on first use, shared by workers)
        CREATE TABLE web_keys (
            name       TEXT PRIMARY KEY,
            secret     BLOB NOT NULL,
            created_ms INTEGER NOT NULL
        ) STRICT;
        """,
    ),
]
