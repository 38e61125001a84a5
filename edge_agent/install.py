"""``onecard-edge install`` / ``uninstall``: a branch PC from a bundle to a running service.

:func:`read_bundle` checks a ``SITE-bundle.tar`` from ``onecard-central site add`` before
anything is changed. :func:`install` then lays out the tree below a root (``/`` on a branch
PC, any directory with ``--root``)::

    etc/onecard/                 0750 root:onecard   edge.toml, ca.crt (0640 root:onecard),
                                                     mqtt.password (0600 root: systemd reads
                                                     it and hands the daemon a credential)
    var/lib/onecard/             0700 onecard        the site database (data_dir)
    opt/onecard/releases/VERSION/venv/   a virtualenv holding onecard and its locked
                                         dependencies (one per release: upgrades add more)
    opt/onecard/current          -> releases/VERSION, the release the service runs
    etc/systemd/system/onecard-edge.service, onecard-edge-updater.{service,path}
    etc/udev/rules.d/99-onecard-serial.rules
    usr/local/bin/onecard-edge   -> /opt/onecard/current/venv/bin/onecard-edge

Everything that changes the *host* rather than files below the root — the ``onecard`` user,
``systemctl``, ``udevadm`` — goes through a :class:`System`. :class:`HostSystem` does it;
:class:`RootSystem` (``--root``) only reports it, so tests and image builds never touch the
machine's users or services. Both are idempotent: installing again with a new bundle
replaces the configuration (keeping the old one as ``edge.toml.bak``) and restarts.
"""

from __future__ import annotations

import contextlib
import grp
import importlib.metadata
import io
import os
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from cryptography import x509

from edge_agent.config import ConfigError, EdgeConfig, load_config

USER = GROUP = "onecard"
UNIT = "onecard-edge.service"
UDEV_RULE = "99-onecard-serial.rules"
ETC = Path("etc/onecard")
STATE = Path("var/lib/onecard")
LOGS = Path("var/log/onecard")
OPT = Path("opt/onecard")
RELEASES = OPT / "releases"
CURRENT = OPT / "current"
#: The release the service runs, through ``current`` (remote upgrades switch it).
VENV = CURRENT / "venv"
#: Where installs from before releases kept their one venv (uninstall still removes it).
LEGACY_VENV = OPT / "venv"
#: The updater (docs/upgrade.md): the path unit starts the oneshot service when the daemon
#: asks for an upgrade.
UPDATER_UNITS = ("onecard-edge-updater.service", "onecard-edge-updater.path")
UPDATER_TRIGGER = "onecard-edge-updater.path"
BIN_LINK = Path("usr/local/bin/onecard-edge")
UNIT_DIR = Path("etc/systemd/system")
UDEV_DIR = Path("etc/udev/rules.d")
#: The unit's [Install] WantedBy= (tests check the two agree).
WANTED_BY = "multi-user.target"
#: What edge.toml from ``site add`` points at; install puts the files there.
PASSWORD_PATH = Path("/etc/onecard/mqtt.password")
CA_PATH = Path("/etc/onecard/ca.crt")
REQUIRED = ("edge.toml", "ca.crt", "mqtt.password")
OPTIONAL = ("README.txt",)
MAX_MEMBER_BYTES = 256 * 1024
MAX_BUNDLE_BYTES = 4 * MAX_MEMBER_BYTES

Echo = Callable[[str], None]


class InstallError(Exception):
    """Install or uninstall cannot go on; the message says what to do."""


class BundleError(InstallError):
    """The bundle is not one ``onecard-central site add`` wrote, or is damaged."""


# --- the bundle -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: its files and the configuration they make."""

    path: Path
    files: dict[str, bytes]
    config: EdgeConfig
    warnings: list[str]

    @property
    def site(self) -> str:
        """The site the bundle is for."""
        return self.config.site


