"""Open a byte stream to a terminal-protocol peer from a URL.

``tcp://HOST:PORT``                a TCP connection (terminals connect to the edge)
``serial:///dev/ttyUSB0?baud=N``    a serial port, opened with pyserial-asyncio-fast

A pty created by ``socat pty,raw,echo=0,link=/tmp/a pty,raw,echo=0,link=/tmp/b`` stands in for
a serial cable in tests and the demo: one side opens ``serial:///tmp/a``, the other
``serial:///tmp/b``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import serial_asyncio_fast

DEFAULT_BAUD = 115200


class EndpointError(ValueError):
    """A transport URL that cannot be used."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed transport URL."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""
    baud: int = DEFAULT_BAUD

    def __str__(self) -> str:
        if self.scheme == "tcp":
            return f"tcp://{self.host}:{self.port}"
        return f"serial://{self.path}?baud={self.baud}"


def parse_endpoint(url: str) -> Endpoint:
    """Parse ``tcp://host:port`` or ``serial:///path[?baud=N]``."""
    parts = urlsplit(url)
    if parts.scheme == "tcp":
        if not parts.hostname or parts.port is None:
            raise EndpointError(f"{url!r}: expected tcp://HOST:PORT")
        return Endpoint("tcp", host=parts.hostname, port=parts.port)
    if parts.scheme == "serial":
        if not parts.path:
            raise EndpointError(f"{url!r}: expected serial:///dev/PORT")
        query = parse_qs(parts.query)
        try:
            baud = int(query.get("baud", [str(DEFAULT_BAUD)])[0])
        except ValueError:
            raise EndpointError(f"{url!r}: baud must be a number") from None
        return Endpoint("serial", path=parts.path, baud=baud)
    raise EndpointError(f"{url!r}: scheme must be tcp:// or serial://")


async def open_stream(endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``endpoint``; OSError if it is not there."""
    if endpoint.scheme == "tcp":
        return await asyncio.open_connection(endpoint.host, endpoint.port)
    return await serial_asyncio_fast.open_serial_connection(
        url=endpoint.path, baudrate=endpoint.baud
    )
