"""``onecard-edge install`` / ``uninstall`` into a ``--root`` tree, with real bundles from
``central.provision`` (the same code ``onecard-central site add`` runs)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from central.provision import add_site, init_broker, rotate_site
from edge_agent import install as setup
from edge_agent.cli import main
from edge_agent.config import load_config

SITE = "SZ-FUTIAN"
URL = "mqtts://hq.example.com:8883"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker_dir(tmp_path: Path) -> Path:
    return init_broker(tmp_path / "broker", hostnames=["hq.example.com"]).root


@pytest.fixture
def bundle(broker_dir: Path, tmp_path: Path) -> Path:
    return add_site(broker_dir, SITE, broker_url=URL, out=tmp_path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


def cli(*args: str | Path, input: str | None = None) -> tuple[int, str]:  # noqa: A002
    result = CliRunner().invoke(main, [str(a) for a in args], input=input)
    return result.exit_code, result.output


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.chmod(0o600)
    return path


# --- a good bundle --------------------------------------------------------------------------


def test_install_into_root_lays_out_config_data_units_and_udev_rule(bundle: Path, root: Path):
    code, out = cli("install", "--bundle", bundle, "--root", root, "--skip-venv")
    assert code == 0, out
    expected = {
        "etc/onecard": 0o750,
        "etc/onecard/edge.toml": 0o640,
        "etc/onecard/ca.crt": 0o640,
        "etc/onecard/mqtt.password": 0o600,
        "var/lib/onecard": 0o700,
        "opt/onecard": 0o755,
        "etc/systemd/system/onecard-edge.service": 0o644,
        "etc/systemd/system/onecard-edge-updater.service": 0o644,
        "etc/systemd/system/onecard-edge-updater.path": 0o644,
        "etc/udev/rules.d/99-onecard-serial.rules": 0o644,
    }
    for rel, want in expected.items():
        assert mode(root / rel) == want, rel
    files = members(bundle)
    for name in ("edge.toml", "ca.crt", "mqtt.password"):
        assert (root / "etc/onecard" / name).read_bytes() == files[name]
    unit = REPO / "systemd/onecard-edge.service"
    assert (root / "etc/systemd/system/onecard-edge.service").read_bytes() == unit.read_bytes()
    rule = REPO / "systemd/99-onecard-serial.rules"
    assert (root / "etc/udev/rules.d/99-onecard-serial.rules").read_bytes() == rule.read_bytes()
    assert load_config(root / "etc/onecard/edge.toml", env={}).site == SITE
    command = root / "usr/local/bin/onecard-edge"
    assert command.readlink() == Path("/opt/onecard/current/venv/bin/onecard-edge")
    # --root never touches the host: users, systemctl and udevadm are only reported.
    assert "skipped (--root): systemctl" in out
    assert "user onecard: not created" in out
    assert not (root / "etc/systemd/system/multi-user.target.wants").exists()
    assert "tree for site SZ-FUTIAN ready" in out


def test_install_with_enable_links_the_unit_into_multi_user_target(bundle: Path, root: Path):
    code, out = cli("install", "--bundle", bundle, "--root", root, "--skip-venv", "--enable")
    assert code == 0, out
    for unit in (
        "onecard-edge.service",
        "onecard-edge-updater.service",
        "onecard-edge-updater.path",
    ):
        link = root / "etc/systemd/system/multi-user.target.wants" / unit
        assert link.readlink() == Path("/etc/systemd/system") / unit


def test_unit_wanted_by_matches_the_link_install_makes():
    unit = (REPO / "systemd/onecard-edge.service").read_text()
    assert f"WantedBy={setup.WANTED_BY}" in unit.splitlines()


def test_second_install_with_a_new_bundle_replaces_config_and_keeps_the_old(
    bundle: Path, broker_dir: Path, root: Path, tmp_path: Path
):
    assert cli("install", "--bundle", bundle, "--root", root, "--skip-venv")[0] == 0
    edited = (
        (root / "etc/onecard/edge.toml").read_text().replace("heartbeat_s = 10", "heartbeat_s = 5")
    )
    (root / "etc/onecard/edge.toml").write_text(edited)
    (root / "var/lib/onecard/edge.db").write_bytes(b"the site's data")
    new = rotate_site(broker_dir, SITE, broker_url=URL, out=tmp_path / "new.tar")

    code, out = cli("install", "--bundle", new, "--root", root, "--skip-venv")
    assert code == 0, out
    assert (root / "etc/onecard/mqtt.password").read_bytes() == members(new)["mqtt.password"]
    assert (root / "etc/onecard/edge.toml").read_bytes() == members(new)["edge.toml"]
    assert (root / "etc/onecard/edge.toml.bak").read_text() == edited
    assert "re-apply local changes" in out
    assert (root / "var/lib/onecard/edge.db").read_bytes() == b"the site's data"
    assert mode(root / "etc/onecard/mqtt.password") == 0o600


def test_uninstall_removes_service_and_venv_but_keeps_config_and_data(bundle: Path, root: Path):
    assert cli("install", "--bundle", bundle, "--root", root, "--skip-venv", "--enable")[0] == 0
    (root / "opt/onecard/releases/0.1.0/venv/bin").mkdir(parents=True)
    (root / "opt/onecard/current").symlink_to("releases/0.1.0")
    (root / "var/lib/onecard/edge.db").write_bytes(b"data")

    code, out = cli("uninstall", "--root", root)
    assert code == 0, out
    assert not (root / "etc/systemd/system/onecard-edge.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/onecard-edge.service").exists()
    assert not (root / "etc/udev/rules.d/99-onecard-serial.rules").exists()
    assert not (root / "usr/local/bin/onecard-edge").is_symlink()
    assert not (root / "opt/onecard").exists()
    assert (root / "etc/onecard/edge.toml").is_file()
    assert (root / "var/lib/onecard/edge.db").read_bytes() == b"data"
    assert "uninstall --purge removes them" in out


def test_uninstall_purge_removes_config_and_data_once_hq_has_everything(bundle: Path, root: Path):
    assert cli("install", "--bundle", bundle, "--root", root, "--skip-venv")[0] == 0
    (root / "var/lib/onecard/edge.db").write_bytes(b"data")
    (root / "var/lib/onecard/status.json").write_text('{"outbox_depth": 0}')
    (root / "var/log/onecard").mkdir(parents=True)

    code, out = cli("uninstall", "--root", root, "--purge", "--yes")
    assert code == 0, out
    leftovers = [p for p in root.rglob("*") if not p.is_dir() or p.is_symlink()]
    assert leftovers == []
    for rel in ("etc/onecard", "var/lib/onecard", "var/log/onecard", "opt/onecard"):
        assert not (root / rel).exists(), rel


def test_a_foreign_onecard_edge_command_is_left_alone(bundle: Path, root: Path):
    own = root / "usr/local/bin/onecard-edge"
    own.parent.mkdir(parents=True)
    own.write_text("#!/bin/sh\n")
    code, out = cli("install", "--bundle", bundle, "--root", root, "--skip-venv")
    assert code == 0 and "left alone (not ours)" in out
    assert cli("uninstall", "--root", root)[0] == 0
    assert own.read_text() == "#!/bin/sh\n"


def test_purge_refuses_while_records_have_not_reached_hq(bundle: Path, root: Path):
    assert cli("install", "--bundle", bundle, "--root", root, "--skip-venv")[0] == 0
    (root / "var/lib/onecard/edge.db").write_bytes(b"data")
    (root / "var/lib/onecard/status.json").write_text('{"outbox_depth": 17}')

    code, out = cli("uninstall", "--root", root, "--purge", "--yes")
    assert code != 0
    assert "17 records have not reached HQ yet" in out
    assert (root / "etc/systemd/system/onecard-edge.service").exists()  # nothing done
    assert (root / "var/lib/onecard/edge.db").exists()

    code, out = cli("uninstall", "--root", root, "--purge", "--yes", "--force")
    assert code == 0, out
    assert not (root / "var/lib/onecard").exists()


def test_purge_asks_first(bundle: Path, root: Path):
    assert cli("install", "--bundle", bundle, "--root", root, "--skip-venv")[0] == 0
    code, out = cli("uninstall", "--root", root, "--purge", input="n\n")
    assert code != 0 and "Aborted" in out
    assert (root / "etc/onecard/edge.toml").exists()


def test_install_as_a_normal_user_without_root_is_refused(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out = cli("install", "--bundle", bundle, "--skip-venv")
    assert code != 0 and "run as root" in out


def test_root_slash_is_refused(bundle: Path):
    code, out = cli("install", "--bundle", bundle, "--root", "/", "--skip-venv")
    assert code != 0 and "leave out --root" in out


# --- bad bundles ----------------------------------------------------------------------------


def bad(path: Path, root: Path) -> str:
    code, out = cli("install", "--bundle", path, "--root", root, "--skip-venv")
    assert code != 0
    assert not (root / "etc/onecard").exists()  # checked before anything is written
    return out


def test_bundle_missing_a_member_is_refused(bundle: Path, root: Path, tmp_path: Path):
    files = members(bundle)
    del files["mqtt.password"]
    out = bad(write_tar(tmp_path / "x.tar", files), root)
    assert "missing mqtt.password" in out


def test_bundle_with_broken_toml_is_refused(bundle: Path, root: Path, tmp_path: Path):
    files = members(bundle) | {"edge.toml": b'site = "SZ-FUTIAN\n'}
    out = bad(write_tar(tmp_path / "x.tar", files), root)
    assert "edge.toml: not valid TOML" in out


def test_bundle_with_an_invalid_site_id_is_refused(bundle: Path, root: Path, tmp_path: Path):
    toml = members(bundle)["edge.toml"].replace(b'site = "SZ-FUTIAN"', b'site = "sz futian"')
    out = bad(write_tar(tmp_path / "x.tar", members(bundle) | {"edge.toml": toml}), root)
    assert "not a valid site id" in out


def test_bundle_with_an_unknown_config_key_is_refused(bundle: Path, root: Path, tmp_path: Path):
    toml = members(bundle)["edge.toml"] + b"\n[log]\nlevle = 'debug'\n"
    out = bad(write_tar(tmp_path / "x.tar", members(bundle) | {"edge.toml": toml}), root)
    assert "unknown field `levle`" in out


def test_bundle_that_is_not_a_tar_is_refused(root: Path, tmp_path: Path):
    path = tmp_path / "SZ-FUTIAN-bundle.tar"
    path.write_bytes(b"this is a README, not a bundle\n")
    assert "not a tar archive" in bad(path, root)


def test_bundle_with_a_foreign_member_or_link_is_refused(bundle: Path, root: Path, tmp_path: Path):
    out = bad(write_tar(tmp_path / "x.tar", members(bundle) | {"../etc/passwd": b"x"}), root)
    assert "unexpected member '../etc/passwd'" in out
    linked = tmp_path / "l.tar"
    with tarfile.open(linked, "w") as tar:
        for name, data in members(bundle).items():
            if name != "ca.crt":
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("ca.crt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
    assert "ca.crt is not a regular file" in bad(linked, root)


def test_bundle_with_garbage_ca_or_empty_password_is_refused(
    bundle: Path, root: Path, tmp_path: Path
):
    out = bad(write_tar(tmp_path / "a.tar", members(bundle) | {"ca.crt": b"nope"}), root)
    assert "ca.crt is not a PEM certificate" in out
    out = bad(write_tar(tmp_path / "b.tar", members(bundle) | {"mqtt.password": b"\n"}), root)
    assert "mqtt.password must hold one password" in out


def test_unreadable_or_missing_bundle_says_so(root: Path, tmp_path: Path):
    assert "no such file" in bad(tmp_path / "nope.tar", root)
    assert "is a directory" in bad(tmp_path, root)


def test_bundle_for_another_site_than_this_pc_runs_is_refused(
    bundle: Path, broker_dir: Path, root: Path, tmp_path: Path
):
    assert cli("install", "--bundle", bundle, "--root", root, "--skip-venv")[0] == 0
    (root / "var/lib/onecard/edge.db").write_bytes(b"SZ-FUTIAN's data")
    other = add_site(broker_dir, "BJ-CHAOYANG", broker_url=URL, out=tmp_path / "bj.tar")
    code, out = cli("install", "--bundle", other, "--root", root, "--skip-venv")
    assert code != 0
    assert "this PC is site SZ-FUTIAN" in out and "bundle is for BJ-CHAOYANG" in out
    assert load_config(root / "etc/onecard/edge.toml", env={}).site == SITE


def test_clock_before_the_ca_existed_warns_about_tls(bundle: Path):
    checked = setup.read_bundle(bundle, now=datetime(2001, 1, 1, tzinfo=UTC))
    assert any("timedatectl set-ntp true" in w for w in checked.warnings)
    assert setup.read_bundle(bundle).warnings == []


def test_world_readable_bundle_warns_to_delete_it(bundle: Path):
    bundle.chmod(0o644)
    assert any("shred -u" in w for w in setup.read_bundle(bundle).warnings)


# --- what a live install runs, and the venv ---------------------------------------------------


class FakeHost(setup.HostSystem):
    """The host as install sees it, with commands recorded instead of run."""

    def __init__(self, *, restart_ok: bool = True) -> None:
        super().__init__(lambda _line: None)
        self.commands: list[list[str]] = []
        self.user = False
        self.restart_ok = restart_ok

    def ids(self) -> tuple[int, int] | None:
        return (os.getuid(), os.getgid()) if self.user else None

    def run(self, argv: list[str], *, check: bool = True) -> bool:  # noqa: ARG002
        self.commands.append(argv)
        self.user = self.user or argv[0] == "useradd"
        return self.restart_ok or argv[1] != "restart"

    def build(self, argv: list[str]) -> None:
        self.commands.append(argv)

    def systemd_running(self) -> bool:
        return True


def test_live_install_creates_the_user_then_reloads_enables_and_restarts(bundle: Path, root: Path):
    host = FakeHost()
    tree = setup.Tree(root, host)
    setup.install(setup.read_bundle(bundle), tree, setup.InstallOptions(skip_venv=True))
    names = [" ".join(c[:2]) if c[0] != "useradd" else "useradd" for c in host.commands]
    assert names == [
        "useradd",
        "systemctl daemon-reload",
        "udevadm control",
        "udevadm trigger",
        "systemctl enable",
        "systemctl enable",  # the updater's path unit (docs/upgrade.md)
        "systemctl restart",
    ]
    assert ["systemctl", "enable", "--now", "onecard-edge-updater.path"] in host.commands
    assert ["systemctl", "enable", setup.UNIT, "onecard-edge-updater.service"] in host.commands
    useradd = host.commands[0]
    assert "--system" in useradd and useradd[-1] == "onecard"
    assert "/usr/sbin/nologin" in useradd and "/var/lib/onecard" in useradd


def test_live_install_with_no_start_does_not_restart(bundle: Path, root: Path):
    host = FakeHost()
    options = setup.InstallOptions(skip_venv=True, start=False)
    setup.install(setup.read_bundle(bundle), setup.Tree(root, host), options)
    assert ["systemctl", "restart", setup.UNIT] not in host.commands
    assert ["systemctl", "enable", setup.UNIT, "onecard-edge-updater.service"] in host.commands


def test_a_service_that_does_not_start_fails_install_with_where_to_look(bundle: Path, root: Path):
    tree = setup.Tree(root, FakeHost(restart_ok=False))
    with pytest.raises(setup.InstallError, match="journalctl -u onecard-edge"):
        setup.install(setup.read_bundle(bundle), tree, setup.InstallOptions(skip_venv=True))


def test_install_into_an_image_with_an_onecard_account_applies_its_ids(bundle: Path, root: Path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nonecard:x:990:991::/:/x\n")
    (root / "etc/group").write_text("root:x:0:\nonecard:x:991:\n")
    assert cli("install", "--bundle", bundle, "--root", root, "--skip-venv")[0] == 0
    owners = {
        "etc/onecard": (0, 991),
        "etc/onecard/edge.toml": (0, 991),
        "etc/onecard/mqtt.password": (os.getuid(), os.getgid()),
        "var/lib/onecard": (990, 991),
    }
    for rel, ids in owners.items():
        st = (root / rel).stat()
        assert (st.st_uid, st.st_gid) == ids, rel


@pytest.mark.parametrize("offline", [False, True], ids=["index", "wheelhouse"])
def test_venv_gets_the_locked_runtime_dependencies_then_onecard(
    bundle: Path, root: Path, tmp_path: Path, offline: bool
):
    recorded: list[list[str]] = []
    locks: list[str] = []

    class Recording(setup.RootSystem):
        def build(self, argv: list[str]) -> None:
            recorded.append(argv)
            if "-r" in argv:
                locks.append(Path(argv[argv.index("-r") + 1]).read_text())

    wheel = tmp_path / "onecard-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    tree = setup.Tree(root, Recording(root, lambda _line: None))
    options = setup.InstallOptions(
        wheel=wheel, wheelhouse=tmp_path if offline else None, python="/usr/bin/python3"
    )
    setup.install(setup.read_bundle(bundle), tree, options)

    venv = str(root / "opt/onecard/releases/0.1.0/venv")
    assert recorded[0] == ["/usr/bin/python3", "-m", "venv", venv]
    index = ["--no-index", "--find-links", str(tmp_path)] if offline else []
    deps, onecard, check = recorded[1:]
    pip = [f"{venv}/bin/python", "-m", "pip", "--disable-pip-version-check", "--no-input"]
    assert deps[:5] == onecard[:5] == check[:5] == pip
    hashes = [] if offline else ["--require-hashes"]
    assert deps[5:-1] == ["install", *index, *hashes, "--no-deps", "-r"]
    assert onecard[5:] == ["install", *index, "--no-deps", "--force-reinstall", str(wheel)]
    assert check[5:] == ["check"]
    # the service runs the release through `current`; upgrades add releases beside it
    assert (root / "opt/onecard/current").readlink() == Path("releases/0.1.0")
    assert (root / "opt/onecard/releases/0.1.0/.complete").read_text() == "0.1.0\n"
    (lock,) = locks
    assert "aiomqtt==2.5.1" in lock and "pytest==" not in lock
    # From the index every file is hash-checked; a wheelhouse made at HQ holds wheels built
    # there (pyscard has no Linux wheel on PyPI) with hashes of their own: the same pins.
    assert ("--hash=sha256:" in lock) == (not offline)


def test_runtime_subset_of_the_lock_leaves_out_the_dev_tools():
    lock = (REPO / "requirements.lock").read_text()
    runtime = setup.runtime_requirements(lock, setup.runtime_closure())
    names = {line.split("==")[0] for line in runtime.splitlines() if not line[0].isspace()}
    for needed in ("aiomqtt", "aiosqlite", "click", "cryptography", "msgspec", "structlog"):
        assert needed in names
    for dev in ("pytest", "mypy", "ruff", "hypothesis"):
        assert dev not in names
    assert "paho-mqtt" in names  # aiomqtt's own dependency comes along
    assert all(line.startswith("    --hash=") or "==" in line for line in runtime.splitlines())
