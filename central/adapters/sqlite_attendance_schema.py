"""Central's attendance and organisation tables (issue 12).

Appended after every other list in :mod:`central.adapters.sqlite_store`, so an existing
database upgrades in place.
"""

from __future__ import annotations

ATTENDANCE_MIGRATIONS: list[tuple[str, str]] = [
    (
        "attendance: punches, corrections, leave, shifts, rosters, calendar, departments",
        """
        -- every counted punch: from terminals (records of kind attendance.punch, accepted
        -- and not a duplicate, taken at ingest) and manual ones (补卡) with who and why
        CREATE TABLE att_punches (
            id         TEXT PRIMARY KEY,         -- the record id, or 'manual:<n>'
            person_id  TEXT NOT NULL,
            at_ms      INTEGER NOT NULL,         -- UTC
            site       TEXT,
            terminal   TEXT,
            source     TEXT NOT NULL CHECK (source IN ('terminal', 'manual')),
            operator   TEXT,
            note       TEXT NOT NULL DEFAULT '',
            created_ms INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX att_punches_person ON att_punches (person_id, at_ms);

        -- approved leave (请假) and other excused absence
        CREATE TABLE att_leaves (
            id         INTEGER PRIMARY KEY,
            person_id  TEXT NOT NULL,
            start_ms   INTEGER NOT NULL,
            end_ms     INTEGER NOT NULL CHECK (end_ms > start_ms),
            kind       TEXT NOT NULL,
            note       TEXT NOT NULL DEFAULT '',
            operator   TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX att_leaves_person ON att_leaves (person_id, start_ms);

        -- shift definitions and roster entries (JSON of central.core.attendance_rules)
        CREATE TABLE att_shifts (
            id   TEXT PRIMARY KEY,
            data TEXT NOT NULL
        ) STRICT;
        CREATE TABLE att_roster (
            id   INTEGER PRIMARY KEY,
            data TEXT NOT NULL
        ) STRICT;

        -- the calendar's exceptions: statutory holidays and swapped workdays (调休)
        CREATE TABLE att_calendar (
            day  TEXT PRIMARY KEY,               -- ISO date
            kind TEXT NOT NULL CHECK (kind IN ('holiday', 'workday')),
            name TEXT NOT NULL DEFAULT ''
        ) STRICT;

        -- the organisation: departments in a tree
        CREATE TABLE departments (
            id        TEXT PRIMARY KEY,
            name      TEXT NOT NULL,
            parent_id TEXT REFERENCES departments (id)
        ) STRICT;
        """,
    ),
    (
        "access administration: access levels granted to departments",
        """
        -- a department's grant reaches everyone in it and below it, as person grants
        -- (master entity access_grant) that central keeps in step with membership
        CREATE TABLE access_dept_grants (
            department TEXT NOT NULL REFERENCES departments (id),
            level_id   TEXT NOT NULL,
            valid_from TEXT,                     -- ISO UTC, or NULL
            valid_to   TEXT,
            PRIMARY KEY (department, level_id)
        ) STRICT;
        -- the person grants central derived from those (a direct grant is never touched)
        CREATE TABLE access_derived (
            person_id TEXT NOT NULL,
            level_id  TEXT NOT NULL,
            PRIMARY KEY (person_id, level_id)
        ) STRICT;
        """,
    ),
]
