"""Remote upgrades, the daemon's half: fetch a signed release, check it, hand it over.

The daemon runs as the unprivileged ``onecard`` user and cannot write ``/opt/onecard``; the
privileged half is :mod:`edge_agent.updater` (``onecard-edge updater``, the oneshot unit
``onecard-edge-updater.service``). They talk through files in ``DATA_DIR/upgrade/``::

    incoming/VERSION/      the release as downloaded (``.part`` files resume a download)
    request.json           daemon → updater: install this (the path unit starts the updater)
    progress.json          updater → daemon: installing / restarting (forwarded to central)
    switch.request/.ready  the updater is about to restart; the daemon says terminals are idle
    switching.json         updater: switched, not yet committed or rolled back (see recover)
    result.json            updater → daemon: done / rolled back / rejected (sent as the reply)
    state.json             updater: versions that failed (never retried), the committed one

On an ``upgrade`` command (:class:`UpgradeManager`): reply ``accepted``; download the
manifest and check it is the one the rollout named (its sha256) and signed by a pinned key,
not expired, built for this host and newer than what runs (:func:`central.releases.
verify_release`); download every file (HTTP ``Range`` resumes a broken download) and check
its hash and size; then write ``request.json``. A refusal is replied as ``rejected`` with
the release's refusal code and leaves nothing behind. Everything the updater does comes back
through ``progress.json`` and ``result.json``, which the daemon — the old one, or the new one
after the restart — forwards on ``up/reply``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urljoin, urlsplit

import msgspec
import structlog

from central.core.release import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    PublicKey,
    RefusalCode,
    Refused,
    ReleaseManifest,
    decode_manifest,
    parse_public_key,
    verify_file,
)
from edge_agent.adapters.waiting import wait_event
from edge_agent.config import EdgeConfig
from protocol.messages import Upgrade

log = structlog.get_logger("edge.upgrade")
_T = TypeVar("_T")

MAX_DOWNLOAD_BYTES = 1 << 30
_CHUNK = 1 << 16
POLL_S = 0.25
#: Lines of the failed version's log sent back with ROLLED_BACK.
LOG_TAIL_LINES = 20

#: Codes of an upgrade refused before the release itself is looked at (besides the
#: release's own refusal codes, :data:`central.core.release.RefusalCode`).
LocalReason = Literal["not_configured", "command_expired", "known_bad", "busy", "download_failed"]

#: ``reply(cmd_id, status, detail, data)`` → True once published.
ReplyFn = Callable[[str, str, str, dict[str, Any]], Awaitable[bool]]


class UpgradeError(Exception):
    """An upgrade step failed; ``reason`` is the code reported to central."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- files shared with the updater ---------------------------------------------------------


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """``request.json``: a verified, fully downloaded release for the updater to install."""

    cmd_id: str
    rollout_id: str
    version: str
    from_version: str
    staged: str  # the directory under incoming/
    at: datetime


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """``progress.json``: the updater's current step."""

    cmd_id: str
    state: Literal["installing", "restarting"]
    detail: str = ""


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """``result.json``: how an upgrade ended, as the ``up/reply`` says it."""

    cmd_id: str
    rollout_id: str
    version: str
    status: Literal["done", "failed", "rejected"]
    state: Literal["succeeded", "failed", "rolled_back", "rejected"]
    reason: str | None = None
    detail: str = ""
    running_version: str
    log: list[str] = []
    at: datetime


class Switching(msgspec.Struct, frozen=True, kw_only=True):
    """``switching.json``: ``current`` is being switched to ``request.version`` (from
    ``old``) and the outcome is not settled yet."""

    request: Request
    old: str | None


class UpdaterState(msgspec.Struct, kw_only=True):
    """``state.json``: what the updater remembers across upgrades."""

    committed: str | None = None
    previous: str | None = None
    #: version → why it was rolled back; such a version is never installed again.
    bad: dict[str, str] = {}


