"""The libosdp side of OSDP door readers: serial line, refresh thread, codecs, keys.

Pieces :mod:`edge_agent.adapters.osdp_panel` is built from, and ``onecard-edge osdp
provision`` uses directly: :class:`SerialChannel` (a tty as libosdp's non-blocking channel),
:class:`Refresher` (libosdp's refresh loop on a thread of its own, woken by incoming bytes
and by queued commands rather than a fixed sleep, so a command leaves at once), the command
and card-data codecs (libosdp's binding speaks dicts), SCBK files, and :func:`provision`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import osdp  # type: ignore[import-untyped]
import osdp_sys  # type: ignore[import-not-found]
import structlog

if TYPE_CHECKING:
    from edge_agent.config import OsdpReaderConfig

log = structlog.get_logger("edge.osdp")

#: The refresh thread runs at least this often (libosdp: at least every 50 ms).
REFRESH_S = 0.01
#: After a command is queued, refresh this often, this many times (see Refresher._loop).
BRISK_S = 0.0005
BRISK_REFRESHES = 20
#: A failed serial port is reopened at most this often.
REOPEN_S = 2.0
#: OSDP timers are one byte of 100 ms in libosdp 3.2's Python binding: at most 25.5 s.
MAX_TIMER_DS = 255

_BAUDS = {
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
    230400: termios.B230400,
}
#: libosdp notification types (osdp_notification_type; the event dict's "type").
NOTE_COMMAND, NOTE_SC, NOTE_PD = 0, 1, 2
# Output control code 5: temporary ON, back to the permanent state when the timer ends.
_OUTPUT_PULSE = 5
# LED temporary control code 2: set the temporary state and start its timer now.
_LED_TEMPORARY = 2
# Buzzer control code 2: the reader's default tone.
_BUZZER_TONE = 2


class OsdpError(Exception):
    """A reader cannot be run as configured (bad key file, port unusable, …)."""


# -- the serial line ---------------------------------------------------------------------------


class SerialChannel(osdp.Channel):  # type: ignore[misc]
    """A tty (RS-485 adapter, or a pty in tests) as libosdp's non-blocking channel.

    Opened exclusively (an ``flock`` and ``TIOCEXCL``), so a second program on the same
    bus — a stray ``provision`` while the daemon runs — fails to open instead of garbling
    both. A port that fails (the USB adapter pulled) is closed and reopened at most every
    :data:`REOPEN_S`.
    """

    def __init__(self, path: str, baud: int = 9600) -> None:
        super().__init__()
        self.path = path
        self.baud = baud
        self.fd: int | None = None
        self._next_open = 0.0
        self._complained = False
        self.reopen()

    def reopen(self) -> bool:
        """(Re)open the port; False (logged) if it is not there yet."""
        self.close()
        self._next_open = time.monotonic() + REOPEN_S
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            self._complain("osdp.port_unavailable", exc)
            return False
        try:
            # TIOCEXCL keeps other programs out (root excepted); the lock keeps a second
            # onecard-edge out, root or not.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.ioctl(fd, termios.TIOCEXCL)
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[4] = attrs[5] = _BAUDS.get(self.baud, termios.B9600)
            attrs[2] |= termios.CLOCAL | termios.CREAD
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except OSError as exc:
            os.close(fd)
            self._complain("osdp.port_unusable", exc)
            return False
        if self._complained:
            log.info("osdp.port_open", port=self.path)
            self._complained = False
        self.fd = fd
        return True

    def _complain(self, what: str, exc: OSError) -> None:
        # Once per outage at warning level: the port is retried every REOPEN_S.
        (log.debug if self._complained else log.warning)(what, port=self.path, error=str(exc))
        self._complained = True

    def close(self) -> None:
        """Close the port (idempotent)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def _usable(self) -> bool:
        if self.fd is None and time.monotonic() >= self._next_open:
            self.reopen()
        return self.fd is not None

    def _failed(self, exc: OSError) -> None:
        self._complain("osdp.port_failed", exc)
        self.close()
        self._next_open = time.monotonic() + REOPEN_S

    def read(self, max_bytes: int) -> bytes:
        """Whatever arrived, up to ``max_bytes`` (b"" if nothing: never blocks)."""
        if not self._usable():
            return b""
        assert self.fd is not None  # noqa: S101 - _usable() says so
        try:
            return os.read(self.fd, max_bytes)
        except BlockingIOError:
            return b""
        except OSError as exc:
            self._failed(exc)
            return b""

    def write(self, buf: bytes) -> int:
        """Queue all of ``buf`` or none of it (0: try again on the next refresh)."""
        if not self._usable():
            return 0
        assert self.fd is not None  # noqa: S101
        try:
            return os.write(self.fd, buf)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._failed(exc)
            return -1

    def flush(self) -> None:
        """Drop what is in the tty's buffers (libosdp does this after a framing error)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                termios.tcflush(self.fd, termios.TCIOFLUSH)


# -- configuration → libosdp --------------------------------------------------------------------


def read_scbk(path: Path) -> bytes:
    """A reader's Secure Channel Base Key: 32 hex digits (whitespace ignored)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise OsdpError(f"{path}: cannot read the SCBK: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise OsdpError(f"{path}: the SCBK must be 32 hex digits") from None
    if len(key) != 16:
        raise OsdpError(f"{path}: the SCBK must be 16 bytes (32 hex digits), not {len(key)}")
    return key