def read_bundle(path: Path, *, now: datetime | None = None) -> Bundle:
    """Read and check ``path``; raise :class:`BundleError` naming the first problem."""
    try:
        st = path.stat()
        if st.st_size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path}: {st.st_size} bytes is far too big for a site bundle")
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BundleError(f"{path}: is a directory; give the SITE-bundle.tar file") from None
    except PermissionError:
        raise BundleError(f"{path}: permission denied (run as root: sudo onecard-edge …)") from None
    files = _members(path, data)
    config = _bundle_config(path, files["edge.toml"])
    _check_password(path, files["mqtt.password"])
    warnings = _check_ca(path, files["ca.crt"], now or datetime.now(UTC))
    if st.st_mode & 0o077:
        warnings.append(
            f"{path} can be read by other users of this PC and holds the site's MQTT password: "
            f"delete it once installed (shred -u {path})"
        )
    return Bundle(path, files, config, warnings)


def _members(path: Path, data: bytes) -> dict[str, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            files = _read_members(path, tar)
    except tarfile.TarError:
        raise BundleError(
            f"{path}: not a tar archive, or a damaged one (a bundle is the SITE-bundle.tar "
            "`onecard-central site add` wrote at HQ; copy it unchanged)"
        ) from None
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise BundleError(
            f"{path}: missing {', '.join(missing)} (a bundle holds edge.toml, ca.crt and "
            "mqtt.password; ask HQ for a new one: onecard-central site rotate SITE)"
        )
    return files


def _read_members(path: Path, tar: tarfile.TarFile) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for member in tar.getmembers():
        name = member.name.removeprefix("./")
        if name not in REQUIRED + OPTIONAL:
            raise BundleError(f"{path}: unexpected member {member.name!r} (not a site bundle)")
        if not member.isfile():
            raise BundleError(f"{path}: {name} is not a regular file")
        if member.size > MAX_MEMBER_BYTES:
            raise BundleError(f"{path}: {name} is {member.size} bytes, too big")
        if name in files:
            raise BundleError(f"{path}: {name} appears twice")
        f = tar.extractfile(member)
        files[name] = f.read() if f is not None else b""
    return files


def _bundle_config(path: Path, toml: bytes) -> EdgeConfig:
    with tempfile.TemporaryDirectory(prefix="onecard-bundle-") as tmp:
        candidate = Path(tmp) / "edge.toml"
        candidate.write_bytes(toml)
        try:
            # env={}: this shell's ONECARD_EDGE_* variables must not mask a bad bundle.
            config = load_config(candidate, env={})
        except ConfigError as exc:
            detail = str(exc).removeprefix(f"{candidate}: ")
            raise BundleError(f"{path}: edge.toml: {detail}") from None
    mqtt = config.mqtt
    if mqtt.password_file is not None and mqtt.password_file != PASSWORD_PATH:
        raise BundleError(
            f"{path}: edge.toml: mqtt.password_file is {mqtt.password_file}, "
            f"but install puts the password at {PASSWORD_PATH}"
        )
    if mqtt.ca_file is not None and mqtt.ca_file != CA_PATH:
        raise BundleError(
            f"{path}: edge.toml: mqtt.ca_file is {mqtt.ca_file}, "
            f"but install puts the CA at {CA_PATH}"
        )
    return config


def _check_password(path: Path, data: bytes) -> None:
    try:
        password = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BundleError(f"{path}: mqtt.password is not text") from None
    if not password or any(c.isspace() for c in password):
        raise BundleError(f"{path}: mqtt.password must hold one password on one line")


def _check_ca(path: Path, pem: bytes, now: datetime) -> list[str]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise BundleError(f"{path}: ca.crt is not a PEM certificate") from None
    warnings = []
    for cert in certs:
        if now < cert.not_valid_before_utc:
            warnings.append(
                f"this PC's clock says {now:%Y-%m-%d %H:%M} UTC, before HQ's CA was even made "
                f"({cert.not_valid_before_utc:%Y-%m-%d}): TLS to HQ will fail until the clock "
                "is right (timedatectl set-ntp true; timedatectl status)"
            )
        elif now > cert.not_valid_after_utc:
            warnings.append(
                f"HQ's CA in the bundle expired on {cert.not_valid_after_utc:%Y-%m-%d} "
                "(or this PC's clock is wrong): TLS to HQ will fail"
            )
    return warnings


# --- host operations ------------------------------------------------------------------------


class System:
    """What install does to the host beyond files under the root (see the module doc)."""

    live = False

    def __init__(self, echo: Echo) -> None:
        self.echo = echo

    def ensure_user(self) -> None:
        """Create the ``onecard`` system user and group unless they exist."""
        raise NotImplementedError

    def ids(self) -> tuple[int, int] | None:
        """The ``onecard`` uid and gid, or None where they cannot be known."""
        raise NotImplementedError

    def run(self, argv: list[str], *, check: bool = True) -> bool:
        """Run a host command (``systemctl``, ``udevadm``); False if it failed and not check."""
        raise NotImplementedError

    def build(self, argv: list[str]) -> None:
        """Run a build command (venv, pip): these only write below the root, so always run."""
        self.echo(f"  $ {' '.join(argv)}")
        result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise InstallError(f"{argv[0]} failed:\n{(result.stderr or result.stdout).strip()}")

    def systemd_running(self) -> bool:
        """Whether systemd is PID 1 here (not in a chroot or build container)."""
        return Path("/run/systemd/system").is_dir()


class HostSystem(System):
    """The real machine: ``useradd``, ``systemctl``, ``udevadm``."""

    live = True

    def ensure_user(self) -> None:
        if self.ids() is not None:
            self.echo(f"user {USER}: exists")
            return
        self.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                "/" + str(STATE),
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "onecard edge daemon",
                USER,
            ]
        )

    def ids(self) -> tuple[int, int] | None:
        try:
            return pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
        except KeyError:
            return None

    def run(self, argv: list[str], *, check: bool = True) -> bool:
        self.echo(f"  $ {' '.join(argv)}")
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        except FileNotFoundError:
            if check:
                raise InstallError(f"{argv[0]}: not found on this machine") from None
            return False
        if result.returncode != 0 and check:
            raise InstallError(f"{' '.join(argv)} failed: {(result.stderr or '').strip()}")
        return result.returncode == 0