@dataclass(frozen=True)
class Layout:
    """Where an upgrade's files are: the install tree below ``root`` and the daemon's
    ``upgrade/`` directory."""

    root: Path
    data_dir: Path

    @property
    def opt(self) -> Path:
        return self.root / "opt/onecard"

    @property
    def releases(self) -> Path:
        return self.opt / "releases"

    @property
    def current(self) -> Path:
        """The symlink the service runs from: ``current -> releases/VERSION``."""
        return self.opt / "current"

    @property
    def work(self) -> Path:
        return self.data_dir / "upgrade"

    @property
    def incoming(self) -> Path:
        return self.work / "incoming"

    @property
    def request(self) -> Path:
        return self.work / "request.json"

    @property
    def progress(self) -> Path:
        return self.work / "progress.json"

    @property
    def result(self) -> Path:
        return self.work / "result.json"

    @property
    def state(self) -> Path:
        return self.work / "state.json"

    @property
    def switching(self) -> Path:
        return self.work / "switching.json"

    @property
    def switch_request(self) -> Path:
        return self.work / "switch.request"

    @property
    def switch_ready(self) -> Path:
        return self.work / "switch.ready"

    @classmethod
    def of(cls, config: EdgeConfig) -> Layout:
        """The layout ``config`` names."""
        return cls(config.upgrade.root, config.data_dir)


def write_json(path: Path, value: object) -> None:
    """Write ``value`` as JSON atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(msgspec.json.encode(value))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_json(path: Path, type_: type[_T]) -> _T | None:
    """The file decoded as ``type_``; None if it is missing or unreadable (and then removed:
    a half-written or foreign file must not wedge the upgrade machinery)."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=type_)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("upgrade.bad_file", path=str(path), error=str(exc))
        path.unlink(missing_ok=True)
        return None


def read_state(layout: Layout) -> UpdaterState:
    """The updater's state (empty when there is none yet)."""
    return read_json(layout.state, UpdaterState) or UpdaterState()


def trusted_keys(config: EdgeConfig) -> list[PublicKey]:
    """``[upgrade] trusted_keys`` as keys (validated when the config was loaded)."""
    return [parse_public_key(k) for k in config.upgrade.trusted_keys]


def host_abi() -> tuple[str, str]:
    """This interpreter's ABI tag and machine, as a release manifest names them."""
    from central.releases import host_compatibility  # noqa: PLC0415 - import cost

    host = host_compatibility()
    return host.python_abi, host.machine


# --- downloading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a release comes from: its manifest's URL, and how to authenticate."""

    manifest_url: str
    username: str = ""
    password: str = ""
    ca_file: Path | None = None

    def url(self, name: str) -> str:
        """The URL of a file next to the manifest."""
        return urljoin(self.manifest_url, name)


