"""Releases on disk: signing keys, ``release build``, ``release sign``, ``release verify``.

The shell around :mod:`central.core.release`. A release directory holds::

    onecard-0.2.0-py3-none-any.whl     onecard itself
    msgspec-….whl, cryptography-….whl  its locked runtime dependencies (unless --no-deps)
    requirements.txt                   their exact pins and hashes (unless --no-deps)
    manifest.json                      canonical JSON: every file above, sha256 and size
    manifest.sig                       the Ed25519 signature over manifest.json

Only runtime dependencies go in (the ``requirements.lock`` entries that onecard's own
``Requires-Dist`` needs, transitively), not pytest or mypy: that is what an edge's
virtualenv holds (see :func:`edge_agent.install.build_venv`). They are made with
``pip wheel --require-hashes``, not ``pip download --only-binary``, because pyscard publishes
no Linux wheel: its hash-checked sdist is built here, at HQ, so branches never compile.

Publishing (central's store, the HTTPS file endpoint) is not here yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.parser import Parser
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.core.release import (
    MANIFEST_NAME,
    PRODUCT,
    SIGNATURE_NAME,
    Compatibility,
    FileEntry,
    ManifestError,
    PublicKey,
    Refused,
    ReleaseError,
    ReleaseManifest,
    Verified,
    authenticate_manifest,
    canonical_bytes,
    check_compatibility,
    check_expiry,
    check_upgrade_path,
    decode_manifest,
    normalize_machine,
    parse_public_key,
    parse_version,
    public_key_of,
    sign_manifest,
    verify_file,
)

REQUIREMENTS_NAME = "requirements.txt"
_CHUNK = 1 << 20

Run = Callable[[Sequence[str]], None]


class ReleaseToolError(ReleaseError):
    """A release command cannot go on; the message says what to do."""


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFiles:
    """What ``release keygen`` wrote."""

    private: Path
    public: Path
    key_id: str


def generate_keys(out: Path, *, name: str = "release") -> KeyFiles:
    """Write a new Ed25519 key: ``NAME.key`` (PKCS#8 PEM, 0600) and ``NAME.pub`` (hex).
    Never overwrites a key."""
    private, public = out / f"{name}.key", out / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise ReleaseToolError(f"{path} exists; a signing key is never overwritten")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = public_key_of(key)
    public.write_text(pub.raw_hex + "\n")
    return KeyFiles(private, public, pub.key_id)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 signing key in the PEM file ``path``."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ReleaseToolError(f"{path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ReleaseToolError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseToolError(f"{path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_trusted_keys(values: Iterable[str]) -> list[PublicKey]:
    """Each value is a key (64 hex digits) or a file holding one (hex or PEM)."""
    keys: list[PublicKey] = []
    for value in values:
        path = Path(value)
        try:
            text = path.read_bytes() if path.is_file() else value.encode()
            keys.append(parse_public_key(text))
        except (OSError, ReleaseError) as exc:
            raise ReleaseToolError(f"release key {value!r}: {exc}") from None
    return keys


# --- hashing and the host -------------------------------------------------------------------


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 (hex) and size of a file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def host_compatibility() -> Compatibility:
    """This interpreter and machine, as a manifest names them (``cp311``, linux, x86_64)."""
    impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, "py")
    return Compatibility(
        python_abi=f"{impl}{sys.version_info.major}{sys.version_info.minor}",
        os=sys.platform,
        machine=normalize_machine(platform.machine()),
    )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# --- build ----------------------------------------------------------------------------------


def run_command(cmd: Sequence[str]) -> None:
    """Run a build command; :class:`ReleaseToolError` with the end of its output if it fails."""
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)  # noqa: S603 - our argv
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or exc.stdout or "").strip().splitlines()[-15:])
        raise ReleaseToolError(f"{' '.join(cmd[:5])} … failed:\n{tail}") from None


def build_release(
    out: Path,
    *,
    project: Path,
    with_deps: bool = True,
    min_from_version: str = "0",
    rollback: bool = False,
    valid_days: int = 30,
    now: datetime | None = None,
    run: Run = run_command,
) -> ReleaseManifest:
    """Build onecard's wheel from ``project`` (and its runtime dependency wheels) into the
    new or empty directory ``out`` and write the unsigned ``manifest.json``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseToolError(f"{out} is not empty: build each release into a new directory")
    if not (project / "pyproject.toml").is_file():
        raise ReleaseToolError(f"{project} is not a onecard checkout (no pyproject.toml)")
    if valid_days < 1:
        raise ReleaseToolError("--valid-days must be at least 1")
    try:
        parse_version(min_from_version)
    except ValueError as exc:
        raise ReleaseToolError(f"--min-from: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onecard-release-") as tmp:
        wheel = _build_wheel(project, Path(tmp), run)
        version = _wheel_version(wheel)
        shutil.copy2(wheel, out / wheel.name)
        if with_deps:
            requirements = runtime_requirements(project, out / wheel.name)
            pins = out / REQUIREMENTS_NAME
            _write_atomic(pins, requirements.encode())
            run([sys.executable, "-m", "pip", "wheel", "--require-hashes", "--no-deps",
                 "--quiet", "--wheel-dir", str(out), "-r", str(pins)])  # fmt: skip
    created = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    manifest = ReleaseManifest(
        version=version,
        min_from_version=min_from_version,
        rollback=rollback,
        compatibility=host_compatibility(),
        created_at=created,
        expires_at=created + timedelta(days=valid_days),
        files=_list_files(out),
    )
    _write_atomic(out / MANIFEST_NAME, canonical_bytes(manifest))
    return manifest


def _build_wheel(project: Path, tmp: Path, run: Run) -> Path:
    # From a copy: setuptools writes build/ and *.egg-info next to the sources.
    copy = tmp / "src"
    shutil.copytree(
        project,
        copy,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "tests", "bench", "build", "dist", "*.egg-info", "__pycache__", ".*"
        ),
    )
    # --no-build-isolation: setuptools and wheel come from the lock, so this works offline.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp / "wheel"), str(copy)])  # fmt: skip
    found = sorted((tmp / "wheel").glob(f"{PRODUCT}-*.whl"))
    if len(found) != 1:
        raise ReleaseToolError(f"pip wheel made {len(found)} {PRODUCT} wheels, expected one")
    return found[0]


def _wheel_version(wheel: Path) -> str:
    version = wheel.name.split("-")[1]
    try:
        parse_version(version)
    except ValueError:
        raise ReleaseToolError(
            f"{wheel.name}: release versions are N.N.N (digits only), not {version!r}; "
            "set [project] version in pyproject.toml"
        ) from None
    return version


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requires: Iterable[str]) -> list[str]:
    """Names a ``Requires-Dist`` list needs here: no extras, and a requirement with an
    environment marker only if it is installed in this environment (the build host is the
    edges' Python and machine; the manifest says so), e.g. not ``exceptiongroup`` on 3.11."""
    names = []
    for req in requires:
        spec, _, marker = req.partition(";")
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
        if not match or "extra" in marker:
            continue
        if marker.strip():
            try:
                importlib.metadata.distribution(match[0])
            except importlib.metadata.PackageNotFoundError:
                continue
        names.append(match[0])
    return names


def runtime_requirements(project: Path, wheel: Path) -> str:
    """The hashed ``requirements.lock`` entries of what ``wheel`` needs at run time: its own
    ``Requires-Dist`` (read from the wheel, so a stale local install cannot mislead), then
    their dependencies, transitively, from this environment's metadata."""
    from edge_agent.install import runtime_requirements as lock_subset  # noqa: PLC0415

    lock = project / "requirements.lock"
    if not lock.is_file():
        raise ReleaseToolError(f"{lock}: missing; dependency wheels come from the lock")
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(zf.read(meta_name).decode())
    todo = _requirement_names(metadata.get_all("Requires-Dist") or [])
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if _norm(name) in seen:
            continue
        seen.add(_norm(name))
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            todo.extend(_requirement_names(importlib.metadata.requires(name) or []))
    text = lock_subset(lock.read_text(), seen, hashes=True)
    pinned = {_norm(m[1]) for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", text, re.M)}
    missing = sorted(seen - pinned)
    if missing:
        raise ReleaseToolError(
            f"{lock} pins none of {', '.join(missing)}: regenerate it (see docs/development.md)"
        )
    return text


def _list_files(directory: Path) -> tuple[FileEntry, ...]:
    entries = []
    for path in sorted(directory.iterdir()):
        if path.name in (MANIFEST_NAME, SIGNATURE_NAME) or path.name.startswith("."):
            continue
        if path.is_symlink() or not path.is_file():
            raise ReleaseToolError(f"{path}: a release holds regular files only")
        sha, size = file_digest(path)
        entries.append(FileEntry(name=path.name, sha256=sha, size=size))
    return tuple(entries)


# --- sign and verify ------------------------------------------------------------------------


def read_manifest(directory: Path) -> tuple[bytes, ReleaseManifest]:
    """``manifest.json``'s bytes and what they say (unverified)."""
    try:
        data = (directory / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        raise ReleaseToolError(f"{directory / MANIFEST_NAME}: {exc.strerror}") from None
    try:
        return data, decode_manifest(data)
    except ManifestError as exc:
        raise ReleaseToolError(f"{directory / MANIFEST_NAME}: {exc}") from None


def check_files(directory: Path, manifest: ReleaseManifest) -> Refused | None:
    """Every listed file present with its hash and size, and nothing else: pip would pick up
    a stray wheel in the directory, so an extra file is as bad as a changed one."""
    present = {p.name for p in directory.iterdir()} - {MANIFEST_NAME, SIGNATURE_NAME}
    for entry in manifest.files:
        path = directory / entry.name
        if entry.name not in present or path.is_symlink() or not path.is_file():
            return Refused(reason_code="tampered_artifact", message=f"{entry.name} is missing")
        result = verify_file(entry.name, *file_digest(path), manifest)
        if isinstance(result, Refused):
            return result
    extra = sorted(present - {e.name for e in manifest.files})
    if extra:
        return Refused(
            reason_code="tampered_artifact",
            message=f"not part of the release: {', '.join(extra)}",
        )
    return None


def sign_release(directory: Path, key: Ed25519PrivateKey, *, now: datetime) -> str:
    """Check the files against the manifest, then write ``manifest.sig``; the key id."""
    data, manifest = read_manifest(directory)
    refusal = check_files(directory, manifest) or check_expiry(manifest, now)
    if refusal is not None:
        raise ReleaseToolError(f"not signed ({refusal.reason_code}): {refusal.message}")
    _write_atomic(directory / SIGNATURE_NAME, sign_manifest(data, key))
    return public_key_of(key).key_id


def verify_release(
    directory: Path,
    trusted_keys: Sequence[PublicKey],
    *,
    now: datetime,
    installed_version: str | None = None,
    python_abi: str | None = None,
    machine: str | None = None,
) -> Verified | Refused:
    """What an edge would decide about this directory: the signature, expiry, every file;
    compatibility when ``python_abi`` and ``machine`` are given, the upgrade path when
    ``installed_version`` is."""
    try:
        data = (directory / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        return Refused(reason_code="malformed", message=f"{MANIFEST_NAME}: {exc.strerror}")
    try:
        signature: bytes | None = (directory / SIGNATURE_NAME).read_bytes()
    except FileNotFoundError:
        signature = None
    result = authenticate_manifest(data, signature, trusted_keys)
    if isinstance(result, Refused):
        return result
    manifest = result.manifest
    refusal = check_expiry(manifest, now)
    if refusal is None and python_abi is not None and machine is not None:
        refusal = check_compatibility(manifest, python_abi=python_abi, machine=machine)
    if refusal is None and installed_version is not None:
        try:
            refusal = check_upgrade_path(manifest, installed_version)
        except ValueError as exc:
            raise ReleaseToolError(f"--installed-version: {exc}") from None
    return refusal or check_files(directory, manifest) or result
