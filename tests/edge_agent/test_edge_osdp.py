"""OSDP door readers: the edge as control panel against a real libosdp PeripheralDevice.

Each test puts a real libosdp PD (the reader) on one end of a pty pair and the edge's
:class:`OsdpPanel` on the other, with the secure channel enforced on both, in front of a real
:class:`Site` over a real SQLite store seeded with the door terminal ``DOOR-01``.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import osdp
import pytest
from click.testing import CliRunner
from edge_fixtures import LOST, MEMBER, SITE, make_seed, new_keys

from edge_agent import cli
from edge_agent.adapters.osdp_link import SerialChannel, card_uid
from edge_agent.adapters.osdp_panel import OsdpPanel
from edge_agent.adapters.sqlite_store import EdgeStore
from edge_agent.config import (
    ConfigError,
    EdgeConfig,
    MetricsConfig,
    OsdpConfig,
    OsdpReaderConfig,
    TerminalsConfig,
    load_config,
)
from edge_agent.seed import apply_seed, load_seed
from edge_agent.service import EdgeService
from edge_agent.site import Site
from firmware_sim.osdp_reader import SimulatedReader
from firmware_sim.ptypair import pty_pair
from protocol.messages import DoorAccess, TerminalEvent, decode_record

DOOR = "DOOR-01"
ADDRESS = 101
#: How long a loaded 2-core machine may take for what takes well under a second alone.
WAIT_S = 20.0
#: libosdp's control panel declares a silent reader offline after ~8 s of probing.
OFFLINE_WAIT_S = 40.0
#: How long a whole stopping daemon may take.
STOP_WAIT_S = 60.0


class ReaderDevice(SimulatedReader):
    """The reader on the reader's end of the pty pair, with waits for the tests."""

    def __init__(self, path: Path, key: bytes | None) -> None:
        super().__init__(path, ADDRESS, key)

    async def commands_until(self, done: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
        """Commands the reader received, until ``done`` says enough (or WAIT_S)."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + WAIT_S
        while not done(got) and time.monotonic() < deadline:
            try:
                got.append((await asyncio.to_thread(self.commands.get, True, 0.2))[1])
            except queue.Empty:
                continue
        return got

    async def commands_for(self, seconds: float) -> list[dict[str, Any]]:
        """Every command the reader receives in the next ``seconds``."""
        await asyncio.sleep(seconds)
        got = []
        while not self.commands.empty():
            got.append(self.commands.get_nowait()[1])
        return got


def kinds(commands: list[dict[str, Any]]) -> set[int]:
    return {c["command"] for c in commands}


ALL_THREE = {osdp.Command.Output, osdp.Command.LED, osdp.Command.Buzzer}


def records(db: Path) -> list[Any]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY rowid").fetchall()
    return [decode_record(row[0]) for row in rows]


def events(db: Path, name: str) -> list[TerminalEvent]:
    return [r for r in records(db) if isinstance(r, TerminalEvent) and r.event == name]


def link_state(db: Path) -> str | None:
    """The reader's link as last recorded: "online", "offline" or None."""
    link = [r.event for r in records(db) if isinstance(r, TerminalEvent)]
    link = [e for e in link if e in ("online", "offline")]
    return link[-1] if link else None


def accesses(db: Path) -> list[DoorAccess]:
    return [r for r in records(db) if isinstance(r, DoorAccess)]


async def eventually(check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@dataclass
class Bus:
    """One RS-485 bus: the edge's end (panel) and the reader's end of a pty pair."""

    site: Site
    db: Path
    edge_end: Path
    reader_end: Path
    key_file: Path
    key: bytes
    devices: list[ReaderDevice] = field(default_factory=list)
    panels: list[tuple[OsdpPanel, asyncio.Task[None]]] = field(default_factory=list)

    def reader(self, key: bytes | None = None, *, new: bool = False) -> ReaderDevice:
        device = ReaderDevice(self.reader_end, None if new else key or self.key)
        self.devices.append(device)
        return device

    def start_panel(self) -> OsdpPanel:
        config = OsdpReaderConfig(
            terminal=DOOR, port=str(self.edge_end), address=ADDRESS, scbk_file=self.key_file
        )
        panel = OsdpPanel(str(self.edge_end), [config], self.site, self.site.store)
        self.panels.append((panel, asyncio.create_task(panel.run())))
        return panel

    async def stop_panels(self) -> None:
        for panel, task in self.panels:
            panel.stop()
            async with asyncio.timeout(WAIT_S):
                await task
        self.panels.clear()


async def seeded_site(tmp_path: Path) -> tuple[Path, Path]:
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(make_seed(new_keys()), ensure_ascii=False))
    db = tmp_path / "edge.db"
    async with EdgeStore.open(db, SITE) as store:
        seed = load_seed(seed_file)
        await store.run(lambda conn: apply_seed(conn, seed))
    return db, seed_file


def write_key(path: Path) -> bytes:
    key = os.urandom(16)
    path.write_text(key.hex() + "\n")
    return key


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    db, _ = await seeded_site(tmp_path)
    key_file = tmp_path / "door-01.scbk"
    key = write_key(key_file)
    async with EdgeStore.open(db, SITE) as store, pty_pair() as (edge_end, reader_end):
        site = Site(store)
        await site.load()
        bus = Bus(site, db, edge_end, reader_end, key_file, key)
        try:
            yield bus
        finally:
            await bus.stop_panels()
            for device in bus.devices:
                device.unplug()


async def online(bus: Bus, panel: OsdpPanel) -> None:
    await eventually(lambda: panel.online(DOOR) and bool(events(bus.db, "online")))


# -- behaviour ---------------------------------------------------------------------------------


async def test_allowed_card_opens_the_door_with_led_buzzer_and_relay(bus: Bus) -> None:
    reader = bus.reader()
    panel = bus.start_panel()
    await online(bus, panel)

    reader.present(MEMBER)
    got = await reader.commands_until(lambda got: kinds(got) >= ALL_THREE)

    assert kinds(got) >= ALL_THREE
    output = next(c for c in got if c["command"] == osdp.Command.Output)
    led = next(c for c in got if c["command"] == osdp.Command.LED)
    assert output["output_no"] == 0
    assert output["control_code"] == 5  # temporary ON: the relay drops by itself
    assert output["timer_count"] == 30  # the seeded door's 3 s open time, in 100 ms
    assert led["on_color"] == osdp.CommandLEDColor.Green
    # The record was committed before the reader was told anything.
    [access] = accesses(bus.db)
    assert access.granted
    assert access.card_uid == MEMBER
    assert access.terminal == DOOR
    assert access.term_rec == 1
    assert "secure channel" in events(bus.db, "online")[0].detail


async def test_blacklisted_card_is_refused_with_red_led_and_no_relay(bus: Bus) -> None:
    reader = bus.reader()
    panel = bus.start_panel()
    await online(bus, panel)

    reader.present(LOST)
    got = await reader.commands_until(
        lambda got: {osdp.Command.LED, osdp.Command.Buzzer} <= kinds(got)
    )
    # Anything else for this card would have arrived by now (its commands leave together).
    got += await reader.commands_for(1.0)

    assert osdp.Command.Output not in kinds(got)
    led = next(c for c in got if c["command"] == osdp.Command.LED)
    assert led["on_color"] == osdp.CommandLEDColor.Red
    [access] = accesses(bus.db)
    assert not access.granted
    assert access.reason == "lost"  # the seeded card is reported lost and blacklisted
    assert access.card_uid == LOST


async def test_unplugged_reader_is_recorded_offline_and_comes_back_by_itself(bus: Bus) -> None:
    first = bus.reader()
    panel = bus.start_panel()
    await online(bus, panel)

    first.unplug()
    await eventually(lambda: link_state(bus.db) == "offline", OFFLINE_WAIT_S)
    assert not panel.online(DOOR)

    again = bus.reader()  # plugged back in: nobody touches the edge
    await eventually(lambda: link_state(bus.db) == "online", OFFLINE_WAIT_S)
    assert panel.online(DOOR)
    again.present(MEMBER)
    got = await again.commands_until(lambda got: kinds(got) >= ALL_THREE)
    assert kinds(got) >= ALL_THREE
    assert [a.granted for a in accesses(bus.db)] == [True]
    assert events(bus.db, "auth_failed") == []  # an outage is not a key problem


async def test_reader_with_the_wrong_key_never_comes_online_or_gets_a_decision(bus: Bus) -> None:
    impostor = bus.reader(key=os.urandom(16))
    panel = bus.start_panel()
    # Recorded once the reader has refused the secure channel on a few attempts in a row.
    await eventually(lambda: bool(events(bus.db, "auth_failed")), OFFLINE_WAIT_S)

    impostor.present(MEMBER)
    got = await impostor.commands_for(2.0)

    assert got == []
    assert not panel.online(DOOR)
    assert events(bus.db, "online") == []
    assert accesses(bus.db) == []


async def test_tamper_is_recorded_as_a_terminal_event(bus: Bus) -> None:
    reader = bus.reader()
    panel = bus.start_panel()
    await online(bus, panel)

    reader.tamper()
    await eventually(lambda: bool(events(bus.db, "tamper")))

    [tamper] = events(bus.db, "tamper")
    assert tamper.terminal == DOOR
    assert tamper.term_rec == 1


async def test_record_numbers_continue_after_the_panel_restarts(bus: Bus) -> None:
    reader = bus.reader()
    panel = bus.start_panel()
    await online(bus, panel)
    reader.present(MEMBER)
    await reader.commands_until(lambda got: kinds(got) >= ALL_THREE)
    await bus.stop_panels()

    panel = bus.start_panel()
    await eventually(lambda: panel.online(DOOR), OFFLINE_WAIT_S)
    reader.present(MEMBER)
    await reader.commands_until(lambda got: kinds(got) >= ALL_THREE)

    assert [a.term_rec for a in accesses(bus.db)] == [1, 2]
    assert events(bus.db, "auth_failed") == []  # a stale OSDP sequence is not a key problem
    assert len({a.id for a in accesses(bus.db)}) == 2


async def test_the_bus_port_is_held_exclusively() -> None:
    async with pty_pair() as (edge_end, _):
        first = SerialChannel(str(edge_end))
        try:
            second = SerialChannel(str(edge_end))  # a stray `provision` while the daemon runs
            assert first.fd is not None
            assert second.fd is None
        finally:
            first.close()


def test_card_data_becomes_the_card_uid() -> None:
    raw = {"format": osdp.CardFormat.Unspecified, "length": 56, "data": bytes.fromhex(MEMBER)}
    assert card_uid(raw) == MEMBER
    # 34-bit Wiegand: even parity, 32 bits of UID, odd parity, left-aligned in 5 bytes.
    wiegand = (1 << 33 | 0xDEADBEEF << 1 | 1) << 6
    w34 = {"format": osdp.CardFormat.Wiegand, "length": 34, "data": wiegand.to_bytes(5, "big")}
    assert card_uid(w34) == "DEADBEEF"
    w26 = {"format": osdp.CardFormat.Wiegand, "length": 26, "data": b"\x01\x02\x03\x40"}
    assert card_uid(w26) is None


async def test_provisioning_keys_a_new_reader_which_then_runs_on_its_own_key(
    bus: Bus, tmp_path: Path
) -> None:
    key_file = tmp_path / "new-door.scbk"
    config = tmp_path / "edge.toml"
    config.write_text(
        f'site = "{SITE}"\ndata_dir = "{tmp_path}"\n\n[[osdp.readers]]\n'
        f'terminal = "{DOOR}"\nport = "{bus.edge_end}"\naddress = {ADDRESS}\n'
        f'scbk_file = "{key_file}"\ninstall_mode = true\n'
    )
    reader = bus.reader(new=True)

    args = ["osdp", "provision", "--config", str(config), "--reader", DOOR, "--timeout", "30"]
    result = await asyncio.to_thread(CliRunner().invoke, cli.main, args)

    assert result.exit_code == 0, result.output
    key = bytes.fromhex(key_file.read_text())
    assert len(key) == 16
    assert key_file.stat().st_mode & 0o777 == 0o600
    [keyset] = await reader.commands_until(bool)
    assert keyset["command"] == osdp.Command.Keyset
    assert keyset["data"] == key
    # In service: the panel enforces the secure channel with the provisioned key.
    bus.key_file.write_text(key.hex())
    panel = bus.start_panel()
    await online(bus, panel)
    reader.present(MEMBER)
    assert kinds(await reader.commands_until(lambda got: kinds(got) >= ALL_THREE)) >= ALL_THREE
    # Never twice: an existing key file is not replaced.
    again = await asyncio.to_thread(CliRunner().invoke, cli.main, args)
    assert again.exit_code != 0
    assert "provisioned already" in again.output


# -- configuration -----------------------------------------------------------------------------


def _config(tmp_path: Path, reader: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(f'site = "{SITE}"\ndata_dir = "{tmp_path}"\n\n[[osdp.readers]]\n{reader}')
    return path


def test_a_reader_without_a_key_is_refused_unless_in_install_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scbk_file is required"):
        load_config(_config(tmp_path, 'terminal = "DOOR-01"\nport = "/dev/ttyUSB0"\n'), env={})
    config = load_config(
        _config(tmp_path, 'terminal = "DOOR-01"\nport = "/dev/ttyUSB0"\ninstall_mode = true\n'),
        env={},
    )
    assert config.osdp.readers[0].install_mode
    assert config.osdp.readers[0].baud == 9600


def test_reader_settings_are_validated(tmp_path: Path) -> None:
    base = 'terminal = "DOOR-01"\nport = "/dev/ttyUSB0"\nscbk_file = "/k"\n'
    with pytest.raises(ConfigError, match="baud"):
        load_config(_config(tmp_path, base + "baud = 1200\n"), env={})
    with pytest.raises(ConfigError, match="address"):
        load_config(_config(tmp_path, base + "address = 127\n"), env={})
    twin = base.replace("DOOR-01", "DOOR-02")
    with pytest.raises(ConfigError, match="two readers at address 0"):
        load_config(_config(tmp_path, base + "\n[[osdp.readers]]\n" + twin), env={})


# -- the daemon --------------------------------------------------------------------------------


async def test_the_daemon_drives_configured_readers_and_stops_cleanly(tmp_path: Path) -> None:
    await seeded_site(tmp_path)
    key_file = tmp_path / "door-01.scbk"
    key = write_key(key_file)
    async with pty_pair() as (edge_end, reader_end):
        reader = ReaderDevice(reader_end, key)
        try:
            config = EdgeConfig(
                site=SITE,
                data_dir=tmp_path,
                terminals=TerminalsConfig(listen="127.0.0.1:0"),
                metrics=MetricsConfig(listen=""),
                osdp=OsdpConfig(
                    readers=[
                        OsdpReaderConfig(
                            terminal=DOOR,
                            port=str(edge_end),
                            address=ADDRESS,
                            scbk_file=key_file,
                            open_time_s=5,
                        )
                    ]
                ),
            )
            service = EdgeService(config)
            task = asyncio.create_task(service.run())
            async with asyncio.timeout(WAIT_S):
                await service.ready.wait()
            db = tmp_path / "edge.db"
            await eventually(lambda: bool(events(db, "online")))

            reader.present(MEMBER)
            got = await reader.commands_until(lambda got: kinds(got) >= ALL_THREE)
            output = next(c for c in got if c["command"] == osdp.Command.Output)
            assert output["timer_count"] == 50  # open_time_s = 5 overrides the door's 3 s
            # status (and HQ's health report) see the reader online, as the panel does
            assert service.site is not None
            status = await service.site.status(service.registry, version="test")
            [door] = [t for t in status["terminals"] if t["id"] == "DOOR-01"]
            assert door["online"]

            service.stop()  # what SIGTERM does
            # Generous: the daemon's other tasks may each take a while to wind down.
            done, _ = await asyncio.wait([task], timeout=STOP_WAIT_S)
            assert task in done
            task.result()
            assert [a.granted for a in accesses(db)] == [True]
        finally:
            reader.unplug()