class RootSystem(System):
    """``--root DIR``: host commands are reported, not run; ownership comes from the tree's
    own ``etc/passwd`` and ``etc/group`` when it has them (an image being built)."""

    def __init__(self, root: Path, echo: Echo) -> None:
        super().__init__(echo)
        self.root = root
        self.skipped: list[list[str]] = []

    def ensure_user(self) -> None:
        if self.ids() is None:
            self.echo(
                f"user {USER}: not created (--root; the image must have a system user and "
                f"group {USER}, e.g. useradd --system --user-group {USER})"
            )

    def ids(self) -> tuple[int, int] | None:
        uid = _lookup(self.root / "etc/passwd", USER)
        gid = _lookup(self.root / "etc/group", GROUP)
        return None if uid is None or gid is None else (uid, gid)

    def run(self, argv: list[str], *, check: bool = True) -> bool:  # noqa: ARG002 - never fails
        self.skipped.append(argv)
        self.echo(f"  skipped (--root): {' '.join(argv)}")
        return True

    def systemd_running(self) -> bool:
        return False


def _lookup(path: Path, name: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[0] == name and parts[2].isdigit():
                return int(parts[2])
    return None


# --- the tree -------------------------------------------------------------------------------


@dataclass
class Tree:
    """Files below ``root`` with their modes and owners (``None`` owner: root; a ``"user"``
    or ``"group"`` owner is the onecard account, applied where it is known)."""

    root: Path
    system: System
    changed: list[str] = field(default_factory=list)

    def path(self, rel: Path | str) -> Path:
        """``rel`` below the root."""
        return self.root / rel

    def _own(self, path: Path, owner: str) -> str:
        ids = self.system.ids()
        label = {"root": "root:root", "group": f"root:{GROUP}", "user": f"{USER}:{GROUP}"}[owner]
        if owner == "root" and not self.system.live:
            return label  # whoever builds the tree owns it; an image build runs as root
        if ids is None:
            return f"{label} (not applied: no {USER} account here)"
        uid, gid = ids
        want = {"root": (0, 0), "group": (0, gid), "user": (uid, gid)}[owner]
        st = path.lstat()
        if (st.st_uid, st.st_gid) != want:
            try:
                os.chown(path, *want, follow_symlinks=False)
            except PermissionError:
                return f"{label} (not applied: needs root)"
        return label

    def mkdir(self, rel: Path, mode: int, owner: str) -> None:
        """Create a directory (and parents) with ``mode``; fix the mode if it exists."""
        path = self.path(rel)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        self.system.echo(f"{path}/  {mode:04o} {self._own(path, owner)}")

    def write(self, rel: Path, data: bytes, mode: int, owner: str, *, backup: bool = False) -> bool:
        """Replace a file atomically; True if its content changed."""
        path = self.path(rel)
        old = path.read_bytes() if path.is_file() else None
        if backup and old is not None and old != data:
            shutil.copy2(path, path.with_name(path.name + ".bak"))
            self.system.echo(f"{path}.bak  (the previous {path.name}: re-apply local changes)")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), mode)
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.system.echo(f"{path}  {mode:04o} {self._own(path, owner)}")
        if old != data:
            self.changed.append(str(rel))
        return old != data

    def remove(self, rel: Path) -> None:
        """Remove a file, symlink or directory tree if present."""
        path = self.path(rel)
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            return
        self.system.echo(f"removed {path}")


