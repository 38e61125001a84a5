"""Signed release manifests, and whether a site may install one: pure.

A release is a directory of wheels (onecard's and its locked runtime dependencies), a
``manifest.json`` that names every file with its sha256 and size, and a ``manifest.sig``.
HQ builds and signs it (:mod:`central.releases`); an edge pins one or more release public
keys and calls :func:`verify_manifest` on the manifest's bytes, then :func:`verify_file` on
each artifact it downloaded, and installs nothing unless all of them pass.

**Signing.** The signature covers the manifest file's exact bytes (verify the bytes, then
parse them), prefixed with :data:`SIGNING_CONTEXT` so that a signature over a manifest can
never be mistaken for a signature over anything else the same key might sign. Manifests are
written as :func:`canonical_bytes` (msgspec JSON, keys sorted), so the same manifest always
has the same bytes. Keys are Ed25519; a key's id is the first 16 hex digits of the sha256 of
its raw 32-byte public key. An edge may trust several keys at once, which is how a key is
rotated: add the new key to every edge, sign with it, then drop the old one.

**Versions** are strict numeric release numbers: one to four dot-separated integers without
leading zeros (``1``, ``0.4``, ``2.10.3``, ``2026.11.0.1``); no pre-, post-, dev- or local
parts. They compare numerically, component by component, missing components counting as 0
(``1.2 == 1.2.0 < 1.10``). Every such version is a valid PEP 440 release number and orders
the same way under PEP 440; ``packaging`` is not used because it is no runtime dependency of
onecard (only pytest and wheel pull it in), and an edge's virtualenv holds runtime
dependencies only.

**Refusals** (:class:`Refused`, ``reason_code`` stable for programs, ``message`` for
people), in the order :func:`verify_manifest` checks them:

- ``unsigned`` — no signature at all;
- ``bad_signature`` — the signature file is not one, no trusted key has its key id, or the
  signature does not match the bytes (a tampered manifest, or signed by another key);
- ``malformed`` — signed, but not a manifest this code understands;
- ``expired`` — ``now`` is at or past ``expires_at``;
- ``incompatible_python`` / ``incompatible_arch`` — built for another Python ABI (``cp311``)
  or another OS/machine (``linux``/``x86_64``): compiled dependency wheels would not load;
- ``already_installed`` — the installed version is this version;
- ``downgrade`` — older than the installed version, and not a signed rollback release;
- ``too_old_to_upgrade_from`` — the installed version is below ``min_from_version``;
- ``tampered_artifact`` — from :func:`verify_file`: a file's hash or size differs from the
  manifest, or the file is not in it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from msgspec import Meta, Struct

PRODUCT = "onecard"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
#: Prepended to the manifest bytes before signing and verifying (domain separation).
SIGNING_CONTEXT = b"onecard release manifest v1\x00"
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 4096
MAX_FILES = 1000
MAX_FILE_BYTES = 1 << 31
#: onecard-edge is a systemd service: releases are for Linux unless a manifest says otherwise.
DEFAULT_OS = "linux"

VERSION_REGEX = r"(?:0|[1-9][0-9]{0,8})(?:\.(?:0|[1-9][0-9]{0,8})){0,3}"
_VERSION_RE = re.compile(VERSION_REGEX)
_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
_MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}

RefusalCode = Literal[
    "unsigned",
    "bad_signature",
    "malformed",
    "expired",
    "incompatible_python",
    "incompatible_arch",
    "already_installed",
    "downgrade",
    "too_old_to_upgrade_from",
    "tampered_artifact",
]

VersionText = Annotated[str, Meta(pattern=rf"^{VERSION_REGEX}\Z")]
FileName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\Z")]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]
KeyId = Annotated[str, Meta(pattern=r"^[0-9a-f]{16}\Z")]
Tag = Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,32}\Z")]
UtcTime = Annotated[datetime, Meta(tz=True)]


class ReleaseError(Exception):
    """Root of this module's errors (bad keys, versions or manifests handed in by a caller)."""


