"""Fixtures for central's tests: a private, provisioned mosquitto."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from broker import PrivateBroker, private_broker
from sync_system import System, build_system


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    """A private mosquitto with TLS, the generated ACL and passwords, on a free port.

    Function-scoped: tests remove and rotate sites, and a start costs ~0.1 s.
    """
    with private_broker() as running:
        yield running


@pytest.fixture
async def system(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[System]:
    """Central and two edges (SZ-FUTIAN, BJ-CHAOYANG) on the private broker."""
    async for running in build_system(broker, tmp_path):
        yield running
