"""Shared set-up for edge tests: a seeded site, and the edge as a real child process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import auth

SITE = "SZ-FUTIAN"
MEMBER = "04A1B2C3D4E5F6"
LOST = "04C0FFEE000001"
BIN = Path(sys.executable).parent
TERMINALS = {
    "DOOR-01": "door",
    "CLOCK-01": "attendance",
    "POS-01": "pos",
    "POS-02": "pos",
    "KIOSK-01": "recharge",
}


def card_uid(i: int) -> str:
    """The i-th generated member card."""
    return f"0500{i:010X}"


def make_seed(
    keys: dict[str, bytes], *, members: int = 0, balance_fen: int = 10_000_000
) -> dict[str, Any]:
    """A site with a door, a clock, tills, a kiosk, one named member, a lost card and
    ``members`` generated cardholders."""
    persons = [{"id": "P1", "name": "张三", "number": "S001", "kind": "staff"}]
    cards = [
        {"uid": MEMBER, "person_id": "P1"},
        {"uid": LOST, "person_id": "P2", "status": "lost"},
    ]
    persons.append({"id": "P2", "name": "李四", "kind": "member"})
    accounts = [
        {"person_id": "P1", "cash_fen": 5000, "subsidy_fen": 1000},
        {"person_id": "P2", "cash_fen": 3000},
    ]
    for i in range(members):
        pid = f"M{i}"
        persons.append({"id": pid, "name": f"会员{i}", "kind": "member"})
        cards.append({"uid": card_uid(i), "person_id": pid})
        accounts.append({"person_id": pid, "cash_fen": balance_fen})
    grants = [{"person_id": p["id"], "access_level_id": "ALWAYS"} for p in persons]
    terminals = [
        {"id": tid, "kind": TERMINALS.get(tid, "pos"), "key_hex": key.hex(), "config": {}}
        for tid, key in keys.items()
    ]
    return {
        "site": SITE,
        "policy": {"site": SITE, "timezone": "Asia/Shanghai"},
        "persons": persons,
        "cards": cards,
        "accounts": accounts,
        "door_groups": [{"id": "MAIN", "name": "正门"}],
        "doors": [{"id": "D1", "group_id": "MAIN", "terminal_id": "DOOR-01", "direction": "in"}],
        "time_zones": [{"id": "24H", "weekly": {str(d): [[0, 1440]] for d in range(7)}}],
        "access_levels": [{"id": "ALWAYS", "door_group_id": "MAIN", "time_zone_id": "24H"}],
        "access_grants": grants,
        "terminals": terminals,
        "blacklist": [{"uid": LOST, "reason": "lost", "effective_at": "2026-01-01T00:00:00Z"}],
        "blacklist_version": 1,
    }


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EdgeProcess:
    """``onecard-edge run`` as a child process on a private data dir and port."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    serial: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.data_dir / "edge.toml"

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        serial = ", ".join(json.dumps(s) for s in self.serial)
        self.config_path.write_text(
            f'site = "{SITE}"\ndata_dir = "{self.data_dir}"\n\n'
            f'[terminals]\nlisten = "127.0.0.1:{self.port}"\nserial = [{serial}]\n'
            'heartbeat_s = 10\n\n[log]\nlevel = "info"\nformat = "json"\n'
        )

    def seed(self, seed: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        self.write_config()
        path = self.data_dir / "seed.json"
        path.write_text(json.dumps(seed, ensure_ascii=False))
        return subprocess.run(
            [BIN / "onecard-edge", "seed", "--config", self.config_path, path],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )

    def start(self, timeout: float = 15) -> None:
        self.write_config()
        log = (self.data_dir / "edge.log").open("ab")
        self.proc = subprocess.Popen(
            [BIN / "onecard-edge", "run", "--config", self.config_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"edge exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise AssertionError(f"edge not listening after {timeout}s:\n{self.log_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def log_text(self) -> str:
        path = self.data_dir / "edge.log"
        return path.read_text(errors="replace") if path.exists() else ""


def new_keys(*extra: str) -> dict[str, bytes]:
    """Fresh keys for the standard terminals plus ``extra`` POS ids."""
    return {tid: auth.new_key() for tid in [*TERMINALS, *extra]}