def write_scbk(path: Path, key: bytes) -> Path:
    """Write a new key file beside ``path`` (mode 0600) and return it; the caller renames it
    into place once the reader took the key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key.hex() + "\n")
        out.flush()
        os.fsync(out.fileno())
    return tmp


def new_scbk() -> bytes:
    """A fresh random SCBK."""
    return secrets.token_bytes(16)


def pd_info(
    reader: OsdpReaderConfig, channel: SerialChannel, scbk: bytes | None, flags: list[int]
) -> dict[str, Any]:
    """libosdp's PD description for one reader (a dict, as its binding wants)."""
    info = osdp.PDInfo(reader.address, channel, scbk=scbk, name=reader.terminal, flags=flags)
    result: dict[str, Any] = info.get()
    return result


def card_uid(event: dict[str, Any]) -> str | None:
    """The card UID (upper-case hex, 4-10 bytes) in a libosdp card-read event, or None.

    Raw data of whole bytes is the UID as the reader read it; 34-bit Wiegand carries a
    32-bit UID between its two parity bits. Anything else (26-bit Wiegand holds no UID) is
    not a card this site can decide.
    """
    data = event.get("data")
    bits = event.get("length")
    if not isinstance(data, bytes) or not isinstance(bits, int) or bits <= 0:
        return None
    if event.get("format") == osdp.CardFormat.Wiegand and bits == 34:
        value = int.from_bytes(data, "big") >> (len(data) * 8 - bits)
        raw = ((value >> 1) & 0xFFFFFFFF).to_bytes(4, "big")
    elif bits % 8 == 0 and len(data) >= bits // 8:
        raw = data[: bits // 8]
    else:
        return None
    return raw.hex().upper() if 4 <= len(raw) <= 10 else None


def grant_commands(open_ms: int) -> list[dict[str, Any]]:
    """Open the door: relay first (what the cardholder waits for), then LED and beep."""
    ds = max(1, min(MAX_TIMER_DS, open_ms // 100))
    return [
        {
            "command": osdp.Command.Output,
            "output_no": 0,
            "control_code": _OUTPUT_PULSE,
            "timer_count": ds,
        },
        _led(osdp.CommandLEDColor.Green, on=ds, off=0, timer=ds),
        _beep(on=1, off=0, times=1),
    ]


def deny_commands() -> list[dict[str, Any]]:
    """Refused: red LED flashing for 2 s and three short beeps; the relay is not touched."""
    return [_led(osdp.CommandLEDColor.Red, on=2, off=2, timer=20), _beep(on=1, off=1, times=3)]


def _led(color: int, *, on: int, off: int, timer: int) -> dict[str, Any]:
    return {
        "command": osdp.Command.LED,
        "reader": 0,
        "led_number": 0,
        "temporary": True,
        "control_code": _LED_TEMPORARY,
        "on_color": color,
        "off_color": osdp.CommandLEDColor.Black,
        "on_count": on,
        "off_count": off,
        "timer_count": timer,
    }


def _beep(*, on: int, off: int, times: int) -> dict[str, Any]:
    return {
        "command": osdp.Command.Buzzer,
        "reader": 0,
        "control_code": _BUZZER_TONE,
        "on_count": on,
        "off_count": off,
        "rep_count": times,
    }


# -- libosdp's thread ----------------------------------------------------------------------------


class Refresher:
    """Runs ``refresh()`` of one libosdp context on a thread of its own, under a lock that
    every other call into the context takes too (libosdp is not thread-safe)."""

    def __init__(self, ctx: Any, channel: SerialChannel, name: str) -> None:
        self.ctx = ctx
        self.channel = channel
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._kick_r, self._kick_w = os.pipe()
        os.set_blocking(self._kick_r, False)
        os.set_blocking(self._kick_w, False)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Start refreshing."""
        self._thread.start()

    def kick(self) -> None:
        """Refresh now (a command was queued): it goes out without waiting for the tick."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._kick_w, b"!")

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call into the libosdp context from another thread."""
        with self.lock:
            return fn(*args)

    def _loop(self) -> None:
        brisk = 0
        while not self._stop.is_set():
            with self.lock:
                self.ctx.refresh()
            fds = [self._kick_r]
            if self.channel.fd is not None:
                fds.append(self.channel.fd)
            try:
                wait = BRISK_S if brisk else REFRESH_S
                ready, _, _ = select.select(fds, [], [], wait)
            except (OSError, ValueError):  # the port closed under us: reopened on refresh
                time.sleep(REFRESH_S)
                continue
            brisk = max(0, brisk - 1)
            if self._kick_r in ready:
                # libosdp takes a queued command into its state machine on one refresh and
                # sends it on a later one: refresh briskly for a moment after a kick.
                brisk = BRISK_REFRESHES
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._kick_r, 512)

    def stop(self) -> None:
        """Stop refreshing (blocks until the thread ended, at most 5 s)."""
        self._stop.set()
        self.kick()
        self._thread.join(timeout=5)
        os.close(self._kick_r)
        os.close(self._kick_w)


# -- provisioning ----------------------------------------------------------------------------


def provision(reader: OsdpReaderConfig, *, timeout_s: float = 30.0) -> Path:
    """Give a reader in *its* install mode a fresh SCBK; return the key file written.

    The one place the edge lets libosdp use SCBK-D: a control panel without
    ``ENFORCE_SECURE`` whose key the reader does not know falls back to SCBK-D and sends the
    reader our key (KEYSET), then reconnects with it. Run by hand (``onecard-edge osdp
    provision``) with the daemon stopped, never by the daemon. Refuses to replace an
    existing key file: re-keying a provisioned reader is a deliberate reset of that reader.
    """
    if not reader.install_mode:
        raise OsdpError(f"{reader.terminal}: set install_mode = true for this reader first")
    if reader.scbk_file is None:
        raise OsdpError(f"{reader.terminal}: set scbk_file (where the new key is kept)")
    if reader.scbk_file.exists():
        raise OsdpError(
            f"{reader.scbk_file} exists: this reader was provisioned already (to re-key it, "
            "reset the reader to its install mode and move the old key file away first)"
        )
    key = new_scbk()
    tmp = write_scbk(reader.scbk_file, key)
    channel = SerialChannel(reader.port, reader.baud)
    if channel.fd is None:
        tmp.unlink()
        raise OsdpError(f"{reader.port}: cannot open the port (is onecard-edge running?)")
    done = threading.Event()
    outcome: dict[str, bool] = {}

    def on_event(_index: int, event: dict[str, Any]) -> int:
        if event.get("event") == osdp.Event.Notification:
            note, arg0, arg1 = event.get("type"), event.get("arg0"), event.get("arg1")
            if note == NOTE_COMMAND and arg0 == osdp.Command.Keyset:
                outcome["keyset"] = arg1 == 1
            elif note == NOTE_SC and arg0 == 1 and arg1 == 0 and outcome.get("keyset"):
                done.set()  # secure channel up again, on the new key (arg1 1: SCBK-D)
        return 0

    osdp_sys.set_loglevel(osdp.LogLevel.Warning)
    ctx = osdp_sys.ControlPanel([pd_info(reader, channel, key, [osdp.LibFlag.EnableNotification])])
    ctx.set_event_callback(on_event)
    refresher = Refresher(ctx, channel, "osdp-provision")
    refresher.start()
    try:
        ok = done.wait(timeout_s)
    finally:
        refresher.stop()
        del ctx
        channel.close()
    if not ok:
        tmp.unlink()
        raise OsdpError(
            f"{reader.terminal}: the reader did not take a key within {timeout_s:.0f} s (is it "
            f"in its install mode, at address {reader.address}, {reader.baud} baud?)"
        )
    tmp.replace(reader.scbk_file)
    return reader.scbk_file
