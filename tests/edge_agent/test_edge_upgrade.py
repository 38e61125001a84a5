"""Upgrading an edge from a signed release directory, with real wheels, venvs and processes.

Real wheels of this project are built once per session with patched versions (1.0.0, 1.1.0,
and a 1.2.0 whose daemon dies before READY), signed with a fresh key. ``onecard-edge
updater install`` installs them into a temporary root as it would on a branch PC: its own
virtualenv per release (pip, offline, from the release's wheels), the new version's
self-test, the ``current`` switch, a restart and the health gate.

systemd's part is played by a small supervisor of ours (a real process, like systemd's
``Restart=always``): it runs ``ROOT/opt/onecard/current/venv/bin/onecard-edge run``, starts it
again whenever it exits, and restarts it on SIGUSR1 — the updater's restart command here is
``kill -USR1 <supervisor>``, where a branch PC has ``systemctl restart onecard-edge``.

Dependency wheels would need the network, so each test release carries, besides onecard's
wheel, a tiny wheel whose ``.pth`` line puts this checkout's ``.venv`` site-packages on the
new venv's path (a plain path entry: the editable install's own ``.pth`` there is not run,
so the release's onecard is the one imported).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from edge_fixtures import SITE, free_port

from central.core.release import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    FileEntry,
    ReleaseManifest,
    canonical_bytes,
    public_key_of,
    sign_manifest,
)
from central.releases import file_digest, host_compatibility
from edge_agent.upgrade import Layout, Request, Result, Switching, UpdaterState, write_json

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])

SUPERVISOR = r"""
import os, signal, subprocess, sys, time
exe, config, log = sys.argv[1], sys.argv[2], sys.argv[3]
# Optionally systemd's path unit too: run the updater while REQUEST exists.
request, updater_argv = (sys.argv[4], sys.argv[5:]) if len(sys.argv) > 4 else (None, [])
updater = None
restart = stop = False
def on_usr1(*_):
    global restart
    restart = True
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, on_term)
child = None
while not stop:
    if request and os.path.exists(request) and (updater is None or updater.poll() is not None):
        with open(log + ".updater", "ab") as out:
            updater = subprocess.Popen(
                [*updater_argv, "--restart-command", f"kill -USR1 {os.getpid()}"],
                stdout=out, stderr=subprocess.STDOUT)
    if child is None:
        if os.path.exists(exe):
            with open(log, "ab") as out:
                child = subprocess.Popen([exe, "run", "--config", config], stdout=out,
                                         stderr=subprocess.STDOUT)
        else:
            time.sleep(0.2)
            continue
    if restart or child.poll() is not None:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        elif not restart:
            time.sleep(0.5)  # RestartSec=
        restart = False
        child = None
        continue
    time.sleep(0.05)
for proc in (updater, child):
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(15)
"""


# --- releases ------------------------------------------------------------------------------


def _source(work: Path, version: str, *, broken: bool = False) -> Path:
    """A copy of this checkout with ``version`` (and, ``broken``, a daemon dying before
    READY)."""
    src = work / f"src-{version}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "tests", "bench", "build", "dist", "*.egg-info", "__pycache__", ".*"
        ),
    )
    pyproject = src / "pyproject.toml"
    text, n = re.subn(r'(?m)^version = "[^"]*"', f'version = "{version}"', pyproject.read_text())
    assert n == 1
    pyproject.write_text(text)
    if broken:
        service = src / "edge_agent/service.py"
        text = service.read_text()
        assert text.count("self.ready.set()") == 1
        service.write_text(
            text.replace(
                "self.ready.set()",
                'log.error("deliberately broken release"); raise SystemExit(3)',
            )
        )
    return src


def _build_wheels(work: Path, wanted: dict[str, bool]) -> dict[str, Path]:
    """Build the wheels of ``wanted`` (version → broken) at the same time."""
    out = work / "wheels"
    builds = []
    for version, broken in wanted.items():
        src = _source(work, version, broken=broken)
        builds.append((src, subprocess.Popen(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
             "--wheel-dir", str(out), str(src)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )))  # fmt: skip
    for src, build in builds:
        output, _ = build.communicate(timeout=180)
        assert build.returncode == 0, output.decode(errors="replace")
        shutil.rmtree(src)
    return {v: out / f"onecard-{v}-py3-none-any.whl" for v in wanted}


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _deps_wheel(out: Path) -> Path:
    """The stand-in for the dependency wheels (see the module doc)."""
    info = "onecard_testdeps-1.0.dist-info"
    files = {
        "onecard_testdeps.pth": f"{SITE_PACKAGES}\n".encode(),
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: onecard-testdeps\nVersion: 1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out / "onecard_testdeps-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@dataclass(frozen=True)
class Wheels:
    key: object  # the release signing key
    other_key: object
    wheels: dict[str, Path]
    deps: Path


def make_release(
    wheels: Wheels,
    out: Path,
    version: str,
    *,
    wheel_version: str | None = None,
    key: object | None = None,
    expires_in: timedelta = timedelta(days=30),
) -> Path:
    """A signed release directory: onecard's wheel and the deps stand-in."""
    out.mkdir(parents=True)
    for path in (wheels.wheels[wheel_version or version], wheels.deps):
        shutil.copy2(path, out / path.name)
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)
    entries = []
    for path in sorted(out.iterdir()):
        sha, size = file_digest(path)
        entries.append(FileEntry(name=path.name, sha256=sha, size=size))
    manifest = ReleaseManifest(
        version=version,
        min_from_version="0",
        compatibility=host_compatibility(),
        created_at=created,
        expires_at=datetime.now(UTC).replace(microsecond=0) + expires_in,
        files=tuple(entries),
    )
    data = canonical_bytes(manifest)
    (out / MANIFEST_NAME).write_bytes(data)
    (out / SIGNATURE_NAME).write_bytes(sign_manifest(data, key or wheels.key))  # type: ignore[arg-type]
    return out


