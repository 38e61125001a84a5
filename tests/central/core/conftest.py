"""Central's functional core: pure functions, no store — the same test on either store, so
the PostgreSQL pass of ``make test`` leaves these out (``store_fixed``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/central/core/" in item.nodeid:
            item.add_marker(pytest.mark.store_fixed)
