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


class EdgeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole file."""

    site: str
    data_dir: Path = Path("/var/lib/onecard")
    terminals: TerminalsConfig = msgspec.field(default_factory=TerminalsConfig)
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

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


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    sections = {"terminals": TerminalsConfig, "mqtt": MqttConfig, "log": LogConfig}
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
        if field == "serial":
            parsed = [v for v in value.split(",") if v]
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
    if not 1 <= config.terminals.heartbeat_s <= 600:
        raise ConfigError(f"{path}: terminals.heartbeat_s must be 1..600")
    return config


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError
