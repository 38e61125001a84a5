"""Central over HTTPS with a certificate from the broker's CA (`broker web-cert`): an edge
downloads a release with the CA from its bundle and its MQTT credentials — over TLS, never
sending its password in clear — and refuses a server its CA did not vouch for."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stores import central_db, open_store
from test_central_artifacts import PASSWORD, SITE, WHEEL, signed_release

from central import users
from central.artifacts import ReleaseStore, SitePasswords, artifact_app
from central.cli import main
from central.core.release import public_key_of
from central.provision import hash_password, init_broker
from central.web.app import dashboard_server
from edge_agent.upgrade import Source, UpgradeError, fetch

pytestmark = pytest.mark.integration


@pytest.fixture
async def https(tmp_path: Path) -> AsyncIterator[tuple[str, Path, ReleaseStore]]:
    """central's dashboard + release downloads on HTTPS; (base URL, broker CA, releases)."""
    broker = init_broker(tmp_path / "broker", hostnames=["localhost", "127.0.0.1"])
    issued = CliRunner().invoke(
        main,
        [
            "broker",
            "web-cert",
            "--broker-dir",
            str(broker.root),
            "--host",
            "127.0.0.1",
            "--host",
            "hq",
        ],
    )
    assert issued.exit_code == 0, issued.output
    key = Ed25519PrivateKey.generate()
    releases = ReleaseStore(tmp_path / "store")
    releases.publish(
        signed_release(tmp_path / "r", key), [public_key_of(key)], now=datetime.now(UTC)
    )
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{SITE}:{hash_password(PASSWORD)}\n")
    async with open_store(central_db(tmp_path)) as store:
        sock = socket.create_server(("127.0.0.1", 0))
        server = dashboard_server(
            store,
            "127.0.0.1",
            0,
            secret_key=await store.run(users.web_key),
            artifacts=artifact_app(releases, SitePasswords(passwd)),
            tls=(broker.root / "web.crt", broker.root / "web.key"),
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn's own flag
                await asyncio.sleep(0.02)
            yield f"https://127.0.0.1:{sock.getsockname()[1]}", broker.ca_cert, releases
        finally:
            server.should_exit = True
            await serving


async def test_an_edge_downloads_a_release_over_https_with_its_bundles_ca(https, tmp_path):
    base, ca, releases = https
    source = Source(
        f"{base}/releases/0.2.0/manifest.json", username=SITE, password=PASSWORD, ca_file=ca
    )
    dest = tmp_path / WHEEL
    await asyncio.to_thread(fetch, source, source.url(WHEEL), dest)
    assert dest.read_bytes() == (releases.root / "0.2.0" / WHEEL).read_bytes()
    guess = "not-" + PASSWORD
    wrong = Source(source.manifest_url, username=SITE, password=guess, ca_file=ca)
    with pytest.raises(UpgradeError, match="401"):
        await asyncio.to_thread(fetch, wrong, wrong.url(WHEEL), tmp_path / "x.whl")


async def test_an_edge_refuses_a_server_its_ca_did_not_sign(https, tmp_path):
    base, _, _ = https
    other = init_broker(tmp_path / "other-broker", hostnames=["localhost"])
    source = Source(
        f"{base}/releases/0.2.0/manifest.json", username=SITE, password=PASSWORD,
        ca_file=other.ca_cert,
    )  # fmt: skip
    with pytest.raises(UpgradeError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(fetch, source, source.url(WHEEL), tmp_path / "y.whl")
    # and plain HTTP to the TLS port gets no answer worth reading
    plain = Source(base.replace("https://", "http://") + "/releases/0.2.0/manifest.json")
    with pytest.raises(UpgradeError):
        await asyncio.to_thread(fetch, plain, plain.url(WHEEL), tmp_path / "z.whl")


def test_web_cert_needs_the_ca_key_and_a_host(tmp_path: Path):
    broker = init_broker(tmp_path / "broker", hostnames=["localhost"])
    run = CliRunner().invoke
    no_host = run(main, ["broker", "web-cert", "--broker-dir", str(broker.root)])
    assert no_host.exit_code == 2
    broker.ca_key.unlink()
    no_key = run(main, ["broker", "web-cert", "--broker-dir", str(broker.root), "--host", "hq"])
    assert no_key.exit_code == 1 and "the CA key is needed" in no_key.output
    assert ssl.PEM_cert_to_DER_cert(broker.ca_cert.read_text())  # the CA itself is untouched