# --- the virtualenv -------------------------------------------------------------------------


@dataclass(frozen=True)
class VenvSource:
    """Where the venv's onecard and its dependencies come from."""

    wheel: Path | None  # a ready onecard wheel
    project: Path | None  # or a source checkout to build one from
    lock: Path | None  # requirements.lock: exact, hash-checked versions
    wheelhouse: Path | None  # offline: a directory of wheels instead of the package index


def source_tree() -> Path | None:
    """The onecard checkout this code runs from, if it does (an editable install)."""
    top = Path(__file__).resolve().parents[1]
    pyproject = top / "pyproject.toml"
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
        if tomllib.loads(pyproject.read_text())["project"]["name"] == "onecard":
            return top
    return None


def venv_source(wheel: Path | None, wheelhouse: Path | None) -> VenvSource:
    """Decide where onecard comes from, or say what to pass (see docs/install.md)."""
    project = source_tree()
    lock = project / "requirements.lock" if project else None
    if lock is not None and not lock.is_file():
        lock = None
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise InstallError(f"--wheelhouse {wheelhouse}: no such directory")
    if wheel is not None:
        if not wheel.is_file():
            raise InstallError(f"--wheel {wheel}: no such file")
        return VenvSource(wheel, None, lock, wheelhouse)
    if project is not None:
        return VenvSource(None, project, lock, wheelhouse)
    if wheelhouse is not None:
        version = importlib.metadata.version("onecard")
        found = sorted(wheelhouse.glob(f"onecard-{version}-*.whl"))
        if found:
            return VenvSource(found[-1], None, None, wheelhouse)
    raise InstallError(
        "cannot tell where to install onecard from: run install from a onecard checkout, or "
        "pass --wheelhouse DIR (wheels of onecard and its dependencies, made at HQ) or "
        "--wheel onecard-….whl; see docs/install.md"
    )


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(dist: str = "onecard") -> set[str]:
    """Normalised names of what ``dist`` needs at run time, from the installed metadata
    (extras such as ``dev`` left out)."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = todo.pop()
        if _norm(name) in seen:
            continue
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # excluded by a marker here, so not installed
        seen.add(_norm(name))
        for req in requires:
            spec, _, marker = req.partition(";")
            if "extra" not in marker:
                match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
                if match:
                    todo.append(match[0])
    seen.discard(_norm(dist))
    return seen


def runtime_requirements(lock_text: str, names: Iterable[str], *, hashes: bool = True) -> str:
    """The entries of a hashed lock file (``uv pip compile``/``pip-compile`` format) for
    ``names`` only: the runtime subset, without the dev tools. ``hashes=False`` keeps only
    the pins, for a wheelhouse whose locally built wheels (pyscard) have hashes of their own."""
    wanted = {_norm(n) for n in names}
    out: list[str] = []
    keep = False
    for line in lock_text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry_start = not line[0].isspace()
        if entry_start:
            match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)", line)
            keep = bool(match) and _norm(match[1] if match else "") in wanted
        if keep and hashes:
            out.append(line)
        elif keep and entry_start:
            out.append(line.rstrip(" \\"))
    return "\n".join(out) + "\n"


def release_version(source: VenvSource) -> str:
    """The onecard version ``source`` installs (a venv's scripts name its path, so the
    release directory must be right before the venv is made)."""
    if source.wheel is not None:
        match = re.match(r"onecard-([^-]+)-", source.wheel.name)
        if match is None:
            raise InstallError(f"{source.wheel.name} is not a onecard wheel")
        return match[1]
    assert source.project is not None  # noqa: S101 - venv_source gives a wheel or a project
    return str(tomllib.loads((source.project / "pyproject.toml").read_text())["project"]["version"])


def build_venv(tree: Tree, source: VenvSource, python: str) -> str:
    """Create ROOT/opt/onecard/releases/VERSION/venv (or reuse it), install onecard into
    it, and point ``current`` at it; returns VERSION."""
    from edge_agent.updater import COMPLETE, switch_current  # noqa: PLC0415 - install only
    from edge_agent.upgrade import Layout  # noqa: PLC0415

    version = release_version(source)
    release = tree.path(RELEASES / version)
    venv = release / "venv"
    system = tree.system
    if not (venv / "bin/python").exists():
        system.build([python, "-m", "venv", str(venv)])
    pip = [str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    index = ["--no-index", "--find-links", str(source.wheelhouse)] if source.wheelhouse else []
    with tempfile.TemporaryDirectory(prefix="onecard-install-") as tmp:
        wheel = source.wheel or _build_wheel(system, source, Path(tmp))
        if source.lock is not None:
            runtime = Path(tmp) / "runtime.lock"
            # From the index: every file hash-checked against the lock. From a wheelhouse (made
            # at HQ, where pyscard's wheel was built from its checked sdist): the same pins.
            hashes = source.wheelhouse is None
            lock = runtime_requirements(source.lock.read_text(), runtime_closure(), hashes=hashes)
            runtime.write_text(lock)
            locked = [*(["--require-hashes"] if hashes else []), "--no-deps", "-r", str(runtime)]
            system.build([*pip, "install", *index, *locked])
            system.build([*pip, "install", *index, "--no-deps", "--force-reinstall", str(wheel)])
        else:
            system.build([*pip, "install", *index, "--force-reinstall", str(wheel)])
        system.build([*pip, "check"])
    release.mkdir(parents=True, exist_ok=True)
    (release / COMPLETE).write_text(version + "\n")
    switch_current(Layout(root=tree.root, data_dir=tree.path(STATE)), version)
    system.echo(f"{tree.path(CURRENT)} -> releases/{version}")
    return version


def _build_wheel(system: System, source: VenvSource, tmp: Path) -> Path:
    assert source.project is not None  # noqa: S101 - venv_source gives a wheel or a project
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    copy = tmp / "src"
    shutil.copytree(
        source.project,
        copy,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "tests", "bench", "build", "dist", "*.egg-info", "__pycache__", ".*"
        ),
    )
    out = tmp / "wheels"
    # --no-build-isolation: setuptools and wheel come from the lock, so this works offline.
    system.build(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(out), str(copy)]
    )  # fmt: skip
    return next(out.glob("onecard-*.whl"))


# --- install / uninstall --------------------------------------------------------------------


def units_dir() -> Path:
    """The directory holding onecard-edge.service and the udev rule."""
    candidates = [Path(__file__).resolve().parents[1] / "systemd"]
    candidates.append(Path(sys.prefix) / "share/onecard/systemd")
    for candidate in candidates:
        if (candidate / UNIT).is_file() and (candidate / UDEV_RULE).is_file():
            return candidate
    raise InstallError(f"{UNIT} not found (looked in {', '.join(map(str, candidates))})")


@dataclass(frozen=True)
class InstallOptions:
    """``onecard-edge install``'s options."""

    start: bool = True  # restart the service (live machine only)
    enable: bool = False  # under --root: add the multi-user.target.wants link
    python: str = "python3"
    wheel: Path | None = None
    wheelhouse: Path | None = None
    skip_venv: bool = False


