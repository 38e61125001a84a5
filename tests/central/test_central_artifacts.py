"""Central's release store (``release publish``) and the endpoint edges download from."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette

from central.artifacts import PublishError, ReleaseStore, SitePasswords, artifact_app
from central.cli import main
from central.core.release import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    FileEntry,
    ReleaseManifest,
    canonical_bytes,
    public_key_of,
    sign_manifest,
)
from central.provision import hash_password
from central.releases import file_digest, host_compatibility

WHEEL = "onecard-0.2.0-py3-none-any.whl"
SITE, PASSWORD = "SZ-FUTIAN", "s3cret-site-password"


def signed_release(
    out: Path, key: Ed25519PrivateKey, *, version: str = "0.2.0", days: int = 30
) -> Path:
    out.mkdir(parents=True)
    (out / WHEEL).write_bytes(bytes(range(256)) * 64)  # 16 KiB: enough to ask for a range
    sha, size = file_digest(out / WHEEL)
    now = datetime.now(UTC).replace(microsecond=0)
    manifest = ReleaseManifest(
        version=version,
        min_from_version="0",
        compatibility=host_compatibility(),
        created_at=now - timedelta(hours=1),
        expires_at=now + timedelta(days=days),
        files=(FileEntry(name=WHEEL, sha256=sha, size=size),),
    )
    data = canonical_bytes(manifest)
    (out / MANIFEST_NAME).write_bytes(data)
    (out / SIGNATURE_NAME).write_bytes(sign_manifest(data, key))
    return out


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def published(tmp_path: Path, key: Ed25519PrivateKey) -> ReleaseStore:
    store = ReleaseStore(tmp_path / "store")
    store.publish(signed_release(tmp_path / "r", key), [public_key_of(key)], now=datetime.now(UTC))
    return store


@pytest.fixture
def app(tmp_path: Path, published: ReleaseStore) -> Starlette:
    passwd = tmp_path / "passwd"
    passwd.write_text(f"central:{hash_password('central-pw')}\n{SITE}:{hash_password(PASSWORD)}\n")
    return artifact_app(published, SitePasswords(passwd))


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hq") as http:
        yield http


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_publish_cli_verifies_and_stores_the_release_once(tmp_path: Path, key: Ed25519PrivateKey):
    release = signed_release(tmp_path / "r", key)
    pub = public_key_of(key).raw_hex
    store = tmp_path / "store"
    run = CliRunner().invoke
    first = run(main, ["release", "publish", str(release), "--pubkey", pub, "--store", str(store)])
    assert first.exit_code == 0, first.output
    assert "0.2.0 published" in first.output
    assert (store / "0.2.0" / WHEEL).read_bytes() == (release / WHEEL).read_bytes()
    again = run(main, ["release", "publish", str(release), "--pubkey", pub, "--store", str(store)])
    assert "already published" in again.output

    other = signed_release(tmp_path / "other", key)
    (other / WHEEL).write_bytes(b"changed after signing")
    bad = run(main, ["release", "publish", str(other), "--pubkey", pub, "--store", str(store)])
    assert bad.exit_code == 1
    assert "not published (tampered_artifact)" in bad.output


def test_a_version_is_published_once(tmp_path: Path, published: ReleaseStore, key):
    rebuilt = signed_release(tmp_path / "rebuilt", key)
    (rebuilt / "extra.txt").write_text("x")
    with pytest.raises(PublishError, match="tampered_artifact"):
        published.publish(rebuilt, [public_key_of(key)], now=datetime.now(UTC))
    later = tmp_path / "later"
    signed_release(later, key, days=31)  # the same version, other manifest bytes
    with pytest.raises(PublishError, match="already published with another manifest"):
        published.publish(later, [public_key_of(key)], now=datetime.now(UTC))


def test_a_signature_by_an_untrusted_key_is_not_published(tmp_path: Path, key):
    store = ReleaseStore(tmp_path / "store")
    release = signed_release(tmp_path / "r", key)
    other = public_key_of(Ed25519PrivateKey.generate())
    with pytest.raises(PublishError, match="bad_signature"):
        store.publish(release, [other], now=datetime.now(UTC))
    assert store.versions() == []


async def test_a_site_downloads_with_its_mqtt_credentials(client: httpx.AsyncClient, published):
    got = await client.get(f"/releases/0.2.0/{WHEEL}", headers=basic(SITE, PASSWORD))
    assert got.status_code == 200
    assert got.content == (published.root / "0.2.0" / WHEEL).read_bytes()
    manifest = await client.get("/releases/0.2.0/manifest.json", headers=basic(SITE, PASSWORD))
    assert manifest.content == (published.root / "0.2.0" / MANIFEST_NAME).read_bytes()


async def test_a_download_resumes_with_a_range(client: httpx.AsyncClient, published):
    whole = (published.root / "0.2.0" / WHEEL).read_bytes()
    headers = {**basic(SITE, PASSWORD), "Range": "bytes=10000-"}
    got = await client.get(f"/releases/0.2.0/{WHEEL}", headers=headers)
    assert got.status_code == 206
    assert got.content == whole[10000:]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(SITE, "wrong"),
        basic("BJ-CHAOYANG", PASSWORD),
        basic("central", "central-pw"),  # central's own account is not a site
        {"Authorization": "Basic !!!"},
    ],
    ids=["none", "wrong-password", "other-site", "central", "garbage"],
)
async def test_without_site_credentials_nothing_is_served(
    client: httpx.AsyncClient, app: Starlette, headers
):
    got = await client.get(f"/releases/0.2.0/{WHEEL}", headers=headers)
    assert got.status_code == 401
    assert app.state.stats.unauthorized == 1


@pytest.mark.parametrize(
    "path", ["/releases/0.2.0/passwd", "/releases/9.9.9/manifest.json", "/releases/x/y"]
)
async def test_only_files_of_a_published_manifest_are_served(client: httpx.AsyncClient, path: str):
    assert (await client.get(path, headers=basic(SITE, PASSWORD))).status_code == 404