def fetch(source: Source, url: str, dest: Path, *, limit: int = MAX_DOWNLOAD_BYTES) -> None:
    """Download ``url`` into ``dest``, resuming ``dest.part`` with a ``Range`` request; the
    caller checks the hash. ``file://`` URLs (a release on a USB stick) are copied. Raises
    :class:`UpgradeError` (``download_failed``)."""
    scheme = urlsplit(url).scheme
    part = dest.with_name(dest.name + ".part")
    if scheme == "file":
        src = Path(urlsplit(url).path)
        try:
            shutil.copyfile(src, dest)
        except OSError as exc:
            raise UpgradeError("download_failed", f"{src}: {exc.strerror}") from None
        return
    if scheme not in ("http", "https"):
        raise UpgradeError("download_failed", f"{url}: only https, http and file URLs")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "onecard-edge"}
    if source.username:
        token = base64.b64encode(f"{source.username}:{source.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    if have:
        headers["Range"] = f"bytes={have}-"
    context = None
    if scheme == "https":
        context = ssl.create_default_context(cafile=str(source.ca_file) if source.ca_file else None)
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310
            mode = "ab" if response.status == 206 and have else "wb"
            size = have if mode == "ab" else 0
            with part.open(mode) as f:
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise UpgradeError("download_failed", f"{url}: larger than {limit} bytes")
                    f.write(chunk)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # we already have all of it
            part.replace(dest)
            return
        raise UpgradeError("download_failed", f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise UpgradeError("download_failed", f"{url}: {exc}") from None
    part.replace(dest)


def _sha256(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def stage_release(
    source: Source,
    staging: Path,
    *,
    manifest_sha256: str | None,
    version: str | None,
    config: EdgeConfig,
    installed_version: str,
    now: datetime,
) -> ReleaseManifest:
    """Download and check a release into ``staging`` (see the module doc). On a refusal the
    directory is removed and :class:`Refusal` raised; on a download failure
    (:class:`UpgradeError`) the ``.part`` files stay so the next attempt resumes."""
    staging.mkdir(parents=True, exist_ok=True)
    try:
        return _stage(
            source,
            staging,
            manifest_sha256=manifest_sha256,
            version=version,
            config=config,
            installed_version=installed_version,
            now=now,
        )
    except Refusal:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _stage(
    source: Source,
    staging: Path,
    *,
    manifest_sha256: str | None,
    version: str | None,
    config: EdgeConfig,
    installed_version: str,
    now: datetime,
) -> ReleaseManifest:
    from central.releases import verify_release  # noqa: PLC0415 - import cost

    python_abi, machine = host_abi()

    def verify() -> Refused | None:
        result = verify_release(
            staging,
            trusted_keys(config),
            now=now,
            installed_version=installed_version,
            python_abi=python_abi,
            machine=machine,
        )
        return result if isinstance(result, Refused) else None

    manifest_path = staging / MANIFEST_NAME
    fetch(source, source.manifest_url, manifest_path, limit=1 << 20)
    data = manifest_path.read_bytes()
    if manifest_sha256 is not None and hashlib.sha256(data).hexdigest() != manifest_sha256:
        _refuse("tampered_artifact", "the manifest served is not the one the rollout names")
    try:
        fetch(source, source.url(SIGNATURE_NAME), staging / SIGNATURE_NAME, limit=4096)
    except UpgradeError:
        (staging / SIGNATURE_NAME).unlink(missing_ok=True)  # unsigned: refused below
    # Signature, expiry, compatibility and upgrade path first (no artifact needed yet);
    # tampered_artifact here only means files are still missing.
    refused = verify()
    if refused is not None and refused.reason_code != "tampered_artifact":
        raise Refusal(refused)
    manifest = decode_manifest(data)  # authenticated above, so it decodes
    if version is not None and manifest.version != version:
        _refuse("malformed", f"the manifest is for {manifest.version}, the command says {version}")
    for entry in manifest.files:
        path = staging / entry.name
        if not (path.is_file() and _sha256(path) == (entry.sha256, entry.size)):
            fetch(source, source.url(entry.name), path, limit=entry.size + 1)
        checked = verify_file(entry.name, *_sha256(path), manifest)
        if isinstance(checked, Refused):
            raise Refusal(checked)
    # Everything again, and nothing extra in the directory (pip would pick up a stray wheel).
    refused = verify()
    if refused is not None:
        raise Refusal(refused)
    return manifest


def _refuse(code: RefusalCode, message: str) -> None:
    raise Refusal(Refused(reason_code=code, message=message))


class Refusal(Exception):  # noqa: N818 - it carries the release's Refused, not an error
    """The release was refused (``refused.reason_code``); nothing of it was kept."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(f"{refused.reason_code}: {refused.message}")
        self.refused = refused


# --- idle terminals ------------------------------------------------------------------------


def open_recharges(database: Path, *, within_s: int = 120) -> int:
    """Two-phase recharges prepared in the last ``within_s`` and not yet committed or aborted
    (a kiosk between taking the money and crediting it)."""
    since = int(time.time() * 1000) - within_s * 1000
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM recharges WHERE state = 'prepared' AND prepared_ms > ?",
                (since,),
            ).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


# --- the daemon's manager ------------------------------------------------------------------


@dataclass
class UpgradeManager:
    """Runs ``upgrade`` commands inside the daemon (see the module doc). :meth:`submit` is
    called from the MQTT receive loop and never blocks; :meth:`run` is a task of the
    service's TaskGroup."""

    config: EdgeConfig
    version: str
    reply: ReplyFn
    terminals_busy: Callable[[], bool] = lambda: False
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _queue: asyncio.Queue[Upgrade] = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    _active: str | None = None
    _progress_sent: tuple[str, str] | None = None

    @property
    def layout(self) -> Layout:
        return Layout.of(self.config)

    def submit(self, command: Upgrade) -> tuple[str, str, dict[str, Any]]:
        """(status, detail, data) of the immediate reply to ``command``."""
        if not self.config.upgrade.trusted_keys:
            return _rejected("not_configured", "no [upgrade] trusted_keys in edge.toml")
        if command.expires_at is not None and command.expires_at <= datetime.now(UTC):
            return _rejected("command_expired", f"expired at {command.expires_at.isoformat()}")
        finished = read_json(self.layout.result, Result)
        if finished is not None and finished.cmd_id == command.id:
            # The command again (central's retained desired version, on reconnect) before
            # the outcome was sent: the outcome is the answer, not a fresh decision.
            self.layout.result.unlink(missing_ok=True)
            return finished.status, finished.detail[:500], _result_data(finished)
        if command.version == self.version:
            return "done", f"runs {self.version}", {"version": self.version}
        bad = read_state(self.layout).bad.get(command.version)
        if bad is not None:
            return _rejected("known_bad", f"{command.version} was rolled back here: {bad}")
        if self._active is not None or self.layout.request.exists():
            if self._active == command.id:
                return "accepted", "already in progress", {"state": "queued"}
            return _rejected("busy", f"another upgrade ({self._active}) is in progress")
        try:
            self._queue.put_nowait(command)
        except asyncio.QueueFull:
            return _rejected("busy", "another upgrade is queued")
        self._active = command.id
        return "accepted", f"upgrade to {command.version} queued", {"state": "queued"}

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        """Until stopped: run queued commands; forward the updater's progress and result;
        answer the updater's switch request once terminals are idle."""
        self.layout.work.mkdir(parents=True, exist_ok=True)
        getter: asyncio.Task[Upgrade] | None = None
        try:
            while not self.stopping.is_set():
                await self._forward()
                await self._answer_switch()
                if getter is None:
                    getter = asyncio.create_task(self._queue.get())
                done, _ = await asyncio.wait({getter}, timeout=POLL_S)
                if done:
                    command = getter.result()
                    getter = None
                    await self._handle(command)
        finally:
            if getter is not None:
                getter.cancel()

    async def _handle(self, command: Upgrade) -> None:
        layout = self.layout
        staging = layout.incoming / command.version
        mqtt = self.config.mqtt
        password = mqtt.password_file.read_text().strip() if mqtt.password_file else ""
        source = Source(
            command.manifest_url,
            username=(mqtt.username or self.config.site) if password else "",
            password=password,
            ca_file=mqtt.ca_file,
        )
        await self.reply(command.id, "progress", "downloading", {"state": "downloading"})
        try:
            await asyncio.to_thread(
                stage_release,
                source,
                staging,
                manifest_sha256=command.manifest_sha256,
                version=command.version,
                config=self.config,
                installed_version=self.version,
                now=datetime.now(UTC),
            )
        except Refusal as exc:
            self._active = None
            log.warning("upgrade.rejected", version=command.version, reason=str(exc))
            await self.reply(
                command.id,
                "rejected",
                exc.refused.message[:500],
                {"reason": exc.refused.reason_code, "version": self.version},
            )
            return
        except UpgradeError as exc:
            self._active = None
            log.warning("upgrade.failed", version=command.version, error=str(exc))
            await self.reply(command.id, "failed", str(exc)[:500], {"reason": exc.reason})
            return
        request = Request(
            cmd_id=command.id,
            rollout_id=command.rollout_id,
            version=command.version,
            from_version=self.version,
            staged=str(staging),
            at=datetime.now(UTC),
        )
        write_json(layout.request, request)
        log.info("upgrade.handed_over", version=command.version, request=str(layout.request))
        await self.reply(command.id, "progress", "verified; installing", {"state": "installing"})

    async def _forward(self) -> None:
        layout = self.layout
        progress = read_json(layout.progress, Progress)
        if progress is not None and self._progress_sent != (progress.cmd_id, progress.state):
            sent = await self.reply(
                progress.cmd_id, "progress", progress.detail, {"state": progress.state}
            )
            if sent:
                self._progress_sent = (progress.cmd_id, progress.state)
        result = read_json(layout.result, Result)
        if result is None:
            return
        data = _result_data(result)
        if await self.reply(result.cmd_id, result.status, result.detail[:500], data):
            log.info("upgrade.reported", version=result.version, outcome=result.state)
            layout.result.unlink(missing_ok=True)
            if self._active == result.cmd_id:
                self._active = None

    async def _answer_switch(self) -> None:
        layout = self.layout
        if not layout.switch_request.exists() or layout.switch_ready.exists():
            return
        deadline = time.monotonic() + self.config.upgrade.idle_timeout_s
        waited = time.monotonic()
        while time.monotonic() < deadline and self._busy():
            if await wait_event(self.stopping, 0.05):
                return
        idle = not self._busy()
        write_json(layout.switch_ready, {"idle": idle, "waited_s": time.monotonic() - waited})
        log.info("upgrade.switch_ready", idle=idle)

    def _busy(self) -> bool:
        return self.terminals_busy() or open_recharges(self.config.database) > 0


def _rejected(reason: str, detail: str) -> tuple[str, str, dict[str, Any]]:
    return "rejected", detail, {"reason": reason}


def _result_data(result: Result) -> dict[str, Any]:
    data: dict[str, Any] = {"state": result.state, "version": result.running_version}
    if result.reason:
        data["reason"] = result.reason
    if result.log:
        data["log"] = result.log
    return data