def install(bundle: Bundle, tree: Tree, options: InstallOptions) -> None:
    """Lay out the tree for ``bundle`` below ``tree.root`` and (on a live system) start it."""
    system = tree.system
    _check_same_site(tree, bundle.site)
    units = units_dir()
    source = None if options.skip_venv else venv_source(options.wheel, options.wheelhouse)

    system.ensure_user()
    tree.mkdir(ETC, 0o750, "group")
    tree.mkdir(STATE, 0o700, "user")
    tree.mkdir(OPT, 0o755, "root")
    tree.write(ETC / "edge.toml", bundle.files["edge.toml"], 0o640, "group", backup=True)
    tree.write(ETC / "ca.crt", bundle.files["ca.crt"], 0o640, "group")
    tree.write(ETC / "mqtt.password", bundle.files["mqtt.password"], 0o600, "root")
    if source is not None:
        build_venv(tree, source, options.python)
    else:
        system.echo(f"{tree.path(VENV)}: not built (--skip-venv)")
    _link_command(tree)
    tree.mkdir(UNIT_DIR, 0o755, "root")
    tree.mkdir(UDEV_DIR, 0o755, "root")
    tree.write(UNIT_DIR / UNIT, (units / UNIT).read_bytes(), 0o644, "root")
    for unit in UPDATER_UNITS:
        tree.write(UNIT_DIR / unit, (units / unit).read_bytes(), 0o644, "root")
    tree.write(UDEV_DIR / UDEV_RULE, (units / UDEV_RULE).read_bytes(), 0o644, "root")

    if not system.live:
        if options.enable:
            for unit in (UNIT, *UPDATER_UNITS):
                _enable_link(tree, unit)
        else:
            system.run(["systemctl", "enable", UNIT, *UPDATER_UNITS])
        system.run(["systemctl", "start", UNIT])
        return
    if not system.systemd_running():
        # works offline: it only makes the links
        system.run(["systemctl", "enable", UNIT, *UPDATER_UNITS])
        system.echo("systemd is not running here: the service starts at the next boot")
        return
    system.run(["systemctl", "daemon-reload"])
    if system.run(["udevadm", "control", "--reload"], check=False):
        system.run(["udevadm", "trigger", "--subsystem-match=tty", "--action=change"], check=False)
    # the updater runs at boot (to finish an interrupted upgrade) and when the daemon asks
    system.run(["systemctl", "enable", UNIT, UPDATER_UNITS[0]])
    system.run(["systemctl", "enable", "--now", UPDATER_TRIGGER])
    if options.start:
        _restart(system)


