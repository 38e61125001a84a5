"""The virtual card, inserted through vpcd into a real (private) pcscd, read with pyscard."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator

import pytest
from pcscd import FRIENDLY_NAME, PcscClient, PcscClientError, PrivatePcscd, free_port_pair

from firmware_sim.vcard import (
    DATA_EF_SIZE,
    ONECARD_AID,
    SW_OK,
    CardApplet,
    VirtualCard,
    keep_inserted,
)

pytestmark = pytest.mark.integration

UID = bytes.fromhex("04A1B2C3D4E5F6")
DATA = bytes(range(DATA_EF_SIZE))
GET_UID = bytes.fromhex("FFCA000000")
SELECT_APP = bytes.fromhex("00A40400") + bytes([len(ONECARD_AID)]) + ONECARD_AID + b"\x00"
READ_ALL = bytes.fromhex("00B0000000")
INSERT_TIMEOUT = 5.0


async def insert(card: VirtualCard, pcscd: PrivatePcscd, pcsc: PcscClient) -> None:
    """Insert ``card`` and wait until pcscd has seen it (its next presence poll)."""
    async with asyncio.timeout(INSERT_TIMEOUT):
        await card.insert("127.0.0.1", pcscd.vpcd_port)
    await pcsc.wait_for_card(present=True)


async def remove(card: VirtualCard, pcsc: PcscClient) -> None:
    """Remove ``card`` and wait until pcscd has seen the reader empty."""
    await card.remove()
    await pcsc.wait_for_card(present=False)


@pytest.fixture
async def card(pcscd: PrivatePcscd, pcsc: PcscClient) -> AsyncIterator[VirtualCard]:
    """A card in the reader as pcscd sees it; out again, as pcscd sees it, afterwards."""
    await pcsc.wait_for_card(present=False)  # whatever an earlier test left has gone
    virtual = VirtualCard(CardApplet(UID, data=DATA))
    await insert(virtual, pcscd, pcsc)
    try:
        yield virtual
    finally:
        await remove(virtual, pcsc)


async def test_pyscard_sees_only_the_private_vpcd_readers(pcsc: PcscClient) -> None:
    # vpcd always opens two slots; the card goes into the first.
    assert await pcsc.readers() == [f"{FRIENDLY_NAME} 00 00", f"{FRIENDLY_NAME} 00 01"]


@pytest.mark.parametrize("uid_hex", ["04A1B2C3", "04A1B2C3D4E5F6", "04A1B2C3D4E5F6A7B8C9"])
async def test_get_uid_returns_exactly_the_card_uid(
    pcscd: PrivatePcscd, pcsc: PcscClient, uid_hex: str
) -> None:
    virtual = VirtualCard(CardApplet(bytes.fromhex(uid_hex)))
    await pcsc.wait_for_card(present=False)
    await insert(virtual, pcscd, pcsc)
    try:
        assert await pcsc.connect() == virtual.applet.atr
        assert await pcsc.transmit(GET_UID) == bytes.fromhex(uid_hex) + SW_OK
        await pcsc.disconnect()
    finally:
        await remove(virtual, pcsc)


async def test_select_then_read_binary_returns_the_data_file(
    card: VirtualCard, pcsc: PcscClient
) -> None:
    await pcsc.connect()
    fci = await pcsc.transmit(SELECT_APP)
    assert fci.endswith(SW_OK)
    assert ONECARD_AID in fci
    assert await pcsc.transmit(READ_ALL) == DATA + SW_OK
    await pcsc.disconnect()


async def test_update_binary_then_read_binary_round_trips(
    card: VirtualCard, pcsc: PcscClient
) -> None:
    await pcsc.connect()
    assert (await pcsc.transmit(SELECT_APP)).endswith(SW_OK)
    assert await pcsc.transmit(bytes.fromhex("00D6002004CAFEBABE")) == SW_OK
    assert await pcsc.transmit(bytes.fromhex("00B0002004")) == bytes.fromhex("CAFEBABE9000")
    await pcsc.disconnect()
    assert card.applet.data[0x20:0x24] == bytes.fromhex("CAFEBABE")


async def test_removed_card_cannot_be_connected_and_a_new_tap_works(
    pcscd: PrivatePcscd, pcsc: PcscClient
) -> None:
    virtual = VirtualCard(CardApplet(UID))
    await pcsc.wait_for_card(present=False)
    for _tap in range(2):
        await insert(virtual, pcscd, pcsc)
        await pcsc.connect()
        assert await pcsc.transmit(GET_UID) == UID + SW_OK
        await pcsc.disconnect()
        await remove(virtual, pcsc)
        with pytest.raises(PcscClientError) as raised:
            await pcsc.connect()
        assert raised.value.kind == "NoCardException"


async def test_apdu_round_trip_is_reported(
    card: VirtualCard, pcsc: PcscClient, capsys: pytest.CaptureFixture[str]
) -> None:
    # No bound is asserted: timing depends on the machine. Without TCP_QUICKACK on the
    # card's socket this reads ~48 ms (delayed ACK); with it, well under a millisecond.
    await pcsc.connect()
    durations = await pcsc.time_transmits(GET_UID, 50)
    await pcsc.disconnect()
    with capsys.disabled():
        print(
            f"\nvcard APDU round trip via pcscd/vpcd: mean {statistics.mean(durations) * 1e3:.2f}"
            f" ms, min {min(durations) * 1e3:.2f} ms, max {max(durations) * 1e3:.2f} ms"
            f" over {len(durations)} GET UID"
        )
    assert len(durations) == 50


async def test_card_waits_for_vpcd_and_returns_after_pcscd_restarts() -> None:
    port = free_port_pair()
    virtual = VirtualCard(CardApplet(UID))
    # The card is started first: it must wait for vpcd rather than give up.
    keeper = asyncio.create_task(keep_inserted(virtual, "127.0.0.1", port))
    try:
        for _start in range(2):
            daemon = PrivatePcscd(vpcd_port=port)
            await asyncio.to_thread(daemon.start)
            try:
                client = await PcscClient.start(daemon)
                try:
                    await client.wait_for_card(present=True)
                    await client.connect()
                    assert await client.transmit(GET_UID) == UID + SW_OK
                    await client.disconnect()
                finally:
                    await client.close()
            finally:
                await asyncio.to_thread(daemon.stop)
        assert not keeper.done()
    finally:
        keeper.cancel()
        await asyncio.wait({keeper})
        if not keeper.cancelled():
            keeper.result()  # surface whatever ended it early
    assert not virtual.is_inserted
