"""Central's release store and the download endpoint edges fetch releases from.

**The store** is a directory, one subdirectory per published version, each exactly the
signed release ``release publish`` was given (verified first: signature by a trusted key,
every file's hash and size, nothing extra)::

    STORE/0.2.0/manifest.json  manifest.sig  onecard-0.2.0-py3-none-any.whl  …

A version is published once: publishing it again with other bytes is refused, so a manifest
sha256 named by a rollout keeps meaning one release.

**The endpoint** ``GET /releases/{version}/{name}`` serves a file of a published release to a
site: HTTP Basic with the site's MQTT user name and password, checked against the broker's
password file (the credentials the site already holds; no second secret to provision).
Only the names the manifest lists (and the manifest and signature) are served; ``Range``
requests resume a download (Starlette's ``FileResponse``). The edge checks every hash
itself — the endpoint is for availability, the signature is the security.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from central.core.release import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    ManifestError,
    PublicKey,
    Refused,
    ReleaseManifest,
    Verified,
    decode_manifest,
    parse_version,
)
from central.provision import CENTRAL_USER, verify_password

#: Where ``release publish`` and ``serve`` keep releases unless told otherwise.
DEFAULT_STORE = Path("/var/lib/onecard-central/releases")
PREFIX = "/releases/"


class PublishError(Exception):
    """A release cannot be published; the message says why."""


@dataclass(frozen=True)
class ReleaseStore:
    """Published releases below ``root`` (see the module doc)."""

    root: Path

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            try:
                parse_version(path.name)
            except ValueError:
                continue
            if (path / MANIFEST_NAME).is_file():
                found.append(path.name)
        return sorted(found, key=parse_version)

    def manifest(self, version: str) -> tuple[bytes, ReleaseManifest] | None:
        """A published release's manifest bytes and what they say, or None."""
        try:
            parse_version(version)
            data = (self.root / version / MANIFEST_NAME).read_bytes()
            return data, decode_manifest(data)
        except (ValueError, OSError, ManifestError):
            return None

    def manifest_sha256(self, version: str) -> str | None:
        """The sha256 of a published manifest (what a rollout's command names)."""
        found = self.manifest(version)
        return None if found is None else hashlib.sha256(found[0]).hexdigest()

    def file(self, version: str, name: str) -> Path | None:
        """A file of a published release that may be served, or None."""
        found = self.manifest(version)
        if found is None:
            return None
        if name not in (MANIFEST_NAME, SIGNATURE_NAME) and found[1].file(name) is None:
            return None
        path = self.root / version / name
        return path if path.is_file() and not path.is_symlink() else None

    def publish(
        self, directory: Path, trusted_keys: Sequence[PublicKey], *, now: datetime
    ) -> tuple[ReleaseManifest, bool]:
        """Verify ``directory`` and copy it in; (its manifest, False if it was already
        published with the same bytes)."""
        from central.releases import verify_release  # noqa: PLC0415 - import cost

        result = verify_release(directory, trusted_keys, now=now)
        if isinstance(result, Refused):
            raise PublishError(f"not published ({result.reason_code}): {result.message}")
        assert isinstance(result, Verified)  # noqa: S101 - verify_release returns one of two
        manifest = result.manifest
        new_bytes = (directory / MANIFEST_NAME).read_bytes()
        existing = self.manifest(manifest.version)
        if existing is not None:
            if existing[0] == new_bytes:
                return manifest, False
            raise PublishError(
                f"{manifest.version} is already published with another manifest; "
                "a version is published once: build a new version"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{manifest.version}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in (MANIFEST_NAME, SIGNATURE_NAME, *(f.name for f in manifest.files)):
            shutil.copy2(directory / name, tmp / name)
        tmp.rename(self.root / manifest.version)
        return manifest, True


# --- the endpoint --------------------------------------------------------------------------


@dataclass
class SitePasswords:
    """Checks a site's MQTT credentials against the broker's password file (re-read when it
    changes, so a rotated or removed site is refused as soon as mosquitto would)."""

    path: Path
    _mtime: float = -1.0
    _hashes: dict[str, str] = field(default_factory=dict)

    def check(self, site: str, password: str) -> bool:
        """Whether ``site``/``password`` would log in to the broker (central's own account
        is not a site)."""
        if site == CENTRAL_USER:
            return False
        try:
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                lines = self.path.read_text(encoding="utf-8").splitlines()
                self._hashes = dict(
                    line.split(":", 1) for line in lines if ":" in line and not line.startswith("#")
                )
                self._mtime = mtime
        except OSError:
            return False
        encoded = self._hashes.get(site)
        return encoded is not None and verify_password(password, encoded)


@dataclass
class ArtifactStats:
    """Counters of the endpoint (bad requests are counted, never raised)."""

    served: int = 0
    unauthorized: int = 0
    not_found: int = 0


def _basic_auth(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def artifact_app(store: ReleaseStore, passwords: SitePasswords) -> Starlette:
    """The ASGI app answering ``/releases/{version}/{name}`` (see the module doc); counters
    in ``app.state.stats``."""
    stats = ArtifactStats()

    async def serve(request: Request) -> Response:
        credentials = _basic_auth(request)
        if credentials is None or not passwords.check(*credentials):
            stats.unauthorized += 1
            return PlainTextResponse(
                "site credentials required (the site's MQTT user name and password)",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="onecard releases"'},
            )
        path = store.file(request.path_params["version"], request.path_params["name"])
        if path is None:
            stats.not_found += 1
            return PlainTextResponse("no such release file", status_code=404)
        stats.served += 1
        return FileResponse(path, media_type="application/octet-stream")

    app = Starlette(routes=[Route(PREFIX + "{version}/{name}", serve, methods=["GET", "HEAD"])])
    app.state.stats = stats
    return app
