"""Fixtures for integration tests against real daemons started on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from pcscd import PcscClient, PrivatePcscd


@pytest.fixture(scope="session")
def pcscd() -> Iterator[PrivatePcscd]:
    """A private pcscd with one vpcd reader, never the system's; stopped and deleted after.

    A missing pcscd, vpcd driver or ``unshare`` fails the test with PcscdError, on purpose:
    the Makefile installs them, so their absence is a broken machine, not a reason to skip.
    """
    with PrivatePcscd() as daemon:
        yield daemon


@pytest.fixture
async def pcsc(pcscd: PrivatePcscd) -> AsyncIterator[PcscClient]:
    """A pyscard client process bound to the private pcscd's vpcd reader."""
    client = await PcscClient.start(pcscd)
    try:
        yield client
    finally:
        await client.close()
