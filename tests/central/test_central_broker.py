"""The provisioned broker, for real: a private mosquitto with the generated TLS, ACL and passwords.

aiomqtt ignores PUBACK reason codes, so an ACL-denied publish looks like a success to the
publisher. A denial is proven from the other side: an authorised subscriber never gets the
message, although a *sentinel* published right after it on an allowed topic does arrive
(mosquitto keeps one publisher's messages in order) - plus mosquitto's "Denied PUBLISH" line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiomqtt
import pytest
from broker import PrivateBroker, bundle_password

from central.provision import remove_site, rotate_site

pytestmark = pytest.mark.integration

A, B = "SITE-A", "SITE-B"
PREFIX = "onecard/v1"
#: How long to keep listening, after the sentinel arrived, for a message that must not come.
GRACE_S = 0.3


async def receive(client: aiomqtt.Client, within_s: float = 5) -> aiomqtt.Message:
    """The client's next message, or TimeoutError."""
    async with asyncio.timeout(within_s):
        return await anext(aiter(client.messages))


async def receive_until(client: aiomqtt.Client, sentinel: str) -> list[str]:
    """Topics received until ``sentinel`` arrives, plus anything in a short grace after it."""
    topics: list[str] = []
    async with asyncio.timeout(5):
        while sentinel not in topics:
            topics.append((await receive(client)).topic.value)
    try:
        while True:
            topics.append((await receive(client, GRACE_S)).topic.value)
    except TimeoutError:
        return topics


async def assert_refused(broker: PrivateBroker, username: str, password: str) -> None:
    with pytest.raises(aiomqtt.MqttError) as caught:
        async with broker.client(username, password):
            pass
    assert "not authori" in str(caught.value).lower()


async def test_site_connects_over_tls_with_its_bundle_credentials(broker: PrivateBroker) -> None:
    password = broker.add_site(A)
    async with broker.client(A, password) as site, broker.central() as central:
        await central.subscribe(f"{PREFIX}/site/+/up/#", qos=1)
        await site.publish(f"{PREFIX}/site/{A}/up/records", b'{"v":1}', qos=1)
        message = await receive(central)
    assert message.topic.value == f"{PREFIX}/site/{A}/up/records"
    assert message.payload == b'{"v":1}'


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param(A, "wrong-password", id="wrong-password"),
        pytest.param("SITE-Z", "whatever", id="unknown-site"),
        pytest.param("", "", id="anonymous"),
    ],
)
async def test_bad_credentials_are_refused(
    broker: PrivateBroker, username: str, password: str
) -> None:
    broker.add_site(A)
    await assert_refused(broker, username, password)


async def test_another_sites_password_does_not_open_central(broker: PrivateBroker) -> None:
    await assert_refused(broker, "central", broker.add_site(A))


@pytest.mark.parametrize(
    "forbidden",
    [
        pytest.param(f"{PREFIX}/site/{B}/up/records", id="another-sites-uplink"),
        pytest.param(f"{PREFIX}/site/{A}/down/ack", id="own-downlink-forged-ack"),
        pytest.param(f"{PREFIX}/broadcast/blacklist", id="forged-blacklist"),
        pytest.param(f"{PREFIX}/central/state", id="forged-central-state"),
    ],
)
async def test_site_publishes_only_on_its_own_uplink(broker: PrivateBroker, forbidden: str) -> None:
    password = broker.add_site(A)
    broker.add_site(B)
    allowed = f"{PREFIX}/site/{A}/up/records"
    async with (
        broker.client(A, password, identifier=f"edge-{A}") as site,
        broker.central() as central,
    ):
        await central.subscribe(f"{PREFIX}/#", qos=1)
        await site.publish(forbidden, b"forged", qos=1)
        await site.publish(allowed, b"sentinel", qos=1)
        topics = await receive_until(central, allowed)
    assert forbidden not in topics
    assert f"Denied PUBLISH from edge-{A} (d0, q1, r0, m1, '{forbidden}'" in broker.log()


async def test_site_cannot_read_another_sites_downlink(broker: PrivateBroker) -> None:
    password_a, password_b = broker.add_site(A), broker.add_site(B)
    b_feed, a_feed = f"{PREFIX}/site/{B}/down/feed", f"{PREFIX}/site/{A}/down/feed"
    async with (
        broker.client(A, password_a) as site_a,
        broker.client(B, password_b) as site_b,
        broker.central() as central,
    ):
        # mosquitto 2.0 grants the subscription and filters each message against the ACL.
        await site_a.subscribe(f"{PREFIX}/site/{B}/down/#", qos=1)
        await site_a.subscribe(f"{PREFIX}/site/{A}/down/#", qos=1)
        await site_b.subscribe(f"{PREFIX}/site/{B}/down/#", qos=1)
        await central.publish(b_feed, b"for B only", qos=1)
        await central.publish(a_feed, b"sentinel", qos=1)
        seen_by_a = await receive_until(site_a, a_feed)
        for_b = await receive(site_b)
    assert seen_by_a == [a_feed]
    assert (for_b.topic.value, for_b.payload) == (b_feed, b"for B only")


