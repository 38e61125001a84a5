"""HQ dashboard users: accounts and roles, passwords (scrypt), sign-in throttling, and the
key the dashboard signs its cookies with.

Functions taking ``conn`` run inside a store operation (writer connection, in a
transaction) and never run the KDF: scrypt costs ~0.1 s and 32 MiB, which must not stall
the writer that ingest shares. Callers hash before (:func:`hash_password`) and verify
between :func:`begin_login` and :func:`finish_login` (:func:`verify_password`), off the
event loop. Every change to a user, and every sign-in, good or bad, is audited.

A user's ``session_gen`` is part of every session cookie: :func:`set_password`,
:func:`disable_user` and :func:`end_sessions` (sign-out) bump it, so every cookie issued
before is dead at once, with no session table.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from central import queries
from central.core.effects import AuditEntry, Scalar
from central.operations import Caller, write_audit
from edge_agent.adapters.sqlite_store import now_ms

#: The five roles (admin, operator, finance, technician, auditor).
ROLES = queries.ROLES
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024

#: scrypt cost: N=2**15, r=8 → 32 MiB and ~0.1 s per hash (OWASP's floor is 2**17 at
#: r=8 for high-value online services; HQ's LAN, throttling and 0.1 s per sign-in chose this).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SALT_BYTES, _KEY_BYTES = 16, 32
_MAX_N = 2**20  # a stored hash asking for more is refused, not computed


class UserError(ValueError):
    """A user change that cannot be made (bad name or password, unknown or existing user)."""


class UserNotFoundError(UserError, LookupError):
    """No such user."""


@dataclass(frozen=True, slots=True)
class User:
    """A dashboard account (never carries the password hash)."""

    id: int
    username: str
    display_name: str
    role: str
    session_gen: int
    created_ms: int
    disabled_ms: int | None
    last_login_ms: int | None
    failed_logins: int

    @property
    def active(self) -> bool:
        """May sign in."""
        return self.disabled_ms is None

    @property
    def label(self) -> str:
        """The name to show."""
        return self.display_name or self.username


# -- names and passwords ------------------------------------------------------------------------


def normalize_username(text: str) -> str:
    """``text`` as a username (trimmed, lower case); :class:`UserError` if it cannot be one."""
    name = text.strip().lower()
    if not USERNAME.fullmatch(name):
        raise UserError(
            "a username is 1-64 characters: a-z, 0-9, '.', '_' or '-', starting with a letter"
            " or digit"
        )
    return name


def check_password(password: str, username: str = "") -> None:
    """Refuse a password that is too short, too long or the username."""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"a password has at most {MAX_PASSWORD} characters")
    if username and password.strip().lower() == username.lower():
        raise UserError("the password must not be the username")


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """``scrypt$N$r$p$salt$key`` (base64): a fresh salt every time. ~0.1 s: not on the loop."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, n, SCRYPT_R, SCRYPT_P, _KEY_BYTES)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time compare; False if malformed)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        n_, r_, p_ = int(n), int(r), int(p)
        salt_b, key_b = _unb64(salt), _unb64(key)
    except ValueError:
        return False
    if scheme != "scrypt" or not (1 < n_ <= _MAX_N and 0 < r_ <= 32 and 0 < p_ <= 4):
        return False
    if len(password) > MAX_PASSWORD:
        return False
    actual = _scrypt(password, salt_b, n_, r_, p_, len(key_b))
    return hmac.compare_digest(actual, key_b)


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than today's (rehash on sign-in)."""
    return not stored.startswith(f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}$")


@functools.cache
def dummy_hash() -> str:
    """A hash no password matches, verified for unknown users so they take as long."""
    return hash_password(secrets.token_urlsafe(24))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:  # noqa: PLR0917 - scrypt's own parameters
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n, dklen=dklen
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ValueError("not base64") from None


# -- reading ------------------------------------------------------------------------------------

_COLUMNS = (
    "id, username, display_name, role, session_gen, created_ms, disabled_ms, last_login_ms,"
    " failed_logins"
)


def _user(row: tuple[Any, ...]) -> User:
    return User(*row)


