"""HELLO challenge–response: each side proves it holds the terminal's key, for this terminal
and these two nonces, in its own direction."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.auth import (
    KEY_SIZE,
    NONCE_SIZE,
    edge_proof,
    new_key,
    new_nonce,
    parse_key,
    terminal_proof,
    verify,
)
from protocol.errors import AuthError, ProtocolError

# A fixed, documented set of inputs for the known-answer test.
KEY = bytes(range(32))  # 000102…1f
TERMINAL_ID = "POS-01"
NONCE_T = bytes.fromhex("00112233445566778899aabbccddeeff")
NONCE_E = bytes.fromhex("ffeeddccbbaa99887766554433221100")

keys = st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE)
nonces = st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)
terminal_ids = st.from_regex(r"[A-Z0-9][A-Z0-9_-]{0,31}", fullmatch=True)


def test_terminal_proof_is_hmac_sha256_over_label_terminal_id_and_nonces() -> None:
    message = b"onecard/v1 terminal proof" + b"\x00" + b"POS-01" + b"\x00" + NONCE_T + NONCE_E
    expected = hmac.new(KEY, message, hashlib.sha256).digest()

    assert terminal_proof(KEY, TERMINAL_ID, NONCE_T, NONCE_E) == expected
    assert len(expected) == 32


def test_edge_proof_uses_its_own_label_and_the_nonces_the_other_way_round() -> None:
    message = b"onecard/v1 edge proof" + b"\x00" + b"POS-01" + b"\x00" + NONCE_E + NONCE_T
    expected = hmac.new(KEY, message, hashlib.sha256).digest()

    assert edge_proof(KEY, TERMINAL_ID, NONCE_T, NONCE_E) == expected


def test_handshake_succeeds_when_both_sides_hold_the_same_key() -> None:
    terminal_key = new_key()
    edge_key = bytes(terminal_key)  # the edge's copy, from its key file
    nonce_t, nonce_e = new_nonce(), new_nonce()

    auth_mac = terminal_proof(terminal_key, "DOOR-3", nonce_t, nonce_e)
    verify(terminal_proof(edge_key, "DOOR-3", nonce_t, nonce_e), auth_mac, "terminal")
    welcome_mac = edge_proof(edge_key, "DOOR-3", nonce_t, nonce_e)
    verify(edge_proof(terminal_key, "DOOR-3", nonce_t, nonce_e), welcome_mac, "edge")


@given(keys, keys, terminal_ids, nonces, nonces)
def test_proofs_verify_with_the_right_key_only(
    key: bytes, other: bytes, terminal_id: str, nonce_t: bytes, nonce_e: bytes
) -> None:
    for proof, who in ((terminal_proof, "terminal"), (edge_proof, "edge")):
        expected = proof(key, terminal_id, nonce_t, nonce_e)
        verify(expected, proof(key, terminal_id, nonce_t, nonce_e), who)
        if other != key:
            with pytest.raises(AuthError, match=who):
                verify(expected, proof(other, terminal_id, nonce_t, nonce_e), who)


@given(keys, terminal_ids, terminal_ids, nonces, nonces)
def test_a_proof_for_another_terminal_id_fails(
    key: bytes, terminal_id: str, other_id: str, nonce_t: bytes, nonce_e: bytes
) -> None:
    if other_id == terminal_id:
        other_id += "X"
    for proof in (terminal_proof, edge_proof):
        with pytest.raises(AuthError):
            verify(
                proof(key, terminal_id, nonce_t, nonce_e),
                proof(key, other_id, nonce_t, nonce_e),
                "peer",
            )


@given(keys, terminal_ids, nonces, nonces)
def test_swapping_the_nonces_changes_both_proofs(
    key: bytes, terminal_id: str, nonce_t: bytes, nonce_e: bytes
) -> None:
    if nonce_t == nonce_e:
        nonce_e = bytes(b ^ 0xFF for b in nonce_e)
    for proof in (terminal_proof, edge_proof):
        with pytest.raises(AuthError):
            verify(
                proof(key, terminal_id, nonce_t, nonce_e),
                proof(key, terminal_id, nonce_e, nonce_t),
                "peer",
            )


@given(keys, terminal_ids, nonces, nonces)
def test_a_terminal_proof_is_never_accepted_as_an_edge_proof(
    key: bytes, terminal_id: str, nonce_t: bytes, nonce_e: bytes
) -> None:
    """A rogue edge cannot reflect the terminal's AUTH back as its WELCOME (nor the reverse),
    even with the nonces swapped."""
    edge = edge_proof(key, terminal_id, nonce_t, nonce_e)
    terminal = terminal_proof(key, terminal_id, nonce_t, nonce_e)
    reflected = terminal_proof(key, terminal_id, nonce_e, nonce_t)

    for forged in (terminal, reflected):
        with pytest.raises(AuthError, match="edge proof does not match"):
            verify(edge, forged, "edge")
    with pytest.raises(AuthError, match="terminal proof does not match"):
        verify(terminal, edge, "terminal")


def test_a_stale_nonce_from_an_earlier_connection_fails() -> None:
    old = terminal_proof(KEY, TERMINAL_ID, NONCE_T, NONCE_E)
    fresh = terminal_proof(KEY, TERMINAL_ID, NONCE_T, new_nonce())

    with pytest.raises(AuthError):
        verify(fresh, old, "terminal")


@pytest.mark.parametrize(
    ("key", "nonce_t", "nonce_e"),
    [
        (bytes(31), NONCE_T, NONCE_E),
        (bytes(33), NONCE_T, NONCE_E),
        (b"", NONCE_T, NONCE_E),
        (KEY, NONCE_T[:15], NONCE_E),
        (KEY, NONCE_T, NONCE_E + b"\x00"),
        (KEY, b"", b""),
    ],
    ids=["key31", "key33", "no-key", "short-nonce-t", "long-nonce-e", "no-nonces"],
)
def test_proofs_refuse_wrongly_sized_keys_and_nonces(
    key: bytes, nonce_t: bytes, nonce_e: bytes
) -> None:
    for proof in (terminal_proof, edge_proof):
        with pytest.raises(AuthError):
            proof(key, TERMINAL_ID, nonce_t, nonce_e)


def test_verify_rejects_a_truncated_or_empty_mac() -> None:
    expected = terminal_proof(KEY, TERMINAL_ID, NONCE_T, NONCE_E)

    for got in (expected[:16], b"", expected + b"\x00"):
        with pytest.raises(AuthError):
            verify(expected, got, "terminal")


def test_new_keys_and_nonces_are_fresh_and_sized() -> None:
    assert len(new_key()) == KEY_SIZE == 32
    assert len(new_nonce()) == NONCE_SIZE == 16
    assert len({new_nonce() for _ in range(100)}) == 100
    assert new_key() != new_key()


# --- key files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        KEY.hex().upper(),
        f"  {KEY.hex()}\n",
        f"\t{KEY.hex()}\r\n",
    ],
    ids=["lower", "upper", "padded", "crlf"],
)
def test_parse_key_accepts_64_hex_digits_with_surrounding_whitespace(text: str) -> None:
    assert parse_key(text) == KEY


@given(keys)
def test_parse_key_reads_back_any_key_written_as_hex(key: bytes) -> None:
    assert parse_key(key.hex() + "\n") == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        KEY.hex()[:-2],
        KEY.hex() + "00",
        KEY.hex()[:-1],
        KEY.hex()[:-1] + "g",
        "0x" + KEY.hex()[2:],
        "é" * 64,
        KEY.hex()[:62],
    ],
    ids=[
        "empty",
        "blank",
        "31-bytes",
        "33-bytes",
        "odd-length",
        "non-hex",
        "0x",
        "non-ascii",
        "62",
    ],
)
def test_parse_key_rejects_anything_but_32_bytes_of_hex(text: str) -> None:
    with pytest.raises(AuthError, match="terminal key"):
        parse_key(text)


def test_auth_error_is_a_protocol_error_with_its_code() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_key("nope")
    assert info.value.code == "auth_failed"