def build_wheels(base: Path) -> Wheels:
    """1.0.0, 1.1.0 and the broken 1.2.0, built once per session below ``base`` (pytest's
    session temp dir, shared by the upgrade test files), and fresh signing keys."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    work = base / "upgrade-wheels"
    wanted = {"1.0.0": False, "1.1.0": False, "1.2.0": True}
    built = {v: work / "wheels" / f"onecard-{v}-py3-none-any.whl" for v in wanted}
    if not all(path.is_file() for path in built.values()):
        work.mkdir(exist_ok=True)
        built = _build_wheels(work, wanted)
    return Wheels(
        Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), built, _deps_wheel(work)
    )


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    return build_wheels(tmp_path_factory.getbasetemp())


# --- a site under our supervisor ----------------------------------------------------------


@dataclass
class Site:
    root: Path
    data_dir: Path
    config: Path
    supervisor: subprocess.Popen[bytes]

    @property
    def layout(self) -> Layout:
        return Layout(self.root, self.data_dir)

    def updater(self, *args: str) -> subprocess.CompletedProcess[str]:
        restart = f"kill -USR1 {self.supervisor.pid}"
        return subprocess.run(
            [BIN / "onecard-edge", "updater", *args, "--config", self.config,
             "--restart-command", restart],
            capture_output=True, text=True, timeout=110, check=False,
        )  # fmt: skip

    def status(self) -> dict[str, object]:
        return msgspec.json.decode((self.data_dir / "status.json").read_bytes())

    def current(self) -> str:
        return self.layout.current.readlink().name

    def state(self) -> UpdaterState:
        return msgspec.json.decode(self.layout.state.read_bytes(), type=UpdaterState)

    def install_tree(self) -> dict[str, tuple[int, str]]:
        """Every file and link below opt/onecard and upgrade/: size and content hash."""
        out: dict[str, tuple[int, str]] = {}
        for base in (self.layout.opt, self.layout.work):
            for path in sorted(base.rglob("*")):
                if path.is_symlink():
                    out[str(path)] = (0, str(path.readlink()))
                elif path.is_file() and "__pycache__" not in path.parts:
                    out[str(path)] = (path.stat().st_size, file_digest(path)[0])
        return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, wheels: Wheels):
    """A site whose edge runs release 1.0.0, installed by the updater into an empty root."""
    base = tmp_path_factory.mktemp("upgrade-site")
    root, data_dir = base / "root", base / "data"
    data_dir.mkdir()
    config = base / "edge.toml"
    pub = public_key_of(wheels.key).raw_hex  # type: ignore[arg-type]
    config.write_text(
        f'site = "{SITE}"\ndata_dir = "{data_dir}"\n\n'
        f'[terminals]\nlisten = "127.0.0.1:{free_port()}"\n\n'
        f'[log]\nformat = "json"\nfile = "{data_dir / "edge.log"}"\n\n'
        f'[upgrade]\ntrusted_keys = ["{pub}"]\nroot = "{root}"\nhealthy_for_s = 3\n'
        "health_timeout_s = 12\nmax_restarts = 1\nidle_timeout_s = 2\n"
    )
    script = base / "supervisor.py"
    script.write_text(SUPERVISOR)
    exe = root / "opt/onecard/current/venv/bin/onecard-edge"
    supervisor = subprocess.Popen(
        [sys.executable, script, exe, config, base / "stdout.log"],
        start_new_session=True,
    )
    site = Site(root, data_dir, config, supervisor)
    try:
        first = site.updater("install", str(make_release(wheels, base / "r-1.0.0", "1.0.0")))
        assert first.returncode == 0, first.stdout + first.stderr
        yield site
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()


# --- refusals ------------------------------------------------------------------------------


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_first_install_runs_the_release_from_its_own_venv(site: Site):
    assert site.current() == "1.0.0"
    assert site.status()["version"] == "1.0.0"
    assert site.status()["ready"] is True
    venv = site.root / "opt/onecard/releases/1.0.0/venv"
    assert (venv / "pyvenv.cfg").is_file()
    assert list((venv / "lib").glob("python3*/site-packages/onecard-1.0.0.dist-info"))
    assert site.state().committed == "1.0.0"


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("tampered", "tampered_artifact"),
        ("wrong_key", "bad_signature"),
        ("expired", "expired"),
        ("downgrade", "downgrade"),
    ],
)
def test_a_bad_release_is_rejected_with_its_reason_and_changes_nothing(
    site: Site, wheels: Wheels, tmp_path: Path, case: str, code: str
):
    out = tmp_path / "release"
    if case == "tampered":
        make_release(wheels, out, "1.1.0")
        flip_byte(out / wheels.wheels["1.1.0"].name)
    elif case == "wrong_key":
        make_release(wheels, out, "1.1.0", key=wheels.other_key)
    elif case == "expired":
        make_release(wheels, out, "1.1.0", expires_in=timedelta(days=-1))
    else:
        make_release(wheels, out, "0.9.0", wheel_version="1.0.0")
    before = site.install_tree()
    pid = site.status()["pid"]

    result = site.updater("install", str(out))

    assert result.returncode == 1, result.stdout
    assert f"REJECTED ({code})" in result.stderr
    assert site.install_tree() == before
    assert site.current() == "1.0.0"
    assert site.status()["pid"] == pid  # not even restarted


def test_an_upgrade_switches_and_a_broken_one_is_rolled_back_and_never_retried(
    site: Site, wheels: Wheels, tmp_path: Path
):
    good = site.updater("install", str(make_release(wheels, tmp_path / "r-1.1.0", "1.1.0")))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "OK runs 1.1.0" in good.stdout
    assert site.current() == "1.1.0"
    assert site.status()["version"] == "1.1.0"
    assert site.state().committed == "1.1.0"
    assert site.state().previous == "1.0.0"

    # A power cut between the switch and the commit: the updater finishes the job next time.
    interrupted = Request(
        cmd_id="r-1:SZ-FUTIAN:1", rollout_id="r-1", version="1.1.0", from_version="1.0.0",
        staged=str(tmp_path / "gone"), at=datetime.now(UTC),
    )  # fmt: skip
    write_json(site.layout.switching, Switching(request=interrupted, old="1.0.0"))
    recovered = site.updater("run")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert "the upgrade to 1.1.0 was interrupted" in recovered.stdout
    assert not site.layout.switching.exists()
    outcome = msgspec.json.decode(site.layout.result.read_bytes(), type=Result)
    assert (outcome.cmd_id, outcome.state) == ("r-1:SZ-FUTIAN:1", "succeeded")
    site.layout.result.unlink()

    broken_dir = make_release(wheels, tmp_path / "r-1.2.0", "1.2.0")
    broken = site.updater("install", str(broken_dir))
    assert broken.returncode == 1, broken.stdout
    assert re.search(r"ROLLED_BACK \((crash_loop|health_timeout)\).*running 1\.1\.0", broken.stderr)
    assert "deliberately broken release" in broken.stderr  # the failed version's last lines
    assert site.current() == "1.1.0"
    assert not (site.root / "opt/onecard/releases/1.2.0").exists()
    assert set(site.state().bad) == {"1.2.0"}
    deadline = time.monotonic() + 15
    while site.status().get("version") != "1.1.0" or site.status().get("ready") is not True:
        assert time.monotonic() < deadline, site.status()
        time.sleep(0.2)

    again = site.updater("install", str(broken_dir))
    assert again.returncode == 1
    assert "REJECTED (known_bad)" in again.stderr
    assert site.current() == "1.1.0"


# --- the units -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_updater_units_pass_systemd_analyze_verify_without_a_word(tmp_path: Path):
    from test_edge_units import verify_root

    units = REPO / "systemd"
    root = verify_root(tmp_path, units / "onecard-edge-updater.service")
    shutil.copy(units / "onecard-edge-updater.path", root / "etc/systemd/system")
    for name in ("onecard-edge-updater.service", "onecard-edge-updater.path"):
        result = subprocess.run(
            ["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{name}"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""


def test_the_path_unit_watches_the_file_the_daemon_writes_and_the_updater_reads():
    from edge_agent.config import EdgeConfig

    units = REPO / "systemd"
    request = Layout.of(EdgeConfig(site=SITE)).request  # /var/lib/onecard/upgrade/request.json
    assert f"PathExists={request}" in (units / "onecard-edge-updater.path").read_text()
    service = (units / "onecard-edge-updater.service").read_text()
    assert f"ConditionPathExists=|{request}" in service
    switching = Layout.of(EdgeConfig(site=SITE)).switching  # an interrupted upgrade, at boot
    assert f"ConditionPathExists=|{switching}" in service
    assert "Type=oneshot" in service
    assert "ExecStart=/opt/onecard/current/venv/bin/onecard-edge updater run" in service


def test_adopt_makes_a_pre_release_install_the_current_release(tmp_path: Path):
    root, data = tmp_path / "root", tmp_path / "data"
    dist = root / "opt/onecard/venv/lib/python3.11/site-packages/onecard-0.1.0.dist-info"
    dist.mkdir(parents=True)
    data.mkdir()
    config = tmp_path / "edge.toml"
    config.write_text(f'site = "{SITE}"\ndata_dir = "{data}"\n[upgrade]\nroot = "{root}"\n')

    adopt = [BIN / "onecard-edge", "updater", "adopt", "--config", config]
    first = subprocess.run(adopt, capture_output=True, text=True, check=True, timeout=30)

    assert "-> releases/0.1.0" in first.stdout
    current = root / "opt/onecard/current"
    assert current.readlink() == Path("releases/0.1.0")
    assert (current / "venv/lib/python3.11/site-packages/onecard-0.1.0.dist-info").is_dir()
    again = subprocess.run(adopt, capture_output=True, text=True, check=True, timeout=30)
    assert "already there" in again.stdout


# --- downloading ---------------------------------------------------------------------------


SECRET = "the-site-mqtt-secret"  # noqa: S105 - a test site's password


@pytest.fixture
def release_server(tmp_path: Path, wheels: Wheels):
    """Central's release endpoint (real HTTP, uvicorn in a thread) with 1.1.0 published."""
    import threading

    import uvicorn

    from central.artifacts import ReleaseStore, SitePasswords, artifact_app
    from central.provision import hash_password

    store = ReleaseStore(tmp_path / "store")
    key = public_key_of(wheels.key)  # type: ignore[arg-type]
    store.publish(make_release(wheels, tmp_path / "r", "1.1.0"), [key], now=datetime.now(UTC))
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{SITE}:{hash_password(SECRET)}\n")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            artifact_app(store, SitePasswords(passwd)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/releases/1.1.0/manifest.json", store
    server.should_exit = True
    thread.join(10)