def get_user(conn: sqlite3.Connection, username: str) -> User | None:
    """The user called ``username`` (any case), or None."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM users WHERE username = ?",  # noqa: S608 - fixed columns
        (username.strip().lower(),),
    ).fetchone()
    return None if row is None else _user(row)


def user_by_id(conn: sqlite3.Connection, user_id: int) -> User | None:
    """The user with ``user_id``, or None."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM users WHERE id = ?",  # noqa: S608 - fixed columns
        (user_id,),
    ).fetchone()
    return None if row is None else _user(row)


def list_users(conn: sqlite3.Connection) -> list[User]:
    """Every user, by username."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM users ORDER BY username"  # noqa: S608 - fixed columns
    ).fetchall()
    return [_user(r) for r in rows]


def _require(conn: sqlite3.Connection, username: str) -> User:
    user = get_user(conn, username)
    if user is None:
        raise UserNotFoundError(f"no user {username!r}")
    return user


# -- changing -----------------------------------------------------------------------------------


def add_user(
    conn: sqlite3.Connection,
    username: str,
    role: str,
    password_hash: str,
    *,
    display_name: str = "",
    operator: str,
    source: str,
    caller: Caller | None = None,
) -> User:
    """Create a user (``password_hash`` from :func:`hash_password`). Audited."""
    name = normalize_username(username)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    at = now_ms()
    try:
        conn.execute(
            "INSERT INTO users (username, display_name, role, password_hash, created_ms,"
            " password_ms) VALUES (?, ?, ?, ?, ?, ?)",
            (name, display_name.strip(), role, password_hash, at, at),
        )
    except sqlite3.IntegrityError:
        raise UserError(f"user {name!r} exists") from None
    after: dict[str, Scalar] = {"role": role, "display_name": display_name.strip()}
    _audit(conn, "user.add", name, operator, source, caller, at, after=after)
    return _require(conn, name)


def set_password(
    conn: sqlite3.Connection,
    username: str,
    password_hash: str,
    *,
    operator: str,
    source: str,
    caller: Caller | None = None,
) -> User:
    """Give a user a new password hash and end every session of theirs. Audited."""
    user = _require(conn, username)
    at = now_ms()
    conn.execute(
        "UPDATE users SET password_hash = ?, password_ms = ?, session_gen = session_gen + 1,"
        " failed_logins = 0 WHERE id = ?",
        (password_hash, at, user.id),
    )
    after: dict[str, Scalar] = {"password_changed": True, "sessions_ended": True}
    _audit(conn, "user.passwd", user.username, operator, source, caller, at, after=after)
    return _require(conn, user.username)


def disable_user(
    conn: sqlite3.Connection,
    username: str,
    *,
    operator: str,
    source: str,
    caller: Caller | None = None,
) -> User:
    """Stop a user signing in and end every session of theirs (idempotent). Audited."""
    return _set_disabled(conn, username, True, operator, source, caller)


def enable_user(
    conn: sqlite3.Connection,
    username: str,
    *,
    operator: str,
    source: str,
    caller: Caller | None = None,
) -> User:
    """Let a disabled user sign in again (idempotent). Audited."""
    return _set_disabled(conn, username, False, operator, source, caller)


def _set_disabled(  # noqa: PLR0917 - one audited change
    conn: sqlite3.Connection,
    username: str,
    disabled: bool,
    operator: str,
    source: str,
    caller: Caller | None,
) -> User:
    user = _require(conn, username)
    at = now_ms()
    if disabled and user.active:
        conn.execute(
            "UPDATE users SET disabled_ms = ?, session_gen = session_gen + 1 WHERE id = ?",
            (at, user.id),
        )
    elif not disabled and not user.active:
        conn.execute("UPDATE users SET disabled_ms = NULL WHERE id = ?", (user.id,))
    action = "user.disable" if disabled else "user.enable"
    before: dict[str, Scalar] = {"disabled": not user.active}
    after: dict[str, Scalar] = {"disabled": disabled}
    _audit(conn, action, user.username, operator, source, caller, at, before=before, after=after)
    return _require(conn, user.username)


def end_sessions(
    conn: sqlite3.Connection, user_id: int, *, source: str, caller: Caller | None = None
) -> None:
    """Sign a user out everywhere (their every cookie dies). Audited as ``user.logout``."""
    user = user_by_id(conn, user_id)
    if user is None:
        return
    at = now_ms()
    conn.execute("UPDATE users SET session_gen = session_gen + 1 WHERE id = ?", (user_id,))
    _audit(conn, "user.logout", user.username, user.username, source, caller, at)


def _audit(  # noqa: PLR0917 - one audit line
    conn: sqlite3.Connection,
    action: str,
    username: str,
    operator: str,
    source: str,
    caller: Caller | None,
    at_ms: int,
    *,
    outcome: str = "accepted",
    reason_code: str | None = None,
    before: dict[str, Scalar] | None = None,
    after: dict[str, Scalar] | None = None,
) -> None:
    write_audit(
        conn,
        AuditEntry(
            request_id=f"{action}:{username}:{at_ms}",
            operator=operator,
            source=source,
            action=action,
            target=f"user:{username}",
            at=datetime.fromtimestamp(at_ms / 1000, UTC),
            outcome="accepted" if outcome == "accepted" else "rejected",
            reason_code=reason_code,
            before=before or {},
            after=after or {},
        ),
        role=caller.role if caller else None,
        ip=caller.ip if caller else None,
    )


# -- signing in ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """When failed sign-ins lock a subject: at its threshold the lock lasts ``first_lock_ms``
    and doubles with every further failure, up to ``max_lock_ms``. Failures older than
    ``window_ms`` (and not locked) are forgotten."""

    per_user_ip: int = 5
    per_user: int = 20  # one account guessed at from many addresses
    per_ip: int = 50  # one address trying many accounts
    window_ms: int = 15 * 60_000
    first_lock_ms: int = 60_000
    max_lock_ms: int = 15 * 60_000

    def lock_ms(self, failures: int, threshold: int) -> int:
        """How long ``failures`` lock a subject with ``threshold`` (0: not locked)."""
        if failures < threshold:
            return 0
        return min(self.max_lock_ms, self.first_lock_ms << min(failures - threshold, 20))


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """A sign-in in progress: counted as a failure until :func:`finish_login` says so."""

    username: str
    ip: str
    at_ms: int
    #: Non-zero: throttled until then; the password must not be checked.
    locked_until_ms: int
    user: User | None
    password_hash: str | None


def begin_login(
    conn: sqlite3.Connection,
    username: str,
    ip: str,
    *,
    at_ms: int,
    policy: ThrottlePolicy = ThrottlePolicy(),
    source: str = "hq:web",
) -> LoginAttempt:
    """Start a sign-in: refused (audited, ``locked_until_ms`` set) if any subject is locked;
    otherwise counted as a failure *before* the password is checked, so a burst of parallel
    guesses cannot outrun the count. Returns the user and their hash to verify."""
    name = _typed_name(username)
    conn.execute(
        "DELETE FROM login_throttle WHERE last_ms < ? AND locked_until_ms < ?",
        (at_ms - policy.window_ms, at_ms),
    )
    subjects = _subjects(name, ip, policy)
    locked = 0
    for kind, subject, _ in subjects:
        row = conn.execute(
            "SELECT locked_until_ms FROM login_throttle WHERE kind = ? AND subject = ?",
            (kind, subject),
        ).fetchone()
        if row is not None and row[0] > at_ms:
            locked = max(locked, int(row[0]))
    user = get_user(conn, name) if USERNAME.fullmatch(name) else None
    if locked:
        _audit_login(conn, name, ip, user, at_ms, source, "throttled")
        return LoginAttempt(name, ip, at_ms, locked, user, None)
    for kind, subject, threshold in subjects:
        row = conn.execute(
            "SELECT failures, last_ms FROM login_throttle WHERE kind = ? AND subject = ?",
            (kind, subject),
        ).fetchone()
        recent = row is not None and row[1] >= at_ms - policy.window_ms
        failures = (row[0] if recent else 0) + 1
        lock = policy.lock_ms(failures, threshold)
        conn.execute(
            "INSERT INTO login_throttle (kind, subject, failures, last_ms, locked_until_ms)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, subject) DO UPDATE SET"
            " failures = excluded.failures, last_ms = excluded.last_ms,"
            " locked_until_ms = excluded.locked_until_ms",
            (kind, subject, failures, at_ms, at_ms + lock if lock else 0),
        )
    stored = None
    if user is not None:
        stored = conn.execute(
            "SELECT password_hash FROM users WHERE id = ?", (user.id,)
        ).fetchone()[0]
    return LoginAttempt(name, ip, at_ms, 0, user, stored)


def finish_login(
    conn: sqlite3.Connection,
    attempt: LoginAttempt,
    *,
    password_ok: bool,
    new_hash: str | None = None,
    policy: ThrottlePolicy = ThrottlePolicy(),
    source: str = "hq:web",
) -> User | None:
    """End a sign-in: the user (re-read) if it succeeded, else None; audited either way.

    Success needs the password to match a user who is (still) active; it clears that
    user's failure counts (and takes back the one counted for the address). ``new_hash``
    replaces the stored hash (parameters raised since it was made)."""
    user = attempt.user
    if user is not None:
        user = user_by_id(conn, user.id)
    if user is None:
        _audit_login(
            conn, attempt.username, attempt.ip, None, attempt.at_ms, source, "unknown_user"
        )
        return None
    if not password_ok:
        conn.execute(
            "UPDATE users SET failed_logins = failed_logins + 1, last_failed_ms = ? WHERE id = ?",
            (attempt.at_ms, user.id),
        )
        _audit_login(conn, user.username, attempt.ip, user, attempt.at_ms, source, "bad_password")
        return None
    if not user.active:
        _audit_login(conn, user.username, attempt.ip, user, attempt.at_ms, source, "disabled")
        return None
    subjects = _subjects(user.username, attempt.ip, policy)
    for kind, subject, _ in subjects[:2]:
        conn.execute("DELETE FROM login_throttle WHERE kind = ? AND subject = ?", (kind, subject))
    _, ip_subject, ip_threshold = subjects[2]
    conn.execute(
        "UPDATE login_throttle SET failures = max(failures - 1, 0), locked_until_ms ="
        " CASE WHEN failures - 1 < ? THEN 0 ELSE locked_until_ms END"
        " WHERE kind = 'ip' AND subject = ?",
        (ip_threshold, ip_subject),
    )
    conn.execute(
        "UPDATE users SET last_login_ms = ?, failed_logins = 0,"
        " password_hash = coalesce(?, password_hash) WHERE id = ?",
        (attempt.at_ms, new_hash, user.id),
    )
    _audit_login(conn, user.username, attempt.ip, user, attempt.at_ms, source, None)
    return user_by_id(conn, user.id)


def _typed_name(text: str) -> str:
    # What was typed, as the throttle and the audit log key it: trimmed, lower case, no
    # control characters, clipped (a username that cannot exist is still counted).
    name = "".join(ch for ch in text.strip().lower() if ch.isprintable())
    return name[:64] or "-"


def _subjects(name: str, ip: str, policy: ThrottlePolicy) -> list[tuple[str, str, int]]:
    return [
        ("user_ip", f"{name}\n{ip}", policy.per_user_ip),
        ("user", name, policy.per_user),
        ("ip", ip, policy.per_ip),
    ]


def _audit_login(  # noqa: PLR0917 - one audit line
    conn: sqlite3.Connection,
    name: str,
    ip: str,
    user: User | None,
    at_ms: int,
    source: str,
    reason: str | None,
) -> None:
    caller = Caller(role=user.role if user else None, ip=ip or None)
    _audit(
        conn,
        "user.login",
        name,
        name,
        source,
        caller,
        at_ms,
        outcome="accepted" if reason is None else "rejected",
        reason_code=reason,
    )


# -- the dashboard's keys -----------------------------------------------------------------------


def web_key(conn: sqlite3.Connection, name: str = "session") -> bytes:
    """The secret called ``name`` (32 random bytes, made on first use and kept): the
    dashboard's cookie-signing key, shared by every worker on this database."""
    row = conn.execute("SELECT secret FROM web_keys WHERE name = ?", (name,)).fetchone()
    if row is not None:
        return bytes(row[0])
    secret = secrets.token_bytes(32)
    conn.execute(
        "INSERT INTO web_keys (name, secret, created_ms) VALUES (?, ?, ?)",
        (name, secret, now_ms()),
    )
    return secret


def rotate_web_key(conn: sqlite3.Connection, name: str = "session") -> None:
    """Forget the secret ``name``: a new one is made on next use (every session ends once
    the dashboard restarts)."""
    conn.execute("DELETE FROM web_keys WHERE name = ?", (name,))
