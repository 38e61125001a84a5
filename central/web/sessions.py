"""Signed session cookies and CSRF tokens (pure: no I/O; time is a parameter).

Session cookie ``oc_session``::

    v1.<user id>.<session gen>.<issued>.<seen>.<mac>

``issued`` and ``seen`` are Unix seconds (sign-in, last refresh); ``mac`` is base64url
(no padding) of HMAC-SHA256 over everything before it, with a key derived from the
dashboard's secret. The server keeps no session rows: a cookie is valid while its MAC
matches, ``seen + idle`` and ``issued + lifetime`` are in the future, and ``gen`` equals
the user's ``session_gen`` (which passwd, disable and sign-out bump).

CSRF: a random nonce in cookie ``oc_csrf``; every form carries
``base64url(HMAC-SHA256(csrf key, nonce | subject))`` where the subject is ``<user id>.<gen>``
(or ``anon`` before sign-in). A forged page can neither read the cookie nor compute the
token, and a token dies with its session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

SESSION_COOKIE = "oc_session"
CSRF_COOKIE = "oc_csrf"
ANONYMOUS = "anon"

_COOKIE = re.compile(r"v1\.(\d{1,18})\.(\d{1,18})\.(\d{1,12})\.(\d{1,12})\.([A-Za-z0-9_-]{43})")
_NONCE = re.compile(r"[A-Za-z0-9_-]{43}")
#: A cookie "seen" this far in the future was not made by this clock.
_SKEW_S = 300

Problem = Literal["malformed", "signature", "expired"]


class BadSessionError(ValueError):
    """A session cookie that is not (or no longer) valid; ``problem`` says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.problem: Problem = problem


@dataclass(frozen=True, slots=True)
class Session:
    """What a session cookie says."""

    user_id: int
    gen: int
    issued: int
    seen: int

    @property
    def subject(self) -> str:
        """What its CSRF tokens are bound to."""
        return f"{self.user_id}.{self.gen}"


class SessionCodec:
    """Signs and checks session cookies and CSRF tokens with keys derived from ``secret``."""

    def __init__(self, secret: bytes, *, idle_s: int, lifetime_s: int) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret needs at least 16 bytes")
        self._session_key = _derive(secret, b"onecard/web/session/v1")
        self._csrf_key = _derive(secret, b"onecard/web/csrf/v1")
        self.idle_s, self.lifetime_s = idle_s, lifetime_s

    def encode(self, session: Session) -> str:
        """The cookie value for ``session``."""
        body = f"v1.{session.user_id}.{session.gen}.{session.issued}.{session.seen}"
        return f"{body}.{self._mac(self._session_key, body)}"

    def decode(self, value: str, *, now: int) -> Session:
        """The session in cookie ``value`` at Unix second ``now``; :class:`BadSessionError`
        if it is malformed, its MAC does not match, or it has expired."""
        match = _COOKIE.fullmatch(value)
        if match is None:
            raise BadSessionError("malformed")
        body = value[: value.rindex(".")]
        if not hmac.compare_digest(self._mac(self._session_key, body), match[5]):
            raise BadSessionError("signature")
        session = Session(int(match[1]), int(match[2]), int(match[3]), int(match[4]))
        if (
            now >= session.seen + self.idle_s
            or now >= session.issued + self.lifetime_s
            or session.seen > now + _SKEW_S
        ):
            raise BadSessionError("expired")
        return session

    def csrf_token(self, nonce: str, subject: str) -> str:
        """The token forms carry for ``nonce`` (the cookie's) and ``subject``."""
        return self._mac(self._csrf_key, f"{nonce}|{subject}")

    def csrf_ok(self, nonce: str, subject: str, token: str | None) -> bool:
        """Whether ``token`` is the one for ``nonce`` and ``subject`` (constant time)."""
        if not token or not valid_nonce(nonce):
            return False
        return hmac.compare_digest(self.csrf_token(nonce, subject), token)

    @staticmethod
    def _mac(key: bytes, text: str) -> str:
        digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_nonce() -> str:
    """A fresh CSRF nonce (256 random bits, base64url)."""
    return secrets.token_urlsafe(32)


def valid_nonce(value: str | None) -> bool:
    """Whether ``value`` looks like a nonce :func:`new_nonce` made."""
    return value is not None and _NONCE.fullmatch(value) is not None


def _derive(secret: bytes, purpose: bytes) -> bytes:
    # One secret, a key per purpose: a session MAC is never a valid CSRF token.
    return hmac.new(secret, purpose, hashlib.sha256).digest()