async def test_wildcard_subscription_delivers_only_what_the_acl_allows(
    broker: PrivateBroker,
) -> None:
    password = broker.add_site(A)
    broker.add_site(B)
    async with broker.client(A, password) as site, broker.central() as central:
        await site.subscribe(f"{PREFIX}/#", qos=1)
        await central.publish(f"{PREFIX}/site/{B}/down/cmd", b"{}", qos=1)
        await central.publish(f"{PREFIX}/site/{B}/up/records", b"{}", qos=1)
        await central.publish(f"{PREFIX}/site/{A}/up/records", b"{}", qos=1)
        await central.publish(f"{PREFIX}/broadcast/blacklist", b"{}", qos=1)
        await central.publish(f"{PREFIX}/site/{A}/down/cmd", b"{}", qos=1)
        topics = await receive_until(site, f"{PREFIX}/site/{A}/down/cmd")
    assert topics == [f"{PREFIX}/broadcast/blacklist", f"{PREFIX}/site/{A}/down/cmd"]


async def test_every_site_receives_the_broadcasts(broker: PrivateBroker) -> None:
    password_a, password_b = broker.add_site(A), broker.add_site(B)
    broadcasts = [f"{PREFIX}/broadcast/blacklist", f"{PREFIX}/central/state"]
    async with (
        broker.client(A, password_a) as site_a,
        broker.client(B, password_b) as site_b,
        broker.central() as central,
    ):
        for site in (site_a, site_b):
            for topic in broadcasts:
                await site.subscribe(topic, qos=1)
        for topic in broadcasts:
            await central.publish(topic, b'{"v":1}', qos=1)
        for site in (site_a, site_b):
            assert [(await receive(site)).topic.value for _ in broadcasts] == broadcasts


async def test_central_can_share_ingest_through_a_shared_subscription(
    broker: PrivateBroker,
) -> None:
    password = broker.add_site(A)
    async with broker.client(A, password) as site, broker.central() as central:
        await central.subscribe(f"$share/central/{PREFIX}/site/+/up/records", qos=1)
        await site.publish(f"{PREFIX}/site/{A}/up/records", b"{}", qos=1)
        assert (await receive(central)).topic.value == f"{PREFIX}/site/{A}/up/records"


async def test_removed_site_is_dropped_and_refused_after_reload(broker: PrivateBroker) -> None:
    password = broker.add_site(A)
    async with broker.client(A, password) as site:
        remove_site(broker.dir.root, A)
        broker.reload()
        with pytest.raises(aiomqtt.MqttError):
            await receive(site)  # the reload disconnects it
    await assert_refused(broker, A, password)


async def test_rotated_site_is_dropped_and_needs_its_new_password(
    broker: PrivateBroker,
) -> None:
    old = broker.add_site(A)
    async with broker.client(A, old) as site:
        bundle = rotate_site(broker.dir.root, A, broker_url=broker.url, out=broker.bundles)
        broker.reload()
        with pytest.raises(aiomqtt.MqttError):
            await receive(site)  # the reload disconnects the old credentials
    await assert_refused(broker, A, old)
    async with broker.client(A, bundle_password(bundle)):
        pass


async def test_reload_keeps_other_clients_connected(broker: PrivateBroker) -> None:
    password = broker.add_site(A)
    async with broker.client(A, password) as site, broker.central() as central:
        broker.add_site(B)  # reloads
        remove_site(broker.dir.root, B)
        broker.reload()
        await central.subscribe(f"{PREFIX}/site/{A}/up/#", qos=1)
        await site.publish(f"{PREFIX}/site/{A}/up/state", b"{}", qos=1)
        assert (await receive(central)).topic.value == f"{PREFIX}/site/{A}/up/state"


#: An MQTT 3.1.1 CONNECT (clean session, keepalive 60, client id "x"), as a plain client sends it.
PLAIN_CONNECT = bytes.fromhex("100d00044d5154540402003c000178")


async def test_plain_mqtt_on_the_tls_port_is_cut_off(broker: PrivateBroker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(PLAIN_CONNECT)
        await writer.drain()
        async with asyncio.timeout(5):
            reply = await reader.read()  # until the broker closes the connection
    except ConnectionResetError:
        reply = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert not reply.startswith(b"\x20")  # never a CONNACK
    assert "OpenSSL Error" in broker.log()


async def test_tls_refuses_a_client_that_does_not_trust_our_ca(broker: PrivateBroker) -> None:
    system_cas_only = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(
            "127.0.0.1", broker.port, ssl=system_cas_only, server_hostname="localhost"
        )


async def test_tls_certificate_names_the_broker_host(broker: PrivateBroker) -> None:
    for host in ("localhost", "127.0.0.1"):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", broker.port, ssl=broker.tls_context(), server_hostname=host
        )
        writer.close()
        await writer.wait_closed()
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await asyncio.open_connection(
            "127.0.0.1", broker.port, ssl=broker.tls_context(), server_hostname="evil.example"
        )
