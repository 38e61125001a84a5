"""The edge's configuration: ``/etc/onecard/edge.toml``, overridable by environment variables.

Every key is documented in ``docs/edge-config.md``. Unknown keys are errors (a misspelt key
silently ignored is how a site ends up with the wrong port). An environment variable
``ONECARD_EDGE_<SECTION>_<KEY>`` (or ``ONECARD_EDGE_<KEY>`` for top-level keys) overrides the
file, e.g. ``ONECARD_EDGE_TERMINALS_LISTEN=0.0.0.0:7701``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from protocol.topics import is_valid_site_id

DEFAULT_PATH = Path("/etc/onecard/edge.toml")
ENV_PREFIX = "ONECARD_EDGE_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


class TerminalsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[terminals]``: where terminals reach the edge."""

    listen: str = "0.0.0.0:7700"
    serial: list[str] = []
    heartbeat_s: int = 10


class MqttConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[mqtt]``: how the edge reaches HQ's broker. Absent: the site runs standalone."""

    url: str = ""  # mqtts://HOST:8883 (TLS) or mqtt://HOST:1883 (tests, loopback only)
    username: str = ""  # defaults to the site id
    password_file: Path | None = None
    ca_file: Path | None = None
    keepalive_s: int = 30
    #: No ack or feed for this long (while connected) counts as offline for the policy.
    offline_after_s: int = 60


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[log]``."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    #: Also append JSON lines here (for machines without journald; read by `onecard-edge logs`).
    file: Path | None = None


class UpgradeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[upgrade]``: remote upgrades (docs/upgrade.md). No ``trusted_keys``: refused."""

    #: Release public keys (64 hex digits each, from ``onecard-central release keygen``).
    trusted_keys: list[str] = []
    #: The install root holding ``opt/onecard/releases`` and ``current`` (tests: a temp dir).
    root: Path = Path("/")
    #: The new version must stay READY this long before the release is committed.
    healthy_for_s: int = 30
    #: …and must get there within this long after the restart, else it is rolled back.
    health_timeout_s: int = 180
    #: Restarts of the new version within the health gate that count as a crash loop.
    max_restarts: int = 2
    #: How long the switch waits for terminals to go idle before it goes ahead anyway.
    idle_timeout_s: int = 30
    #: What the updater runs to restart the daemon after switching ``current``.
    restart_command: list[str] = msgspec.field(
        default_factory=lambda: ["systemctl", "restart", "onecard-edge.service"]
    )

    def __post_init__(self) -> None:
        for key in self.trusted_keys:
            if len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key):
                raise ValueError(f"upgrade.trusted_keys: {key!r} is not 64 hex digits")
        if not 1 <= self.healthy_for_s <= self.health_timeout_s <= 3600:
            raise ValueError("upgrade: need 1 <= healthy_for_s <= health_timeout_s <= 3600")
        if not self.restart_command:
            raise ValueError("upgrade.restart_command must not be empty")


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[store]``: the site database's disk (see edge_agent/diskguard.py)."""

    #: Below this much free space (MiB) new money is refused (``disk_full``) while doors and
    #: clocks go on in the reserve; an alert is raised; service resumes by itself.
    reserve_mb: int = 64


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[metrics]``: the Prometheus ``/metrics`` listener (docs/monitoring.md)."""

    #: HOST:PORT, loopback by default; "" disables it.
    listen: str = "127.0.0.1:9310"


class DeskConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[desk]``: the service desk's PC/SC reader and the daemon's local desk socket
    (docs/edge-config.md; ``onecard-edge desk …`` talks to the daemon through it)."""

    enabled: bool = False
    #: The daemon's Unix socket for ``onecard-edge desk`` (mode 0660: the daemon's group).
    socket: Path = Path("/run/onecard/desk.sock")
    #: The PC/SC reader to use ("": the first one pcscd lists).
    reader: str = ""
    #: Who desk operations are recorded as ("": the login user running the command).
    operator: str = ""
    #: The terminal id the desk's records carry.
    terminal_id: str = "DESK"
    #: An issue central has acked but its feed has not confirmed after this long is undone
    #: at this site (central refused it).
    confirm_grace_s: int = 120

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z0-9][A-Z0-9_-]{0,31}", self.terminal_id):
            raise ValueError(f"desk.terminal_id: {self.terminal_id!r} is not a terminal id")
        if not 1 <= self.confirm_grace_s <= 86_400:
            raise ValueError("desk.confirm_grace_s must be 1..86400")


class OsdpReaderConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One ``[[osdp.readers]]`` entry: an OSDP door reader on an RS-485 bus."""

    #: The registered terminal (kind "door") whose decisions and records this reader gets.
    terminal: str
    #: The serial port of the bus (e.g. /dev/onecard-osdp0); readers may share a port.
    port: str
    baud: int = 9600
    #: The reader's OSDP address on the bus (0..126).
    address: int = 0
    #: The reader's Secure Channel Base Key: a file holding 32 hex digits (mode 0600).
    scbk_file: Path | None = None
    #: Run the reader without its key (provisioning only; logged loudly).
    install_mode: bool = False
    #: How long the relay stays on when access is granted (default: the door's open time).
    open_time_s: float | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z0-9][A-Z0-9_-]{0,31}", self.terminal):
            raise ValueError(f"osdp.readers.terminal: {self.terminal!r} is not a terminal id")
        if self.baud not in (9600, 19200, 38400, 57600, 115200, 230400):
            raise ValueError(f"osdp.readers.baud: {self.baud} is not an OSDP baud rate")
        if not 0 <= self.address <= 126:
            raise ValueError(f"osdp.readers.address: {self.address} is not 0..126")
        if self.scbk_file is None and not self.install_mode:
            raise ValueError(
                f"osdp reader {self.terminal}: scbk_file is required "
                "(or install_mode = true while provisioning it)"
            )
        if self.open_time_s is not None and not 0.5 <= self.open_time_s <= 25.5:
            raise ValueError("osdp.readers.open_time_s must be 0.5..25.5")


class OsdpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[osdp]``: OSDP door readers the edge drives as control panel (docs/edge-config.md)."""

    readers: list[OsdpReaderConfig] = []

    def __post_init__(self) -> None:
        bauds: dict[str, int] = {}
        seen: set[tuple[str, int]] = set()
        for reader in self.readers:
            if bauds.setdefault(reader.port, reader.baud) != reader.baud:
                raise ValueError(f"osdp: readers on {reader.port} must share one baud rate")
            if (reader.port, reader.address) in seen:
                raise ValueError(f"osdp: two readers at address {reader.address} on {reader.port}")
            seen.add((reader.port, reader.address))
        terminals = [reader.terminal for reader in self.readers]
        if len(set(terminals)) != len(terminals):
            raise ValueError("osdp: a terminal may have one reader only")


class EdgeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole file."""

    site: str
    data_dir: Path = Path("/var/lib/onecard")
    terminals: TerminalsConfig = msgspec.field(default_factory=TerminalsConfig)
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    upgrade: UpgradeConfig = msgspec.field(default_factory=UpgradeConfig)
    desk: DeskConfig = msgspec.field(default_factory=DeskConfig)
    osdp: OsdpConfig = msgspec.field(default_factory=OsdpConfig)

    @property
    def database(self) -> Path:
        """The site's SQLite database."""
        return self.data_dir / "edge.db"

    def listen_address(self) -> tuple[str, int] | None:
        """``terminals.listen`` as (host, port), or None when TCP is disabled."""
        if not self.terminals.listen:
            return None
        host, _, port = self.terminals.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - terminals are on the LAN

    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics.listen`` as (host, port), or None when the listener is disabled."""
        if not self.metrics.listen:
            return None
        host, _, port = self.metrics.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    sections = {
        "terminals": TerminalsConfig,
        "mqtt": MqttConfig,
        "log": LogConfig,
        "metrics": MetricsConfig,
        "upgrade": UpgradeConfig,
        "desk": DeskConfig,
        "store": StoreConfig,
    }
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if key.startswith(s + "_")), None)
        parsed: Any = value
        if section is None:
            out[key] = value
            continue
        field = key[len(section) + 1 :]
        if field in ("serial", "trusted_keys"):
            parsed = [v for v in value.split(",") if v]
        elif field == "restart_command":
            parsed = value.split()
        elif field == "enabled":
            parsed = value.strip().lower() in {"1", "true", "yes", "on"}
        elif field.endswith(("_s", "_mb")):
            parsed = int(value) if value.isdigit() else value
        out.setdefault(section, {})[field] = parsed
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> EdgeConfig:
    """Read ``path`` (default ``/etc/onecard/edge.toml``), apply env overrides, validate."""
    path = path or DEFAULT_PATH
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create it, or pass --config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    raw = _merge(raw, _env_overrides(env))
    try:
        config = msgspec.convert(raw, EdgeConfig, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not is_valid_site_id(config.site):
        raise ConfigError(
            f"{path}: site {config.site!r} is not a valid site id "
            "(2-32 of A-Z, 0-9 and '-', e.g. SZ-FUTIAN)"
        )
    try:
        config.listen_address()
    except ValueError:
        raise ConfigError(f"{path}: terminals.listen must be HOST:PORT") from None
    try:
        config.metrics_address()
    except ValueError:
        raise ConfigError(f'{path}: metrics.listen must be HOST:PORT or ""') from None
    if not 0 <= config.store.reserve_mb <= 1 << 20:
        raise ConfigError(f"{path}: store.reserve_mb must be 0..1048576 (MiB)")
    if not 1 <= config.terminals.heartbeat_s <= 600:
        raise ConfigError(f"{path}: terminals.heartbeat_s must be 1..600")
    return config


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError
