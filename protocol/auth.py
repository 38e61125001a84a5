"""The HELLO challenge–response: mutual authentication with a per-terminal key.

Both sides hold the terminal's 32-byte key. The handshake (frames in ``protocol.terminal``)::

    T → E  HELLO      {terminal_id, nonce_t, …}
    E → T  CHALLENGE  {nonce_e}
    T → E  AUTH       {mac = terminal_proof(key, terminal_id, nonce_t, nonce_e)}
    E → T  WELCOME    {mac = edge_proof(key, terminal_id, nonce_t, nonce_e), time, config}

Each proof is HMAC-SHA256 over a domain-separation label, the terminal id and both nonces,
in an order that differs per direction, so neither proof can be replayed as the other and
neither side can be made to sign a value of the other's choosing alone. Nonces are 16 random
bytes, fresh for every connection.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from protocol.errors import AuthError

KEY_SIZE = 32
NONCE_SIZE = 16
_TERMINAL_LABEL = b"onecard/v1 terminal proof"
_EDGE_LABEL = b"onecard/v1 edge proof"


def new_nonce() -> bytes:
    """16 bytes from the OS CSPRNG."""
    return secrets.token_bytes(NONCE_SIZE)


def new_key() -> bytes:
    """A fresh 32-byte terminal key."""
    return secrets.token_bytes(KEY_SIZE)


def parse_key(text: str) -> bytes:
    """A key from its hex form (as stored in key files); :class:`AuthError` if malformed."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise AuthError("terminal key is not hex") from None
    if len(key) != KEY_SIZE:
        raise AuthError(f"terminal key must be {KEY_SIZE} bytes, got {len(key)}")
    return key


def _proof(label: bytes, key: bytes, terminal_id: str, first: bytes, second: bytes) -> bytes:
    if len(key) != KEY_SIZE:
        raise AuthError(f"terminal key must be {KEY_SIZE} bytes, got {len(key)}")
    if len(first) != NONCE_SIZE or len(second) != NONCE_SIZE:
        raise AuthError(f"nonces must be {NONCE_SIZE} bytes")
    msg = label + b"\x00" + terminal_id.encode() + b"\x00" + first + second
    return hmac.new(key, msg, hashlib.sha256).digest()


def terminal_proof(key: bytes, terminal_id: str, nonce_t: bytes, nonce_e: bytes) -> bytes:
    """The MAC a terminal sends in AUTH."""
    return _proof(_TERMINAL_LABEL, key, terminal_id, nonce_t, nonce_e)


def edge_proof(key: bytes, terminal_id: str, nonce_t: bytes, nonce_e: bytes) -> bytes:
    """The MAC the edge sends in WELCOME (nonces in the other order)."""
    return _proof(_EDGE_LABEL, key, terminal_id, nonce_e, nonce_t)


def verify(expected: bytes, got: bytes, who: str) -> None:
    """Constant-time comparison; :class:`AuthError` naming ``who`` on mismatch."""
    if not hmac.compare_digest(expected, got):
        raise AuthError(f"{who} proof does not match: wrong key or forged peer")
