"""Signed release manifests: central.core.release, without I/O. Every refusal reason, key
rotation, the version rules, and what a changed byte does."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version  # a dev dependency: the reference for the order

from central.core.release import (
    SIGNING_CONTEXT,
    Compatibility,
    FileEntry,
    FileOk,
    KeyFormatError,
    ManifestError,
    ManifestSignature,
    PublicKey,
    Refused,
    ReleaseManifest,
    Verified,
    canonical_bytes,
    compare_versions,
    decode_manifest,
    digest,
    parse_public_key,
    parse_version,
    public_key_of,
    sign_manifest,
    verify_file,
    verify_manifest,
)

NOW = datetime(2026, 11, 23, 4, 5, 6, tzinfo=UTC)
WHEEL = b"PK\x03\x04 pretend this is onecard-0.2.0-py3-none-any.whl"
DEP = b"PK\x03\x04 and this msgspec"
HOST: dict[str, Any] = {"installed_version": "0.1.0", "python_abi": "cp311", "machine": "x86_64"}


def entry(name: str, data: bytes) -> FileEntry:
    sha, size = digest(data)
    return FileEntry(name=name, sha256=sha, size=size)


def manifest(**kw: Any) -> ReleaseManifest:
    fields: dict[str, Any] = {
        "version": "0.2.0",
        "min_from_version": "0.1.0",
        "compatibility": Compatibility(python_abi="cp311", machine="x86_64"),
        "created_at": NOW - timedelta(days=1),
        "expires_at": NOW + timedelta(days=29),
        "files": (
            entry("onecard-0.2.0-py3-none-any.whl", WHEEL),
            entry("msgspec-0.22.0-cp311-cp311-manylinux_2_17_x86_64.whl", DEP),
        ),
    }
    fields.update(kw)
    return ReleaseManifest(**fields)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def signed(key: Ed25519PrivateKey, **kw: Any) -> tuple[bytes, bytes]:
    data = canonical_bytes(manifest(**kw))
    return data, sign_manifest(data, key)


def verify(data: bytes, sig: bytes | None, keys: list[PublicKey], **kw: Any) -> Any:
    return verify_manifest(data, sig, keys, **{**HOST, "now": NOW, **kw})


def refusal(result: Any) -> str:
    assert isinstance(result, Refused), result
    return result.reason_code


# --- the good case ---------------------------------------------------------------------------


def test_a_signed_compatible_newer_release_verifies(key):
    data, sig = signed(key)
    result = verify(data, sig, [public_key_of(key)])
    assert isinstance(result, Verified)
    assert result.manifest == manifest()
    assert result.key_id == public_key_of(key).key_id


def test_canonical_bytes_sort_keys_and_round_trip():
    data = canonical_bytes(manifest())
    assert data.startswith(b'{"compatibility":{"machine":"x86_64","os":"linux"')
    assert decode_manifest(data) == manifest()
    assert canonical_bytes(decode_manifest(data)) == data


# --- every refusal ---------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [None, b"", b"  \n"])
def test_no_signature_is_unsigned(key, sig):
    data, _ = signed(key)
    assert refusal(verify(data, sig, [public_key_of(key)])) == "unsigned"


def test_a_tampered_manifest_is_a_bad_signature(key):
    data, sig = signed(key)
    # Still a valid manifest, only the minimum version changed: the signature catches it.
    tampered = data.replace(b'"min_from_version":"0.1.0"', b'"min_from_version":"0.0.1"')
    assert tampered != data and decode_manifest(tampered).min_from_version == "0.0.1"
    result = verify(tampered, sig, [public_key_of(key)])
    assert refusal(result) == "bad_signature"
    assert "does not match" in result.message


def test_a_manifest_signed_by_another_key_is_a_bad_signature(key, other_key):
    data, sig = signed(other_key)
    result = verify(data, sig, [public_key_of(key)])
    assert refusal(result) == "bad_signature"
    assert public_key_of(other_key).key_id in result.message


def test_a_forged_key_id_does_not_help(key, other_key):
    """Claiming the trusted key's id on another key's signature fails the check itself."""
    data, sig = signed(other_key)
    envelope = msgspec.json.decode(sig, type=ManifestSignature)
    forged = canonical_bytes(ManifestSignature(key_id=public_key_of(key).key_id, sig=envelope.sig))
    assert refusal(verify(data, forged, [public_key_of(key)])) == "bad_signature"


@pytest.mark.parametrize(
    "sig", [b"garbage", b"{}", b'{"v":1,"alg":"rsa","key_id":"00","sig":"00"}', b"[" * 5000]
)
def test_a_garbage_signature_file_is_a_bad_signature(key, sig):
    data, _ = signed(key)
    assert refusal(verify(data, sig, [public_key_of(key)])) == "bad_signature"


def test_with_no_trusted_key_nothing_verifies(key):
    data, sig = signed(key)
    result = verify(data, sig, [])
    assert refusal(result) == "bad_signature"
    assert "no release key is trusted" in result.message


def test_signed_bytes_that_are_no_manifest_are_malformed(key):
    for data in (b"not json", b'{"v":2}', canonical_bytes(manifest())[:-1]):
        sig = ManifestSignature(
            key_id=public_key_of(key).key_id, sig=key.sign(SIGNING_CONTEXT + data).hex()
        )
        assert refusal(verify(data, canonical_bytes(sig), [public_key_of(key)])) == "malformed"


def test_a_signature_without_the_context_prefix_is_refused(key):
    """A signature the key made over the bare bytes (some other use of the key) is no
    release signature."""
    data = canonical_bytes(manifest())
    bare = ManifestSignature(key_id=public_key_of(key).key_id, sig=key.sign(data).hex())
    assert refusal(verify(data, canonical_bytes(bare), [public_key_of(key)])) == "bad_signature"


def test_an_expired_release_is_refused_from_its_expiry_on(key):
    expires = NOW + timedelta(hours=1)
    data, sig = signed(key, expires_at=expires)
    keys = [public_key_of(key)]
    assert isinstance(verify(data, sig, keys, now=expires - timedelta(seconds=1)), Verified)
    result = verify(data, sig, keys, now=expires)
    assert refusal(result) == "expired"
    assert "expired at 2026-11-23T05:05:06" in result.message


def test_another_python_abi_is_incompatible(key):
    data, sig = signed(key)
    result = verify(data, sig, [public_key_of(key)], python_abi="cp312")
    assert refusal(result) == "incompatible_python"
    assert "cp311" in result.message and "cp312" in result.message


@pytest.mark.parametrize(("machine", "os"), [("aarch64", "linux"), ("x86_64", "win32")])
def test_another_machine_or_os_is_incompatible(key, machine, os):
    data, sig = signed(key)
    result = verify(data, sig, [public_key_of(key)], machine=machine, os=os)
    assert refusal(result) == "incompatible_arch"


def test_machine_names_are_compared_normalised(key):
    data, sig = signed(key)
    assert isinstance(verify(data, sig, [public_key_of(key)], machine="AMD64"), Verified)


def test_an_older_release_is_a_downgrade(key):
    data, sig = signed(key, version="0.1.5", min_from_version="0.1.0")
    result = verify(data, sig, [public_key_of(key)], installed_version="0.2.0")
    assert refusal(result) == "downgrade"
    assert "not a signed rollback release" in result.message


def test_a_signed_rollback_release_may_go_back(key):
    data, sig = signed(key, version="0.1.5", min_from_version="0.2.0", rollback=True)
    result = verify(data, sig, [public_key_of(key)], installed_version="0.2.0")
    assert isinstance(result, Verified)
    assert result.manifest.rollback


def test_the_installed_version_again_is_already_installed(key):
    data, sig = signed(key)
    assert refusal(verify(data, sig, [public_key_of(key)], installed_version="0.2")) == (
        "already_installed"
    )


def test_an_install_below_min_from_is_too_old_to_upgrade_from(key):
    data, sig = signed(key, min_from_version="0.1.5")
    result = verify(data, sig, [public_key_of(key)], installed_version="0.1.4")
    assert refusal(result) == "too_old_to_upgrade_from"
    assert "0.1.5" in result.message


def test_a_bad_installed_version_is_the_callers_error(key):
    data, sig = signed(key)
    with pytest.raises(ValueError, match="not N"):
        verify(data, sig, [public_key_of(key)], installed_version="0.1.0.dev1")


def test_the_signature_is_checked_before_anything_else(key, other_key):
    """An expired, incompatible downgrade from an untrusted key is refused for its key."""
    data, sig = signed(other_key, expires_at=NOW, version="0.0.1", min_from_version="0")
    result = verify(data, sig, [public_key_of(key)], python_abi="cp39")
    assert refusal(result) == "bad_signature"


# --- artifacts -------------------------------------------------------------------------------


def test_an_artifact_matching_its_entry_is_ok():
    m = manifest()
    result = verify_file("onecard-0.2.0-py3-none-any.whl", *digest(WHEEL), m)
    assert isinstance(result, FileOk)
    assert result.entry == m.files[0]


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("onecard-0.2.0-py3-none-any.whl", WHEEL[:-1] + b"X", "sha256"),
        ("onecard-0.2.0-py3-none-any.whl", WHEEL + b"!", "bytes"),
        ("evil-9.9-py3-none-any.whl", WHEEL, "not part of the release"),
    ],
)
def test_a_changed_or_foreign_artifact_is_tampered(name, data, words):
    result = verify_file(name, *digest(data), manifest())
    assert refusal(result) == "tampered_artifact"
    assert words in result.message


# --- keys and rotation -----------------------------------------------------------------------


def test_keys_parse_from_hex_or_pem_with_the_same_id(key):
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    from_hex = parse_public_key(raw.hex().upper() + "\n")
    from_pem = parse_public_key(pem.decode())
    assert from_hex == from_pem == public_key_of(key)
    assert from_hex.key_id == hashlib.sha256(raw).hexdigest()[:16]


@pytest.mark.parametrize("text", ["", "abc", "zz" * 32, "-----BEGIN PUBLIC KEY-----\nnope\n"])
def test_anything_else_is_no_key(text):
    with pytest.raises(KeyFormatError):
        parse_public_key(text)


def test_an_rsa_key_is_no_release_key():
    rsa = generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = rsa.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFormatError, match="not an Ed25519"):
        parse_public_key(pem)


def test_keys_rotate_by_trusting_both_then_dropping_the_old(key, other_key):
    old, new = public_key_of(key), public_key_of(other_key)
    by_old, by_new = signed(key), signed(other_key)
    assert isinstance(verify(*by_old, [old]), Verified)
    # During the rotation both keys are trusted: releases signed by either install.
    both = [old, new]
    assert verify(*by_old, both).key_id == old.key_id
    assert verify(*by_new, both).key_id == new.key_id
    # Once the old key is dropped, what it signed no longer does.
    assert refusal(verify(*by_old, [new])) == "bad_signature"
    assert isinstance(verify(*by_new, [new]), Verified)


# --- manifests that cannot be --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"min_from_version": "0.3.0"}, "min_from_version"),
        ({"expires_at": NOW - timedelta(days=1)}, "expires_at"),
        ({"version": "0.2.0-rc1"}, "version"),
        ({"files": ()}, "files"),
        ({"files": (entry("a.whl", WHEEL), entry("a.whl", DEP))}, "twice"),
        ({"files": (entry("../etc/passwd", WHEEL),)}, "name"),
        ({"files": (entry("manifest.sig", WHEEL),)}, "manifest.sig"),
    ],
)
def test_impossible_manifests_do_not_decode(change, words):
    body = msgspec.to_builtins(manifest())
    body.update(msgspec.to_builtins(change))
    with pytest.raises(ManifestError, match=words):
        decode_manifest(msgspec.json.encode(body))


def test_signing_refuses_what_is_no_manifest(key):
    with pytest.raises(ManifestError):
        sign_manifest(b"{}", key)


# --- versions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("0.1.0", "0.2.0", -1),
        ("1.2", "1.2.0", 0),
        ("1.2.0.0", "1.2", 0),
        ("1.10", "1.9", 1),
        ("2", "1.999.999", 1),
        ("2026.11.0.1", "2026.11.0", 1),
    ],
)
def test_versions_compare_numerically(a, b, order):
    assert compare_versions(a, b) == order
    assert compare_versions(b, a) == -order


@pytest.mark.parametrize(
    "text", ["", "1.", ".1", "01.2", "1.2.3.4.5", "1.0rc1", "1.0+local", "v1", "1..2", "1 "]
)
def test_only_strict_numeric_versions_parse(text):
    with pytest.raises(ValueError, match="not N"):
        parse_version(text)


versions = st.lists(st.integers(0, 10**6), min_size=1, max_size=4).map(
    lambda parts: ".".join(map(str, parts))
)


@given(versions, versions)
def test_the_order_agrees_with_pep_440(a, b):
    expected = (Version(a) > Version(b)) - (Version(a) < Version(b))
    assert compare_versions(a, b) == expected


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.data())
def test_any_changed_byte_of_a_signed_manifest_is_refused(key, data):
    body, sig = signed(key)
    at = data.draw(st.integers(0, len(body) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != body[at]))
    changed = body[:at] + bytes([value]) + body[at + 1 :]
    assert refusal(verify(changed, sig, [public_key_of(key)])) == "bad_signature"


@given(st.binary(max_size=300))
def test_any_signature_bytes_give_a_refusal_never_an_exception(key, sig):
    body, _ = signed(key)
    assert isinstance(verify(body, sig, [public_key_of(key)]), Refused)
