"""structlog set-up: JSON lines under systemd (journald keeps them), a console on a TTY.

Shared processors add the level, an ISO UTC timestamp, context variables and the site; a
redaction step masks card UIDs and drops secrets, at any nesting level, before any renderer
sees them. Every JSON line carries the same top-level keys for the ids a technician greps
for: ``site`` (always, once known), ``terminal`` and ``record_id`` (when bound, e.g. with
``structlog.contextvars.bind_contextvars(terminal=..., record_id=...)``).

Under systemd (stderr is the journal stream), lines go to journald's native socket instead
of stderr, so each entry also has real journal fields — ``PRIORITY`` from the level, and
``SITE``, ``TERMINAL``, ``RECORD_ID``, ``EVENT`` — and ``journalctl -u onecard-edge
TERMINAL=POS-02 -p warning`` works. ``[log] file`` appends the same JSON lines to a file
for machines without journald. The second half of this module reads them back for
``onecard-edge logs``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog

# --- redaction ------------------------------------------------------------------------------

REDACTED = "[redacted]"
#: Keys whose values never reach a log, whatever their type; also any key ending in
#: ``_<one of these>`` (``terminal_key``, ``mqtt_password``, ``session_token``).
SECRET_KEYS = frozenset(
    {
        "key",
        "keys",
        "key_hex",
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "mac",
        "hmac",
        "nonce",
        "psk",
        "private_key",
        "credential",
        "credentials",
        "authorization",
        "cookie",
    }
)
_SECRET_SUFFIXES = tuple(
    f"_{name}" for name in ("key", "key_hex", "password", "secret", "token", "mac", "nonce", "psk")
)
#: Keys holding card UIDs: shown as their last 4 hex digits only.
UID_KEYS = frozenset({"uid", "uids", "card", "cards", "card_uid"})
_HEX_UID = re.compile(r"^[0-9A-Fa-f]{8,20}$")
# ``password=abc`` / ``token: "abc"`` inside free text (an error message, a URL's query).
_INLINE_SECRET = re.compile(
    r"(?i)\b(password|passwd|secret|token|key_hex|psk|api_key)(\s*[=:]\s*)"
    r"(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"
)
# ``mqtts://user:password@host``
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]+@", re.IGNORECASE)
_MAX_DEPTH = 16


def mask_uid(uid: str) -> str:
    """Show the last 4 hex digits of a card UID — enough to tell cards apart on a call,
    not enough to clone one: ``04A1B2C3D4E5F6`` → ``**********E5F6``."""
    return "*" * (len(uid) - 4) + uid[-4:] if len(uid) > 4 else "*" * len(uid)


def is_secret_key(name: str) -> bool:
    """Whether a field called ``name`` holds a secret (case and ``-``/``_`` insensitive)."""
    norm = name.lower().replace("-", "_")
    return norm in SECRET_KEYS or norm.endswith(_SECRET_SUFFIXES)


def scrub_text(text: str) -> str:
    """``text`` with inline ``password=…``-style values and URL passwords removed."""
    if ":" not in text and "=" not in text:
        return text
    text = _INLINE_SECRET.sub(rf"\1\2{REDACTED}", text)
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)


def _mask_uids(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return mask_uid(value) if _HEX_UID.match(value) else scrub_text(value)
    if isinstance(value, list | tuple) and depth <= _MAX_DEPTH:
        return [_mask_uids(v, depth + 1) for v in value]
    return _clean(value, depth)


def _clean(value: Any, depth: int) -> Any:
    """A redacted copy of ``value`` (the caller's own objects are never modified)."""
    if depth > _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, msgspec.Struct):
        try:
            value = msgspec.to_builtins(value)
        except (TypeError, ValueError):
            return scrub_text(repr(value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {k: _clean_item(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v, depth + 1) for v in value]
    return value


def _clean_item(key: str, value: Any, depth: int) -> Any:
    if is_secret_key(key):
        return REDACTED
    if key.lower() in UID_KEYS:
        return _mask_uids(value, depth)
    return _clean(value, depth)


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Drop secrets and mask card UIDs at any depth (a processor; runs before every renderer)."""
    for key in list(event):
        if key != "exc_info":
            event[key] = _clean_item(key, event[key], 0)
    return event


# --- output ---------------------------------------------------------------------------------

#: Top-level keys every JSON line keeps in this order, and the journal fields they become.
LEAD_KEYS = ("timestamp", "level", "event", "site", "terminal", "record_id")
JOURNAL_FIELDS = {
    "site": "SITE",
    "terminal": "TERMINAL",
    "record_id": "RECORD_ID",
    "event": "EVENT",
}
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "exception": 3, "critical": 2}
_json = structlog.processors.JSONRenderer(ensure_ascii=False)


def render_json(event: Mapping[str, Any]) -> str:
    """One JSON line, the stable keys first."""
    lead = {k: event[k] for k in LEAD_KEYS if k in event}
    data = structlog.processors.format_exc_info(None, "", {**lead, **event})
    return str(_json(None, "", data))


def journal_datagram(fields: Mapping[str, str]) -> bytes:
    """``fields`` in journald's native protocol (``systemd.journal-fields(7)``): ``NAME=value``
    lines, and a length-prefixed form for values containing a newline."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def journal_fields(event: Mapping[str, Any], message: str, ident: str) -> dict[str, str]:
    """The journal entry for one event: MESSAGE (the rendered line), PRIORITY and our ids."""
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(_PRIORITY.get(str(event.get("level", "info")), 6)),
        "SYSLOG_IDENTIFIER": ident,
    }
    for key, field in JOURNAL_FIELDS.items():
        if event.get(key) is not None:
            fields[field] = str(event[key])
    return fields


def stderr_is_journal(stream: IO[str]) -> bool:
    """Whether systemd connected ``stream`` to the journal (``$JOURNAL_STREAM`` is its
    ``device:inode``), i.e. we run as a service whose output journald keeps."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected or not JOURNAL_SOCKET.exists():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class _LogFile:
    """Appends lines to a file; reopens it when logrotate moved it away (like ``tail -F``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[str] | None = None
        self._ino = -1
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._f = os.fdopen(fd, "a", encoding="utf-8")
        self._ino = os.fstat(fd).st_ino

    def _rotated(self) -> bool:
        try:
            return self.path.stat().st_ino != self._ino
        except FileNotFoundError:
            return True

    def write(self, line: str) -> None:
        if self._f is None or self._rotated():
            if self._f is not None:
                self._f.close()
            self._open()
        if self._f is not None:
            self._f.write(line + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class LogOutput:
    """structlog's logger: writes each event to stderr — or journald's socket under systemd —
    and, as JSON, to the optional log file. Logging never raises into the caller: a full disk
    or a stopped journald loses a line, not the daemon."""

    def __init__(
        self,
        *,
        stream: IO[str],
        use_json: bool,
        journal: bool = False,
        file: Path | None = None,
        ident: str = "onecard",
    ) -> None:
        self.stream = stream
        self.use_json = use_json
        self.ident = ident
        self._console = structlog.dev.ConsoleRenderer(colors=not journal and _isatty(stream))
        self._journal: socket.socket | None = None
        self._file: _LogFile | None = None
        self._lock = threading.Lock()
        if journal:
            self._journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        if file is not None:
            try:
                self._file = _LogFile(file)
            except OSError as exc:
                stream.write(f"onecard: cannot write log file {file}: {exc}; logging to stderr\n")

    def close(self) -> None:
        """Release the journal socket and the log file (on reconfiguration)."""
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            if self._file is not None:
                self._file.close()
                self._file = None

    def msg(self, record: dict[str, Any]) -> None:
        """Write one event (structlog calls this under every level name)."""
        line = render_json(record) if self.use_json or self._file else ""
        text = line if self.use_json else str(self._console(None, "", dict(record)))
        with self._lock:
            if not self._send_journal(record, text):
                self._write(self.stream, text)
            if self._file is not None:
                with contextlib.suppress(OSError):  # the journal or stderr still has it
                    self._file.write(line)

    log = debug = info = warning = warn = error = err = critical = fatal = exception = msg

    def _send_journal(self, record: Mapping[str, Any], text: str) -> bool:
        if self._journal is None:
            return False
        data = journal_datagram(journal_fields(record, text, self.ident))
        try:
            self._journal.sendto(data, str(JOURNAL_SOCKET))
        except OSError:
            return False  # too big for a datagram, or journald restarting: stderr has it
        return True

    @staticmethod
    def _write(stream: IO[str], text: str) -> None:
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


_output: LogOutput | None = None


def _to_record(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    # The last processor: LogOutput.msg(record=event) renders it once per destination.
    return {"record": event}


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    site: str | None = None,
    file: Path | None = None,
    ident: str | None = None,
) -> None:
    """Configure structlog once per process.

    ``fmt``: ``json``, ``console``, or ``auto`` (JSON unless stderr is a TTY). ``site`` is
    added to every line; ``file`` also receives every line as JSON. ``ident`` is the journal's
    ``SYSLOG_IDENTIFIER`` (default: the program's name).
    """
    stream = sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if site is not None:
        processors.append(_add_site(site))
    from edge_agent.logtail import TAP  # noqa: PLC0415 - logtail builds on this module

    # The tap (remote tail's ring buffer) sees events only once they are redacted.
    processors += [redact, TAP, _to_record]
    global _output  # noqa: PLW0603 - one output per process, replaced on reconfiguration
    if _output is not None:
        _output.close()
    output = _output = LogOutput(
        stream=stream,
        use_json=use_json,
        journal=stderr_is_journal(stream),
        file=file,
        ident=ident or Path(sys.argv[0]).name or "onecard",
    )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *_: output,
        cache_logger_on_first_use=False,
    )
    TAP.configure(logging.getLevelNamesMapping()[level.upper()])


def _add_site(site: str) -> Any:
    def add_site(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("site", site)
        return event

    return add_site


# --- reading logs back (onecard-edge logs) ----------------------------------------------------

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_LEVEL_ALIASES = {"warn": "warning", "err": "error", "exception": "error", "fatal": "critical"}
_RELATIVE = re.compile(r"^(\d{1,9})\s*(s|sec|secs|m|min|mins|h|hour|hours|d|day|days)$", re.ASCII)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class LogQueryError(ValueError):
    """A ``logs`` option cannot be understood; the message says what is accepted."""


def parse_level(text: str) -> int:
    """``debug`` … ``critical`` (also ``warn``, ``err``) as a stdlib level number."""
    name = _LEVEL_ALIASES.get(text.lower(), text.lower())
    if name not in LEVELS:
        raise LogQueryError(f"level {text!r}: use one of {', '.join(LEVELS)}")
    return LEVELS[name]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``10m``, ``2h``, ``1d``, ``30s`` (ago), or a date/time (local time unless it has an
    offset: ``2026-11-23 15:00``, ``2026-11-23T07:00:00Z``), as an aware UTC datetime."""
    now = now or datetime.now(UTC)
    spec = text.strip().lower()
    match = _RELATIVE.match(spec)
    if match:
        try:
            return now - timedelta(seconds=int(match[1]) * _UNIT_S[match[2][0]])
        except (OverflowError, ValueError):
            raise LogQueryError(f"--since {text!r}: that is further back than any log") from None
    if spec in {"today", "yesterday"}:
        midnight = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        return (midnight - timedelta(days=spec == "yesterday")).astimezone(UTC)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise LogQueryError(
            f"--since {text!r}: use 30s, 10m, 2h, 1d, today, or a time like 2026-11-23 15:00"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a technician's clock time is local
    return when.astimezone(UTC)


def select(line: str, min_level: int, since: datetime | None = None) -> dict[str, Any] | str | None:
    """One log line if it passes the filters: our JSON lines as a dict (checked for level
    and time), anything else (a traceback, systemd's own messages) as text, always shown."""
    line = line.rstrip("\n")
    if not line.strip():
        return None
    if not line.startswith("{"):
        return line
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    if not isinstance(entry, dict) or "event" not in entry:
        return line
    level = _LEVEL_ALIASES.get(str(entry.get("level")), str(entry.get("level")))
    if LEVELS.get(level, LEVELS["info"]) < min_level:
        return None
    if since is not None and isinstance(entry.get("timestamp"), str):
        try:
            stamp = datetime.fromisoformat(entry["timestamp"])
        except ValueError:
            return entry
        if stamp.tzinfo is not None and stamp < since:
            return None
    return entry


def format_entry(entry: dict[str, Any], *, colors: bool = False) -> str:
    """A JSON log line as the console renderer shows it, the time in local time."""
    shown = dict(entry)
    stamp = shown.get("timestamp")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            shown["timestamp"] = f"{datetime.fromisoformat(stamp).astimezone():%Y-%m-%d %H:%M:%S}"
    return str(structlog.dev.ConsoleRenderer(colors=colors)(None, "", shown))


def journal_available() -> bool:
    """Whether this machine runs journald (and journalctl can read it)."""
    return Path("/run/systemd/journal").is_dir() and shutil.which("journalctl") is not None


def journalctl_argv(unit: str, since: datetime | None, *, follow: bool) -> list[str]:
    """The journalctl command printing ``unit``'s messages, one per line."""
    argv = ["journalctl", "--unit", unit, "--output", "cat", "--no-pager"]
    if since is not None:
        argv += ["--since", f"@{int(since.timestamp())}"]
    if follow:
        argv.append("--follow")
    return argv


def read_journal(unit: str, since: datetime | None, *, follow: bool) -> Iterator[str]:
    """``unit``'s journal lines (following new ones with ``follow``)."""
    proc = subprocess.Popen(  # noqa: S603 - a fixed program, our own arguments
        journalctl_argv(unit, since, follow=follow),
        stdout=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    stdout = proc.stdout
    if stdout is None:  # pragma: no cover - stdout=PIPE always gives one
        return
    try:
        yield from stdout
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        stdout.close()


def read_file(path: Path, *, follow: bool, poll_s: float = 0.5) -> Iterator[str]:
    """The lines of a log file; with ``follow``, then the lines appended to it, across
    logrotate's rename or truncation (like ``tail -F``)."""
    f = path.open("rb")
    pending = b""
    try:
        while True:
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    yield pending.decode("utf-8", "replace")
                    pending = b""
                continue
            if not follow:
                if pending:
                    yield pending.decode("utf-8", "replace")
                return
            time.sleep(poll_s)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # between logrotate's rename and the daemon's reopen
            if st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell():
                # Rotated: finish the old file (the daemon may have written to it since we
                # hit its end), then start at the beginning of the new one.
                for rest in f:
                    pending += rest
                    if pending.endswith(b"\n"):
                        yield pending.decode("utf-8", "replace")
                        pending = b""
                f.close()
                f = path.open("rb")
                pending = b""
    finally:
        f.close()