class KeyFormatError(ReleaseError):
    """Text that is neither a hex Ed25519 public key nor a PEM one."""


class ManifestError(ReleaseError):
    """Bytes that are not a release manifest (the message names the field)."""


# --- versions -------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int, int, int]:
    """``"1.2"`` → ``(1, 2, 0, 0)``; :class:`ValueError` for anything else (see the module doc)."""
    if not isinstance(text, str) or not _VERSION_RE.fullmatch(text):
        raise ValueError(f"version {text!r} is not N[.N[.N[.N]]] (digits, no leading zeros)")
    parts = [int(p) for p in text.split(".")] + [0, 0, 0]
    return (parts[0], parts[1], parts[2], parts[3])


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, the same as, or newer than ``b``."""
    va, vb = parse_version(a), parse_version(b)
    return (va > vb) - (va < vb)


def normalize_machine(machine: str) -> str:
    """``platform.machine()`` spelled one way: lower case, ``amd64`` → ``x86_64``, ``arm64`` →
    ``aarch64``."""
    lowered = machine.strip().lower()
    return _MACHINE_ALIASES.get(lowered, lowered)


# --- the manifest ---------------------------------------------------------------------------


def _require_utc(**times: datetime) -> None:
    for name, value in times.items():
        if value.utcoffset() != timedelta(0):
            raise ValueError(f"`{name}` must be a UTC time (…Z), got {value.isoformat()}")


class FileEntry(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One artifact of a release: a plain file name (no directories), its sha256 and size."""

    name: FileName
    sha256: Sha256Hex
    size: Annotated[int, Meta(ge=0, le=MAX_FILE_BYTES)]


class Compatibility(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the release's compiled wheels load: a CPython ABI tag, an OS and a machine."""

    python_abi: Annotated[str, Meta(pattern=r"^[a-z]{2}[0-9]{2,4}\Z")]
    os: Tag = DEFAULT_OS
    machine: Tag


class ReleaseManifest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a signed release is. ``min_from_version`` is the oldest installed version it may
    upgrade from; ``rollback`` marks an explicit rollback release, the only kind that may go
    to a version older than the installed one."""

    v: Literal[1] = 1
    name: Literal["onecard"] = "onecard"
    version: VersionText
    min_from_version: VersionText
    rollback: bool = False
    compatibility: Compatibility
    created_at: UtcTime
    expires_at: UtcTime
    files: Annotated[tuple[FileEntry, ...], Meta(min_length=1, max_length=MAX_FILES)]

    def __post_init__(self) -> None:
        _require_utc(created_at=self.created_at, expires_at=self.expires_at)
        if self.expires_at <= self.created_at:
            raise ValueError("`expires_at` must be after `created_at`")
        if not self.rollback and compare_versions(self.min_from_version, self.version) > 0:
            raise ValueError("`min_from_version` is above `version` (only a rollback may be)")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("`files` names a file twice")
        if {MANIFEST_NAME, SIGNATURE_NAME} & set(names):
            raise ValueError(f"`files` must not list {MANIFEST_NAME} or {SIGNATURE_NAME}")

    def file(self, name: str) -> FileEntry | None:
        """The entry for ``name``, if the manifest lists it."""
        return next((f for f in self.files if f.name == name), None)


class ManifestSignature(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``manifest.sig``: which key signed, and the 64-byte Ed25519 signature in hex."""

    v: Literal[1] = 1
    alg: Literal["ed25519"] = "ed25519"
    key_id: KeyId
    sig: Annotated[str, Meta(pattern=r"^[0-9a-f]{128}\Z")]


_manifest_decoder = msgspec.json.Decoder(ReleaseManifest)
_signature_decoder = msgspec.json.Decoder(ManifestSignature)


def canonical_bytes(value: ReleaseManifest | ManifestSignature) -> bytes:
    """The one byte form of a manifest (or signature): msgspec JSON with sorted keys."""
    return msgspec.json.encode(value, order="sorted")


def decode_manifest(data: bytes) -> ReleaseManifest:
    """Parse manifest bytes (without checking any signature) or raise :class:`ManifestError`."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
    try:
        return _manifest_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise ManifestError(f"not a release manifest: {exc}") from None


# --- keys -----------------------------------------------------------------------------------


class PublicKey(Struct, frozen=True):
    """A trusted release key: the raw 32-byte Ed25519 public key, as lower-case hex."""

    raw_hex: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]

    @property
    def key_id(self) -> str:
        """First 16 hex digits of the sha256 of the raw key."""
        return key_id_of(bytes.fromhex(self.raw_hex))


def key_id_of(raw: bytes) -> str:
    """The key id of a raw 32-byte public key."""
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public_key(text: str | bytes) -> PublicKey:
    """A key from 64 hex digits or a PEM ``PUBLIC KEY`` block; :class:`KeyFormatError` else."""
    data = text.encode() if isinstance(text, str) else text
    stripped = data.strip()
    if _HEX_KEY_RE.fullmatch(stripped.decode("ascii", "replace")):
        return PublicKey(stripped.decode("ascii").lower())
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(f"a {type(key).__name__}, not an Ed25519 public key")
        return public_key_of(key)
    raise KeyFormatError("a release key is 64 hex digits or a PEM 'PUBLIC KEY' block")


def public_key_of(key: Ed25519PrivateKey | Ed25519PublicKey) -> PublicKey:
    """The :class:`PublicKey` of a private key (or of a cryptography public key)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(raw.hex())


def sign_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The ``manifest.sig`` bytes for ``manifest_bytes`` (which must decode as a manifest)."""
    decode_manifest(manifest_bytes)
    sig = key.sign(SIGNING_CONTEXT + manifest_bytes)
    return canonical_bytes(ManifestSignature(key_id=public_key_of(key).key_id, sig=sig.hex()))


# --- verification ---------------------------------------------------------------------------


class Verified(Struct, frozen=True, kw_only=True, tag="verified", tag_field="outcome"):
    """The manifest is authentic (and, from :func:`verify_manifest`, installable here)."""

    manifest: ReleaseManifest
    key_id: str


class Refused(Struct, frozen=True, kw_only=True, tag="refused", tag_field="outcome"):
    """Not installed: ``reason_code`` for programs, ``message`` for the technician."""

    reason_code: RefusalCode
    message: str


class FileOk(Struct, frozen=True, kw_only=True, tag="ok", tag_field="outcome"):
    """An artifact matches its manifest entry."""

    entry: FileEntry


def authenticate_manifest(
    manifest_bytes: bytes, signature: bytes | None, trusted_keys: Sequence[PublicKey]
) -> Verified | Refused:
    """Check the signature over the exact bytes, then parse them. No other check."""
    if not signature or not signature.strip():
        return Refused(reason_code="unsigned", message="the release has no signature")
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        return Refused(reason_code="malformed", message="the manifest is too big to be one")
    if len(signature) > MAX_SIGNATURE_BYTES:
        return Refused(reason_code="bad_signature", message="not a release signature: too long")
    try:
        envelope = _signature_decoder.decode(signature)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        return Refused(reason_code="bad_signature", message=f"not a release signature: {exc}")
    if not trusted_keys:
        return Refused(reason_code="bad_signature", message="no release key is trusted here")
    key = next((k for k in trusted_keys if k.key_id == envelope.key_id), None)
    if key is None:
        trusted = ", ".join(sorted(k.key_id for k in trusted_keys))
        return Refused(
            reason_code="bad_signature",
            message=f"signed by key {envelope.key_id}, which is not trusted here ({trusted})",
        )
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.raw_hex)).verify(
            bytes.fromhex(envelope.sig), SIGNING_CONTEXT + manifest_bytes
        )
    except (InvalidSignature, ValueError):
        return Refused(
            reason_code="bad_signature",
            message=f"the signature by key {key.key_id} does not match the manifest "
            "(tampered or damaged)",
        )
    try:
        manifest = decode_manifest(manifest_bytes)
    except ManifestError as exc:
        return Refused(reason_code="malformed", message=str(exc))
    return Verified(manifest=manifest, key_id=key.key_id)


def check_expiry(manifest: ReleaseManifest, now: datetime) -> Refused | None:
    """``expired`` once ``now`` reaches ``expires_at``."""
    if now >= manifest.expires_at:
        return Refused(
            reason_code="expired",
            message=f"release {manifest.version} expired at {manifest.expires_at.isoformat()}",
        )
    return None


def check_compatibility(
    manifest: ReleaseManifest, *, python_abi: str, machine: str, os: str = DEFAULT_OS
) -> Refused | None:
    """``incompatible_python`` or ``incompatible_arch`` unless built for this host."""
    want = manifest.compatibility
    if python_abi != want.python_abi:
        return Refused(
            reason_code="incompatible_python",
            message=f"release {manifest.version} is for Python {want.python_abi}, "
            f"this host runs {python_abi}",
        )
    if (os, normalize_machine(machine)) != (want.os, normalize_machine(want.machine)):
        return Refused(
            reason_code="incompatible_arch",
            message=f"release {manifest.version} is for {want.os}/{want.machine}, "
            f"this host is {os}/{machine}",
        )
    return None


def check_upgrade_path(manifest: ReleaseManifest, installed_version: str) -> Refused | None:
    """May the installed version go to this one? :class:`ValueError` if ``installed_version``
    itself is not a version (the caller's own, so a bug or a broken install, not peer input)."""
    order = compare_versions(manifest.version, installed_version)
    if order == 0:
        return Refused(
            reason_code="already_installed",
            message=f"version {installed_version} is already installed",
        )
    if order < 0 and not manifest.rollback:
        return Refused(
            reason_code="downgrade",
            message=f"release {manifest.version} is older than the installed "
            f"{installed_version} and is not a signed rollback release",
        )
    if compare_versions(installed_version, manifest.min_from_version) < 0:
        return Refused(
            reason_code="too_old_to_upgrade_from",
            message=f"release {manifest.version} upgrades from {manifest.min_from_version} "
            f"or later; {installed_version} is installed (install an intermediate release)",
        )
    return None


def verify_manifest(
    manifest_bytes: bytes,
    signature: bytes | None,
    trusted_keys: Sequence[PublicKey],
    *,
    installed_version: str,
    python_abi: str,
    machine: str,
    now: datetime,
    os: str = DEFAULT_OS,
) -> Verified | Refused:
    """Everything an edge checks before it downloads a single artifact (see the module doc
    for the reasons, in the order they are checked)."""
    result = authenticate_manifest(manifest_bytes, signature, trusted_keys)
    if isinstance(result, Refused):
        return result
    manifest = result.manifest
    refusal = (
        check_expiry(manifest, now)
        or check_compatibility(manifest, python_abi=python_abi, machine=machine, os=os)
        or check_upgrade_path(manifest, installed_version)
    )
    return refusal or result


def verify_file(name: str, sha256: str, size: int, manifest: ReleaseManifest) -> FileOk | Refused:
    """Does the artifact ``name`` with this hash (hex) and size match the manifest?"""
    entry = manifest.file(name)
    if entry is None:
        return Refused(
            reason_code="tampered_artifact", message=f"{name} is not part of the release"
        )
    if size != entry.size:
        return Refused(
            reason_code="tampered_artifact",
            message=f"{name} is {size} bytes, the manifest says {entry.size}",
        )
    if sha256.lower() != entry.sha256:
        return Refused(
            reason_code="tampered_artifact",
            message=f"{name} has sha256 {sha256.lower()[:16]}…, the manifest says "
            f"{entry.sha256[:16]}…",
        )
    return FileOk(entry=entry)


def digest(data: bytes) -> tuple[str, int]:
    """The sha256 (hex) and size of in-memory data, for :func:`verify_file`."""
    return hashlib.sha256(data).hexdigest(), len(data)
