"""The edge's configuration: ``/etc/onecard/edge.toml``, overridable by environment variables.

Every key is documented in ``docs/edge-config.md``. Unknown keys are errors (a misspelt key
silently ignored is how a site ends up with the wrong port). An environment variable
``ONECARD_EDGE_<SECTION>_<KEY>`` (or ``ONECARD_EDGE_<KEY>`` for top-level keys) overrides the
file, e.g. ``ONECARD_EDGE_TERMINALS_LISTEN=0.0.0.0:7701``.
"""

from __future__ import annotations

import os
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


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[metrics]``: the Prometheus ``/metrics`` listener (docs/monitoring.md)."""

    #: HOST:PORT, loopback by default; "" disables it.
    listen: str = "127.0.0.1:9310"


class EdgeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole file."""

    site: str
    data_dir: Path = Path("/var/lib/onecard")
    terminals: TerminalsConfig = msgspec.field(default_factory=TerminalsConfig)
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    upgrade: UpgradeConfig = msgspec.field(default_factory=UpgradeConfig)

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
        elif field.endswith("_s"):
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
    if not 1 <= config.terminals.heartbeat_s <= 600:
        raise ConfigError(f"{path}: terminals.heartbeat_s must be 1..600")
    return config


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError
