"""Connecting to the broker with aiomqtt: URL, credentials, TLS, MQTT v5 persistent session.

Shared by the edge and central. The broker is not the store: a PUBACK proves nothing about
delivery to central (and aiomqtt hides ACL denials), so nothing here marks anything done —
only application-level acks do.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

#: A persistent session survives this long without the client (queued QoS 1 messages kept).
SESSION_EXPIRY_S = 7 * 86400


class BrokerUrlError(ValueError):
    """A broker URL onecard cannot use."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to connect."""

    host: str
    port: int
    tls: bool
    username: str
    password: str
    ca_file: Path | None = None
    keepalive_s: int = 30

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str,
        password: str,
        ca_file: Path | None = None,
        keepalive_s: int = 30,
    ) -> BrokerSettings:
        """``mqtts://HOST:PORT`` (TLS, default 8883) or ``mqtt://HOST:PORT`` (default 1883)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerUrlError(f"{url!r}: expected mqtts://HOST:PORT or mqtt://HOST:PORT")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=username,
            password=password,
            ca_file=ca_file,
            keepalive_s=keepalive_s,
        )


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the broker against our own CA (or the system's if none is given)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def make_client(
    settings: BrokerSettings,
    *,
    identifier: str,
    will: aiomqtt.Will | None = None,
    persistent: bool = True,
) -> aiomqtt.Client:
    """An MQTT v5 client with a persistent session (clean start only the first time), or
    with ``persistent=False`` a session that ends with the connection (a worker sharing a
    subscription: the broker must not keep handing a dead member its share)."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        keepalive=settings.keepalive_s,
        clean_start=not persistent,
        properties=properties,
        tls_context=tls_context(settings.ca_file) if settings.tls else None,
        max_inflight_messages=100,
        timeout=10,
    )
