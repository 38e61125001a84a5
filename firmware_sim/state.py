"""What a simulated terminal keeps in its flash: record counter, buffered records, lists.

Real terminals persist their record number so a retransmission after a power cut is
recognised by the edge; the simulator does the same with a JSON file written atomically
(write, fsync, rename). Without a file the state lives in memory only.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

from protocol.terminal import BufferedRecord, Tap


class PendingRecharge(msgspec.Struct, kw_only=True):
    """A recharge whose money was taken but whose commit was not yet confirmed."""

    rec: int
    uid: str
    amount: int
    pay_ref: str
    paid: bool = False


class TerminalState(msgspec.Struct, kw_only=True):
    """The persisted part of a terminal."""

    next_rec: int = 1
    buffered: list[BufferedRecord] = []
    blacklist_version: int = 0
    blacklist: list[str] = []
    pending_recharges: list[PendingRecharge] = []
    #: A money TAP sent but not answered: resent (same rec) before any new one, so the
    #: terminal learns what the edge decided instead of guessing.
    pending_tap: Tap | None = None


class StateFile:
    """Load and save :class:`TerminalState`; ``path=None`` keeps it in memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.state = self._load()

    def _load(self) -> TerminalState:
        if self.path is None or not self.path.exists():
            return TerminalState()
        return msgspec.json.decode(self.path.read_bytes(), type=TerminalState)

    def save(self) -> None:
        """Persist atomically: a crash leaves either the old or the new state, never half."""
        if self.path is None:
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        data = msgspec.json.encode(self.state)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def take_rec(self) -> int:
        """Allocate the next record number and persist it before it is used on the wire."""
        rec = self.state.next_rec
        self.state.next_rec = rec + 1 if rec < 0xFFFFFFFF else 1
        self.save()
        return rec