def test_a_broken_download_resumes_where_it_stopped_and_is_hash_checked(
    tmp_path: Path, wheels: Wheels, release_server
):
    from edge_agent.config import EdgeConfig, UpgradeConfig
    from edge_agent.upgrade import Source, UpgradeError, stage_release

    url, store = release_server
    config = EdgeConfig(
        site=SITE,
        upgrade=UpgradeConfig(trusted_keys=[public_key_of(wheels.key).raw_hex]),  # type: ignore[arg-type]
    )
    name = wheels.wheels["1.1.0"].name
    whole = (store.root / "1.1.0" / name).read_bytes()
    staging = tmp_path / "incoming"
    staging.mkdir()
    (staging / f"{name}.part").write_bytes(whole[:5000])  # what a cut link left behind

    def stage(source: Source) -> object:
        return stage_release(
            source,
            staging,
            manifest_sha256=store.manifest_sha256("1.1.0"),
            version="1.1.0",
            config=config,
            installed_version="1.0.0",
            now=datetime.now(UTC),
        )

    with pytest.raises(UpgradeError, match="HTTP 401") as refused:
        stage(Source(url, username=SITE, password=SECRET + "x"))
    assert refused.value.reason == "download_failed"
    assert (staging / f"{name}.part").stat().st_size == 5000  # kept for the next attempt

    manifest = stage(Source(url, username=SITE, password=SECRET))
    assert manifest.version == "1.1.0"  # type: ignore[attr-defined]
    assert (staging / name).read_bytes() == whole
    assert not (staging / f"{name}.part").exists()


