"""``onecard-edge updater``: the privileged half of a remote upgrade (:mod:`edge_agent.upgrade`).

Runs as root, once per request (``onecard-edge-updater.service``, a oneshot the path unit
starts when the daemon writes ``request.json``)::

    verify again      the staged release, against the pinned keys: the daemon is not trusted
    install           releases/VERSION/venv: python -m venv, then pip install --no-index
                      --find-links the release's own wheels (no network), then pip check
    self-test         releases/VERSION/venv/bin/onecard-edge selftest (imports, store, config)
    wait for idle     switch.request → the daemon answers switch.ready (bounded)
    switch            current -> releases/VERSION: a new symlink renamed over the old one
    restart           [upgrade] restart_command (systemctl restart onecard-edge.service)
    health gate       status.json of the new version: READY (store open, terminals listening,
                      broker connected) for healthy_for_s without a restart, within
                      health_timeout_s
    commit            state.json: committed, previous; older releases pruned

A failed self-test, a crash loop (more than ``max_restarts`` restarts), a failed restart or
the health timeout rolls back: ``current`` back to the previous release, restart it, and the
version is remembered in ``state.json`` as bad, never to be installed again. The outcome, with
the failed version's last log lines, goes to ``result.json``, which the daemon sends to HQ.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from central.core.release import MANIFEST_NAME, Refused, decode_manifest
from edge_agent.config import EdgeConfig
from edge_agent.upgrade import (
    LOG_TAIL_LINES,
    Layout,
    Progress,
    Refusal,
    Request,
    Result,
    Source,
    Switching,
    UpdaterState,
    host_abi,
    read_json,
    read_state,
    stage_release,
    trusted_keys,
    write_json,
)

COMPLETE = ".complete"
STATUS_FRESH_S = 10.0
SELFTEST_TIMEOUT_S = 120
BUILD_TIMEOUT_S = 600
#: The oldest a fresh install counts as, for the upgrade-path check.
NOTHING_INSTALLED = "0"

Echo = Callable[[str], None]


class UpdaterError(Exception):
    """A step failed; ``reason`` is the code in the result, ``log`` its output."""

    def __init__(self, reason: str, message: str, log: list[str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.log = log or []


# --- the install tree ----------------------------------------------------------------------


def current_version(layout: Layout) -> str | None:
    """The version ``current`` points at, or None."""
    try:
        return layout.current.readlink().name
    except OSError:
        return None


def adopt_legacy_venv(layout: Layout, version: str) -> bool:
    """An install from before releases (``opt/onecard/venv``) becomes release ``version``,
    so there is something to roll back to. True if it did."""
    legacy = layout.opt / "venv"
    if current_version(layout) is not None or legacy.is_symlink() or not legacy.is_dir():
        return False
    release = layout.releases / version
    release.mkdir(parents=True, exist_ok=True)
    if not (release / "venv").exists():
        (release / "venv").symlink_to(Path("../../venv"))
    (release / COMPLETE).write_text(version + "\n")
    switch_current(layout, version)
    return True


def legacy_version(layout: Layout) -> str | None:
    """The onecard version in an install from before releases (``opt/onecard/venv``)."""
    found = sorted((layout.opt / "venv").glob("lib/python3*/site-packages/onecard-*.dist-info"))
    return found[-1].name.removesuffix(".dist-info").split("-")[1] if found else None


def switch_current(layout: Layout, version: str) -> None:
    """Point ``current`` at ``releases/VERSION`` atomically: a process starting now sees the
    old release or the new one, never neither."""
    layout.opt.mkdir(parents=True, exist_ok=True)
    tmp = layout.opt / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("releases") / version)
    tmp.replace(layout.current)
    fd = os.open(layout.opt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run(argv: list[str], *, timeout: float, reason: str) -> list[str]:
    """Run ``argv``; its output's lines, or :class:`UpdaterError` (``reason``) with them."""
    try:
        proc = subprocess.run(  # noqa: S603 - our own argv
            argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise UpdaterError(reason, f"{argv[0]} took longer than {timeout:.0f} s") from None
    except OSError as exc:
        raise UpdaterError(reason, f"{argv[0]}: {exc.strerror}") from None
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode != 0:
        raise UpdaterError(
            reason, f"{Path(argv[0]).name} {' '.join(argv[1:3])} … exited {proc.returncode}", lines
        )
    return lines


def install_release(layout: Layout, staged: Path, version: str, *, python: str) -> Path:
    """``releases/VERSION`` with its own virtualenv, built offline from the release's wheels.
    Built in place (a venv's scripts name their interpreter by absolute path, so it cannot
    be moved); ``.complete`` is written last, and an incomplete one is rebuilt."""
    release = layout.releases / version
    if (release / COMPLETE).is_file():
        return release
    if release.exists() or release.is_symlink():
        shutil.rmtree(release)
    wheels = release / "wheels"
    wheels.mkdir(parents=True)
    manifest = decode_manifest((staged / MANIFEST_NAME).read_bytes())
    for name in (MANIFEST_NAME, "manifest.sig", *(f.name for f in manifest.files)):
        shutil.copy2(staged / name, wheels / name)
    venv = release / "venv"
    _run([python, "-m", "venv", str(venv)], timeout=BUILD_TIMEOUT_S, reason="install_failed")
    pip = [str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    names = [str(wheels / f.name) for f in manifest.files if f.name.endswith(".whl")]
    _run(
        [*pip, "install", "--no-index", "--find-links", str(wheels), "--no-deps", *names],
        timeout=BUILD_TIMEOUT_S,
        reason="install_failed",
    )
    _run([*pip, "check"], timeout=BUILD_TIMEOUT_S, reason="install_failed")
    (release / COMPLETE).write_text(version + "\n")
    return release


def prune(layout: Layout, keep: set[str]) -> list[str]:
    """Remove releases other than ``keep``; the names removed."""
    removed = []
    if layout.releases.is_dir():
        for path in sorted(layout.releases.iterdir()):
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed


# --- the self-test (runs inside the NEW release) -------------------------------------------


def selftest(config: EdgeConfig) -> list[str]:
    """What is wrong with this installation for ``config``; empty when it may run. Imports
    every module of the daemon, opens the store read-only, checks the configuration."""
    import importlib  # noqa: PLC0415
    import pkgutil  # noqa: PLC0415
    import sqlite3  # noqa: PLC0415

    import edge_agent  # noqa: PLC0415
    import protocol  # noqa: PLC0415

    problems = []
    for package in (protocol, edge_agent):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                problems.append(f"import {module.name}: {type(exc).__name__}: {exc}")
    if config.database.exists():
        try:
            # Read-only through the daemon's WAL when it has one open. Without its -shm file,
            # immutable: a read-only open as root would create root-owned -shm/-wal files the
            # daemon (user onecard) could not open; then only the main file is looked at.
            db = config.database
            live = all(Path(f"{db}{suffix}").exists() for suffix in ("-wal", "-shm"))
            wal_pending = not live and Path(f"{db}-wal").exists()
            uri = f"file:{db}?mode=ro" + ("" if live else "&immutable=1")
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                if not wal_pending:
                    conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
        except sqlite3.Error as exc:
            problems.append(f"store {config.database}: {exc}")
    if config.mqtt.password_file is not None and not config.mqtt.password_file.is_file():
        problems.append(f"mqtt.password_file {config.mqtt.password_file}: no such file")
    return problems


# --- health --------------------------------------------------------------------------------


def _status(config: EdgeConfig) -> dict[str, Any] | None:
    try:
        value = msgspec.json.decode((config.data_dir / "status.json").read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    return value if isinstance(value, dict) else None


def is_ready(status: dict[str, Any], version: str, *, since: float) -> bool:
    """Whether a status snapshot says ``version`` is READY: written after ``since`` (wall
    clock) and recently, store open and terminals listening (``ready``), and the broker
    connected when the site has one."""
    written = float(status.get("written_at", 0))
    return (
        status.get("version") == version
        and written >= since
        and time.time() - written < STATUS_FRESH_S
        and status.get("ready") is True
        and status.get("broker") is not False
    )


@dataclass
class Gate:
    """The outcome of a health gate."""

    healthy: bool
    reason: str = ""
    detail: str = ""


def health_gate(
    config: EdgeConfig, version: str, *, since: float, poll_s: float = 0.5, echo: Echo
) -> Gate:
    """Wait until ``version`` has been READY for ``healthy_for_s`` without restarting (see
    the module doc), at most ``health_timeout_s``."""
    settings = config.upgrade
    deadline = time.monotonic() + settings.health_timeout_s
    pids: list[int] = []
    ready_since: float | None = None
    while time.monotonic() < deadline:
        status = _status(config) or {}
        ok = is_ready(status, version, since=since)
        ours = status.get("version") == version and float(status.get("written_at", 0)) >= since
        pid = int(status.get("pid") or 0) if ours else 0
        if pid and pid not in pids:
            pids.append(pid)
            ready_since = None
            if len(pids) > settings.max_restarts + 1:
                return Gate(False, "crash_loop", f"{version} restarted {len(pids) - 1} times")
        if not ok:
            ready_since = None
        elif ready_since is None:
            ready_since = time.monotonic()
            echo(f"  {version} is READY (pid {pid}); watching it for {settings.healthy_for_s} s")
        elif time.monotonic() - ready_since >= settings.healthy_for_s:
            return Gate(True)
        time.sleep(poll_s)
    seen = "never became READY" if ready_since is None else "did not stay READY"
    return Gate(False, "health_timeout", f"{version} {seen} within {settings.health_timeout_s} s")


def log_tail(config: EdgeConfig, *, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The daemon's last log lines: the ``[log] file``, else the journal."""
    from edge_agent.logs import journal_available  # noqa: PLC0415

    out: list[str] = []
    if config.log.file is not None and config.log.file.is_file():
        with config.log.file.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            out = f.read().decode("utf-8", "replace").splitlines()[-lines:]
    elif journal_available():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(  # noqa: S603 - fixed program, our own arguments
                ["journalctl", "--unit", "onecard-edge", "--output", "cat", "--no-pager",  # noqa: S607
                 "--lines", str(lines)],
                capture_output=True, text=True, errors="replace", timeout=10, check=False,
            )  # fmt: skip
            out = proc.stdout.splitlines()[-lines:]
    return [line[:300] for line in out]


# --- the updater ---------------------------------------------------------------------------


@dataclass
class Updater:
    """One run of the updater for one edge configuration."""

    config: EdgeConfig
    config_path: Path
    restart_command: list[str]
    echo: Echo = print
    python: str = sys.executable

    @property
    def layout(self) -> Layout:
        return Layout.of(self.config)

    def run_request(self) -> Result | None:
        """Carry out ``request.json`` if there is one (removing it first, so the path unit
        does not start us again for it); the result, also written to ``result.json``."""
        layout = self.layout
        recovered = self.recover()
        request = read_json(layout.request, Request)
        if request is None:
            return recovered
        layout.request.unlink(missing_ok=True)
        try:
            result = self.upgrade(request)
        finally:
            for path in (layout.progress, layout.switch_request, layout.switch_ready):
                path.unlink(missing_ok=True)
            shutil.rmtree(request.staged, ignore_errors=True)
        write_json(layout.result, result)
        return result

    def install_dir(self, directory: Path, *, cmd_id: str = "local") -> Result:
        """A release from a local directory (a USB stick): staged and checked like a
        download, then installed like a request."""
        layout = self.layout
        installed = current_version(layout) or legacy_version(layout) or NOTHING_INSTALLED
        staging = layout.incoming / f"local-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            manifest = stage_release(
                Source((directory.absolute() / MANIFEST_NAME).as_uri()),
                staging,
                manifest_sha256=None,
                version=None,
                config=self.config,
                installed_version=installed,
                now=datetime.now(UTC),
            )
        except Refusal as exc:
            return self._result(
                Request(cmd_id=cmd_id, rollout_id="", version="?", from_version=installed,
                        staged=str(staging), at=datetime.now(UTC)),
                "rejected", "rejected", exc.refused.reason_code, exc.refused.message, installed,
            )  # fmt: skip
        request = Request(
            cmd_id=cmd_id,
            rollout_id="",
            version=manifest.version,
            from_version=installed,
            staged=str(staging),
            at=datetime.now(UTC),
        )
        try:
            return self.upgrade(request)
        finally:
            for path in (layout.progress, layout.switch_request, layout.switch_ready):
                path.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)

    def upgrade(self, request: Request) -> Result:
        """Verify, install, self-test, switch, restart, health-gate; commit or roll back."""
        layout = self.layout
        version = request.version
        state = read_state(layout)
        if request.from_version != NOTHING_INSTALLED:
            adopt_legacy_venv(layout, request.from_version)
        old = current_version(layout)
        installed = old or NOTHING_INSTALLED
        if version in state.bad:
            why = f"{version} was rolled back here before: {state.bad[version]}"
            return self._result(request, "rejected", "rejected", "known_bad", why, installed)
        refused = self._verify(Path(request.staged), installed)
        if refused is not None:
            self.echo(f"REJECTED ({refused.reason_code}): {refused.message}")
            return self._result(
                request, "rejected", "rejected", refused.reason_code, refused.message, installed
            )
        self._progress(request, "installing", f"installing {version}")
        self.echo(f"installing {version} into {layout.releases / version}")
        try:
            release = install_release(layout, Path(request.staged), version, python=self.python)
        except (UpdaterError, OSError) as exc:
            shutil.rmtree(layout.releases / version, ignore_errors=True)
            reason = exc.reason if isinstance(exc, UpdaterError) else "install_failed"
            output = exc.log[-LOG_TAIL_LINES:] if isinstance(exc, UpdaterError) else []
            return self._result(request, "failed", "failed", reason, str(exc), installed, output)
        self.echo(f"self-test of {version}")
        try:
            _run(
                [str(release / "venv/bin/onecard-edge"), "selftest", "--config",
                 str(self.config_path)],
                timeout=SELFTEST_TIMEOUT_S, reason="selftest_failed",
            )  # fmt: skip
        except UpdaterError as exc:
            return self._bad(request, state, installed, exc.reason, str(exc), exc.log)
        self._progress(request, "restarting", f"switching to {version}")
        self._wait_idle()
        since = time.time()
        # Written before the switch, removed once committed or rolled back: an updater that
        # dies in between (a power cut) finishes the job when it next starts (recover).
        write_json(layout.switching, Switching(request=request, old=old))
        switch_current(layout, version)
        self.echo(f"current -> releases/{version}; restarting: {' '.join(self.restart_command)}")
        gate = self._restart_and_gate(version, since)
        result = self._settle(request, state, old, gate)
        layout.switching.unlink(missing_ok=True)
        return result

    def recover(self) -> Result | None:
        """Finish an upgrade the updater was interrupted in (``switching.json`` left over):
        the new version is health-gated as it runs now, then committed or rolled back."""
        layout = self.layout
        pending = read_json(layout.switching, Switching)
        if pending is None:
            return None
        request, old = pending.request, pending.old
        running = current_version(layout)
        self.echo(f"the upgrade to {request.version} was interrupted; current is {running}")
        if running == request.version:
            gate = health_gate(self.config, request.version, since=time.time(), echo=self.echo)
            result = self._settle(request, read_state(layout), old, gate)
        else:
            detail = f"interrupted before {request.version} ran; {running} still runs"
            result = self._result(
                request, "failed", "failed", "interrupted", detail, running or "?"
            )
        layout.switching.unlink(missing_ok=True)
        write_json(layout.result, result)
        return result

    def _settle(self, request: Request, state: UpdaterState, old: str | None, gate: Gate) -> Result:
        """Commit ``request.version`` after a passed gate, else roll back to ``old``."""
        layout = self.layout
        version = request.version
        if gate.healthy:
            state.previous, state.committed = old, version
            write_json(layout.state, state)
            removed = prune(layout, {version, *([old] if old else [])})
            self.echo(f"{version} is healthy: committed (pruned: {', '.join(removed) or '-'})")
            return self._result(request, "done", "succeeded", None, f"runs {version}", version)
        tail = log_tail(self.config)
        self.echo(f"{version} failed its health gate ({gate.reason}): {gate.detail}")
        if old is None:
            return self._result(
                request, "failed", "failed", gate.reason, gate.detail, version, tail
            )
        switch_current(layout, old)
        self.echo(f"rolled back: current -> releases/{old}; restarting")
        back = self._restart_and_gate(old, time.time())
        detail = gate.detail + ("" if back.healthy else f"; {old} after rollback: {back.detail}")
        return self._bad(request, state, old, gate.reason, detail, tail)

    # -- steps ----------------------------------------------------------------------------

    def _verify(self, staged: Path, installed: str) -> Refused | None:
        from central.releases import verify_release  # noqa: PLC0415 - import cost

        python_abi, machine = host_abi()
        result = verify_release(
            staged,
            trusted_keys(self.config),
            now=datetime.now(UTC),
            installed_version=installed,
            python_abi=python_abi,
            machine=machine,
        )
        return result if isinstance(result, Refused) else None

    def _progress(self, request: Request, state: str, detail: str) -> None:
        progress = Progress(cmd_id=request.cmd_id, state=state, detail=detail)  # type: ignore[arg-type]
        write_json(self.layout.progress, progress)

    def _wait_idle(self) -> None:
        """Ask the daemon to report idle terminals; go ahead anyway after the bound (the
        daemon may be dead, which is a reason to upgrade, not to wait)."""
        layout = self.layout
        layout.switch_ready.unlink(missing_ok=True)
        write_json(layout.switch_request, {"at": time.time()})
        deadline = time.monotonic() + self.config.upgrade.idle_timeout_s + 5
        while time.monotonic() < deadline and not layout.switch_ready.exists():
            time.sleep(0.1)
        answer = read_json(layout.switch_ready, dict) or {}
        self.echo(f"terminals idle: {answer.get('idle', 'no answer from the daemon')}")

    def _restart_and_gate(self, version: str, since: float) -> Gate:
        try:
            _run(self.restart_command, timeout=self.config.upgrade.health_timeout_s,
                 reason="restart_failed")  # fmt: skip
        except UpdaterError as exc:
            return Gate(False, exc.reason, f"{exc}: {' | '.join(exc.log[-3:])}")
        return health_gate(self.config, version, since=since, echo=self.echo)

    def _bad(  # noqa: PLR0917 - private; the fields of a Result, in its order
        self,
        request: Request,
        state: UpdaterState,
        running: str,
        reason: str,
        detail: str,
        log: list[str],
    ) -> Result:
        state.bad[request.version] = reason
        write_json(self.layout.state, state)
        shutil.rmtree(self.layout.releases / request.version, ignore_errors=True)
        return self._result(request, "failed", "rolled_back", reason, detail, running, log)

    def _result(  # noqa: PLR0917 - private; the fields of a Result, in its order
        self,
        request: Request,
        status: str,
        state: str,
        reason: str | None,
        detail: str,
        running: str,
        log: list[str] | None = None,
    ) -> Result:
        return Result(
            cmd_id=request.cmd_id,
            rollout_id=request.rollout_id,
            version=request.version,
            status=status,  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
            reason=reason,
            detail=detail[:500],
            running_version=running,
            log=(log or [])[-LOG_TAIL_LINES:],
            at=datetime.now(UTC),
        )