def _check_same_site(tree: Tree, site: str) -> None:
    current = tree.path(ETC / "edge.toml")
    try:
        installed = tomllib.loads(current.read_text(encoding="utf-8")).get("site")
    except (OSError, tomllib.TOMLDecodeError):
        return
    if installed and installed != site and tree.path(STATE / "edge.db").exists():
        raise InstallError(
            f"this PC is site {installed} (its database {tree.path(STATE / 'edge.db')} belongs "
            f"to {installed}) and the bundle is for {site}. Wrong bundle? If the PC really moves "
            f"to {site}: let {installed} finish syncing (onecard-edge status), then "
            "onecard-edge uninstall --purge, then install"
        )


def _link_command(tree: Tree) -> None:
    # `onecard-edge status` / `logs` for the technician, without typing the venv's path.
    link, target = tree.path(BIN_LINK), Path(f"/{VENV}/bin/onecard-edge")
    if link.is_symlink() and link.readlink() == target:
        return
    if link.is_symlink() and link.readlink() == Path(f"/{LEGACY_VENV}/bin/onecard-edge"):
        link.unlink()  # ours, from before releases
    elif link.exists() or link.is_symlink():
        tree.system.echo(f"{link}: left alone (not ours); use {target}")
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    tree.system.echo(f"{link} -> {target}")


def _enable_link(tree: Tree, unit: str) -> None:
    wants = tree.path(UNIT_DIR / f"{WANTED_BY}.wants")
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if not link.is_symlink():
        link.symlink_to(f"/{UNIT_DIR / unit}")
    tree.system.echo(f"{link} -> /{UNIT_DIR / unit}")