# --- the daemon's manager ------------------------------------------------------------------


def manager(tmp_path: Path, *, keys: list[str] | None = None, busy=lambda: False):
    from edge_agent.config import EdgeConfig, UpgradeConfig
    from edge_agent.upgrade import UpgradeManager

    async def reply(cmd_id: str, status: str, detail: str, data: dict[str, object]) -> bool:
        return True

    config = EdgeConfig(
        site=SITE,
        data_dir=tmp_path,
        upgrade=UpgradeConfig(
            trusted_keys=["ab" * 32] if keys is None else keys, root=tmp_path, idle_timeout_s=1
        ),
    )
    return UpgradeManager(config, "1.0.0", reply, terminals_busy=busy)


def upgrade_command(version: str = "1.1.0", *, cmd_id: str = "r-1:SZ-FUTIAN:1", **kw: object):
    from protocol.messages import Upgrade

    return Upgrade(
        id=cmd_id,
        issued_at=datetime.now(UTC),
        rollout_id="r-1",
        version=version,
        manifest_url="http://hq/releases/1.1.0/manifest.json",
        manifest_sha256="0" * 64,
        **kw,  # type: ignore[arg-type]
    )


async def test_an_upgrade_command_is_refused_early_for_local_reasons(tmp_path: Path):
    assert manager(tmp_path, keys=[]).submit(upgrade_command())[2] == {"reason": "not_configured"}
    late = upgrade_command(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert manager(tmp_path).submit(late)[2] == {"reason": "command_expired"}
    assert manager(tmp_path).submit(upgrade_command("1.0.0"))[0] == "done"  # runs it already
    write_json(Layout(tmp_path, tmp_path).state, UpdaterState(bad={"1.1.0": "health_timeout"}))
    status, detail, data = manager(tmp_path).submit(upgrade_command())
    assert (status, data) == ("rejected", {"reason": "known_bad"})
    assert "health_timeout" in detail


async def test_one_upgrade_at_a_time_and_a_repeated_command_gets_its_outcome(tmp_path: Path):
    m = manager(tmp_path)
    assert m.submit(upgrade_command())[0] == "accepted"
    assert m.submit(upgrade_command())[0] == "accepted"  # the same command again: same answer
    other = upgrade_command("1.2.0", cmd_id="r-2:SZ-FUTIAN:1")
    assert m.submit(other)[2] == {"reason": "busy"}

    # After a restart: the outcome is waiting in result.json when the retained command comes.
    done = Result(
        cmd_id="r-1:SZ-FUTIAN:1", rollout_id="r-1", version="1.1.0", status="failed",
        state="rolled_back", reason="crash_loop", running_version="1.0.0", at=datetime.now(UTC),
    )  # fmt: skip
    write_json(Layout(tmp_path, tmp_path).result, done)
    status, _, data = manager(tmp_path).submit(upgrade_command())
    assert (status, data["state"], data["reason"]) == ("failed", "rolled_back", "crash_loop")


async def test_the_switch_waits_for_idle_terminals_but_not_for_ever(tmp_path: Path):
    import asyncio

    layout = Layout(tmp_path, tmp_path)
    busy_until = time.monotonic() + 0.5
    m = manager(tmp_path, busy=lambda: time.monotonic() < busy_until)
    layout.work.mkdir()
    layout.switch_request.write_text("{}")
    started = time.monotonic()
    await m._answer_switch()
    assert time.monotonic() - started >= 0.45
    assert msgspec.json.decode(layout.switch_ready.read_bytes())["idle"] is True

    layout.switch_ready.unlink()
    stuck = manager(tmp_path, busy=lambda: True)  # a terminal that never finishes
    await asyncio.wait_for(stuck._answer_switch(), 5)
    assert msgspec.json.decode(layout.switch_ready.read_bytes())["idle"] is False
