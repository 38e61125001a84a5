"""Fixtures for central's tests: a private, provisioned mosquitto."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from broker import PrivateBroker, private_broker


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    """A private mosquitto with TLS, the generated ACL and passwords, on a free port.

    Function-scoped: tests remove and rotate sites, and a start costs ~0.1 s.
    """
    with private_broker() as running:
        yield running