def _restart(system: System) -> None:
    # restart, not start: a reinstall must load the new configuration. For a Type=notify unit
    # this returns once the daemon said READY=1, or fails if it could not start.
    if not system.run(["systemctl", "restart", UNIT], check=False):
        raise InstallError(
            "onecard-edge did not start. See why: journalctl -u onecard-edge -n 50 --no-pager "
            "(then fix, and run install again or systemctl restart onecard-edge)"
        )


def next_steps(bundle: Bundle, tree: Tree, options: InstallOptions) -> list[str]:
    """What to tell the technician when install is done."""
    if not tree.system.live:
        return [
            f"tree for site {bundle.site} ready under {tree.root}.",
            "On the target system: create the onecard user if the image lacks it, then",
            "  systemctl daemon-reload && systemctl enable --now onecard-edge",
        ]
    lines = [f"onecard-edge installed for site {bundle.site}."]
    if not options.start:
        lines.append("Not started (--no-start): systemctl start onecard-edge")
    lines += [
        "Check it:",
        "  systemctl status onecard-edge      # active (running)",
        "  journalctl -u onecard-edge -f      # or: onecard-edge logs -f",
        "  onecard-edge status                # terminals online, outbox, versions",
        f"The bundle holds the site's password: delete it now (shred -u {bundle.path}).",
    ]
    return lines


def unsynced_records(root: Path) -> int | None:
    """Records HQ has not acknowledged, from the daemon's last status; None if unknown."""
    status = root / STATE / "status.json"
    try:
        snapshot = msgspec.json.decode(status.read_bytes())
        return int(snapshot["outbox_depth"])
    except (OSError, msgspec.DecodeError, KeyError, TypeError, ValueError):
        return None


def uninstall(tree: Tree, *, purge: bool, force: bool = False) -> None:
    """Stop and remove the service, udev rule and venv; with ``purge`` also the configuration,
    database and logs. Refuses to purge records HQ does not have yet unless ``force``."""
    system = tree.system
    if purge and not force and tree.path(STATE / "edge.db").exists():
        pending = unsynced_records(tree.root)
        if pending is None or pending > 0:
            what = "an unknown number of" if pending is None else str(pending)
            raise InstallError(
                f"{what} records have not reached HQ yet and --purge would delete them. "
                "Let the site sync (onecard-edge status shows outbox 0), back up "
                f"{tree.path(STATE)}, or pass --force"
            )
    running = system.systemd_running()
    # Without a running systemd (a chroot, or --root), disable only removes the link.
    now = ["--now"] if running else []
    system.run(["systemctl", "disable", *now, UPDATER_TRIGGER, UPDATER_UNITS[0], UNIT], check=False)
    for unit in (UNIT, *UPDATER_UNITS):
        tree.remove(UNIT_DIR / f"{WANTED_BY}.wants" / unit)
        tree.remove(UNIT_DIR / unit)
    tree.remove(UDEV_DIR / UDEV_RULE)
    link = tree.path(BIN_LINK)
    ours = {Path(f"/{VENV}/bin/onecard-edge"), Path(f"/{LEGACY_VENV}/bin/onecard-edge")}
    if link.is_symlink() and link.readlink() in ours:
        tree.remove(BIN_LINK)
    if running:
        system.run(["systemctl", "daemon-reload"], check=False)
        system.run(["udevadm", "control", "--reload"], check=False)
    for rel in (CURRENT, RELEASES, LEGACY_VENV):
        tree.remove(rel)
    with contextlib.suppress(OSError):
        tree.path(OPT).rmdir()  # only if empty: someone may keep other things there
    if purge:
        for rel in (ETC, STATE, LOGS):
            tree.remove(rel)
        if system.live:
            system.echo(f"user {USER} kept (files elsewhere may belong to it): userdel {USER}")
    else:
        system.echo(
            f"kept {tree.path(ETC)} (configuration, password) and {tree.path(STATE)} "
            "(the site database); uninstall --purge removes them"
        )
