"""structlog set-up: JSON lines under systemd (journald keeps them), a console on a TTY.

Shared processors add the level, an ISO UTC timestamp and context variables; a redaction
step masks card UIDs and drops secrets before any renderer sees them.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_SECRET_KEYS = frozenset({"key", "key_hex", "password", "secret", "token", "mac"})
_UID_KEYS = frozenset({"uid", "card", "card_uid"})
_HEX_UID = re.compile(r"^[0-9A-F]{8,20}$")


def mask_uid(uid: str) -> str:
    """Show enough of a card UID to tell cards apart, not enough to clone one."""
    if len(uid) <= 6:
        return "***"
    return f"{uid[:2]}***{uid[-4:]}"


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Mask card UIDs and remove secrets (runs before every renderer)."""
    for key in list(event):
        if key in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif key in _UID_KEYS and isinstance(event[key], str) and _HEX_UID.match(event[key]):
            event[key] = mask_uid(event[key])
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger once per process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if use_json
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
