"""Broker provisioning: files, certificates, password hashes and site bundles (no broker run)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from central.provision import (
    ACL_TEXT,
    BrokerDir,
    ProvisionError,
    add_site,
    hash_password,
    init_broker,
    list_sites,
    remove_site,
    renew_server_cert,
    rotate_site,
    verify_password,
)
from edge_agent.config import MqttConfig, TerminalsConfig, load_config
from protocol.messages import MAX_PAYLOAD_BYTES

URL = "mqtts://hq.example.com:8883"
HASH_RE = re.compile(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==")


@pytest.fixture
def brokerdir(tmp_path: Path) -> BrokerDir:
    return init_broker(tmp_path / "broker", hostnames=["hq.example.com", "10.0.0.5"])


def passwd_users(broker: BrokerDir) -> dict[str, str]:
    lines = broker.passwd.read_text().splitlines()
    return dict(line.split(":", 1) for line in lines)


def bundle_files(bundle: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(bundle) as tar:
        return {m.name: m for m in tar.getmembers()}


def bundle_text(bundle: Path, name: str) -> str:
    with tarfile.open(bundle) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read().decode()


# --- password hashes ------------------------------------------------------------------------


def test_hash_verifies_a_line_written_by_mosquitto_passwd(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "someone", "s3cret pass"], check=True
    )
    user, encoded = passwd.read_text().strip().split(":", 1)
    assert user == "someone"
    assert verify_password("s3cret pass", encoded)
    assert not verify_password("s3cret pas", encoded)
    salt = encoded.split("$")[3]
    assert hash_password("s3cret pass", salt=base64.b64decode(salt)) == encoded


def test_hash_has_mosquitto_2_pbkdf2_format() -> None:
    encoded = hash_password("pw")
    assert HASH_RE.fullmatch(encoded)
    assert verify_password("pw", encoded)
    assert hash_password("pw") != encoded  # a fresh salt each time


@pytest.mark.parametrize(
    "encoded",
    ["", "plain", "$6$abc$def", "$7$x$AAAA$AAAA", "$7$101$!!!$AAAA", "$7$101$AAAA"],
)
def test_verify_rejects_malformed_hashes(encoded: str) -> None:
    assert not verify_password("pw", encoded)


# --- broker init ----------------------------------------------------------------------------


def test_init_writes_every_file_with_private_keys_0600(brokerdir: BrokerDir) -> None:
    for path in (brokerdir.ca_key, brokerdir.server_key, brokerdir.passwd):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert brokerdir.central_password.stat().st_mode & 0o777 == 0o600
    assert brokerdir.data_dir.is_dir()
    assert brokerdir.check() is brokerdir


def test_server_certificate_covers_the_hostnames_and_chains_to_the_ca(
    brokerdir: BrokerDir,
) -> None:
    ca = x509.load_pem_x509_certificate(brokerdir.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(brokerdir.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hq.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    now = dt.datetime.now(dt.UTC)
    assert ca.not_valid_after_utc - now > dt.timedelta(days=9 * 365)
    assert dt.timedelta(days=700) < server.not_valid_after_utc - now < dt.timedelta(days=740)


def test_acl_has_exactly_the_rules_of_the_brief(brokerdir: BrokerDir) -> None:
    rules = [
        line for line in brokerdir.acl.read_text().splitlines() if line and not line.startswith("#")
    ]
    assert rules == [
        "pattern write onecard/v1/site/%u/up/#",
        "pattern read onecard/v1/site/%u/down/#",
        "pattern read onecard/v1/broadcast/#",
        "pattern read onecard/v1/central/state",
        "user central",
        "topic readwrite onecard/v1/#",
    ]
    assert brokerdir.acl.read_text() == ACL_TEXT


def test_conf_has_tls_auth_persistence_and_sized_queues(brokerdir: BrokerDir) -> None:
    conf = brokerdir.conf.read_text()
    settings = [line for line in conf.splitlines() if line and not line.startswith("#")]
    for expected in (
        "allow_anonymous false",
        f"password_file {brokerdir.passwd}",
        f"acl_file {brokerdir.acl}",
        "listener 8883",
        f"certfile {brokerdir.server_cert}",
        f"keyfile {brokerdir.server_key}",
        "persistence true",
        f"persistence_location {brokerdir.data_dir}/",
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        f"message_size_limit {2 * MAX_PAYLOAD_BYTES}",
        "persistent_client_expiration 30d",
        f"log_dest file {brokerdir.log_file}",
    ):
        assert expected in settings
    assert any(line.startswith("max_queued_bytes ") for line in settings)
    assert len([line for line in settings if line.startswith("listener")]) == 1


def test_plain_listener_is_loopback_only_and_only_on_request(tmp_path: Path) -> None:
    broker = init_broker(tmp_path / "b", hostnames=["localhost"], port=18883, plain_port=11883)
    listeners = [line for line in broker.conf.read_text().splitlines() if "listener" in line]
    assert "listener 18883" in listeners
    assert "listener 11883 127.0.0.1" in listeners


def test_central_account_is_in_the_password_file(brokerdir: BrokerDir) -> None:
    password = brokerdir.central_password.read_text().strip()
    assert len(password) >= 43  # 32 random bytes
    assert verify_password(password, passwd_users(brokerdir)["central"])
    assert list_sites(brokerdir.root) == []


def test_init_refuses_a_directory_in_use(brokerdir: BrokerDir) -> None:
    with pytest.raises(ProvisionError, match="not empty"):
        init_broker(brokerdir.root, hostnames=["hq.example.com"])


def test_init_accepts_an_empty_directory(tmp_path: Path) -> None:
    assert init_broker(tmp_path, hostnames=["hq"]).conf.is_file()


@pytest.mark.parametrize("hostnames", [[], ["hq example"], ["mqtts://hq"]])
def test_init_rejects_bad_hostnames(tmp_path: Path, hostnames: list[str]) -> None:
    with pytest.raises(ProvisionError):
        init_broker(tmp_path / "b", hostnames=hostnames)
    assert not (tmp_path / "b").exists()


def test_renewed_server_certificate_keeps_names_and_ca(brokerdir: BrokerDir) -> None:
    old = brokerdir.server_cert.read_bytes()
    renew_server_cert(brokerdir.root)
    ca = x509.load_pem_x509_certificate(brokerdir.ca_cert.read_bytes())
    assert brokerdir.server_cert.read_bytes() != old
    new = x509.load_pem_x509_certificate(brokerdir.server_cert.read_bytes())
    new.verify_directly_issued_by(ca)
    san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hq.example.com"]


def test_renew_cert_from_the_command_line(brokerdir: BrokerDir) -> None:
    from click.testing import CliRunner

    from central.cli import main

    old = brokerdir.server_cert.read_bytes()
    args = ["broker", "renew-cert", "--broker-dir", str(brokerdir.root), "--host", "hq2.example"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert "systemctl reload mosquitto" in done.output
    new = x509.load_pem_x509_certificate(brokerdir.server_cert.read_bytes())
    san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert brokerdir.server_cert.read_bytes() != old
    assert san.get_values_for_type(x509.DNSName) == ["hq2.example"]


# --- sites ----------------------------------------------------------------------------------


def test_add_site_writes_a_bundle_the_edge_can_load(brokerdir: BrokerDir, tmp_path: Path) -> None:
    bundle = add_site(brokerdir.root, "SZ-FUTIAN", broker_url=URL, out=tmp_path)
    assert bundle == tmp_path / "SZ-FUTIAN-bundle.tar"
    assert bundle.stat().st_mode & 0o777 == 0o600
    members = bundle_files(bundle)
    assert set(members) == {"edge.toml", "ca.crt", "mqtt.password", "README.txt"}
    assert members["mqtt.password"].mode == 0o600
    assert bundle_text(bundle, "ca.crt") == brokerdir.ca_cert.read_text()
    password = bundle_text(bundle, "mqtt.password").strip()
    assert verify_password(password, passwd_users(brokerdir)["SZ-FUTIAN"])
    assert "onecard-edge install --bundle SZ-FUTIAN-bundle.tar" in bundle_text(bundle, "README.txt")

    edge_toml = tmp_path / "edge.toml"
    edge_toml.write_text(bundle_text(bundle, "edge.toml"))
    config = load_config(edge_toml, env={})
    assert config.site == "SZ-FUTIAN"
    assert config.data_dir == Path("/var/lib/onecard")
    assert config.terminals == TerminalsConfig()
    assert config.mqtt == MqttConfig(
        url=URL,
        username="SZ-FUTIAN",
        password_file=Path("/etc/onecard/mqtt.password"),
        ca_file=Path("/etc/onecard/ca.crt"),
    )


def test_bundle_goes_to_the_current_directory_or_a_named_file(
    brokerdir: BrokerDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert add_site(brokerdir.root, "BJ01", broker_url=URL) == tmp_path / "BJ01-bundle.tar"
    named = tmp_path / "for-bj02.tar"
    assert add_site(brokerdir.root, "BJ02", broker_url=URL, out=named) == named
    assert named.is_file()


def test_add_site_keeps_other_lines_and_refuses_an_existing_site(
    brokerdir: BrokerDir, tmp_path: Path
) -> None:
    add_site(brokerdir.root, "BJ01", broker_url=URL, out=tmp_path)
    before = brokerdir.passwd.read_text()
    with pytest.raises(ProvisionError, match="BJ01 already exists"):
        add_site(brokerdir.root, "BJ01", broker_url=URL, out=tmp_path)
    assert brokerdir.passwd.read_text() == before
    add_site(brokerdir.root, "BJ02", broker_url=URL, out=tmp_path)
    assert brokerdir.passwd.read_text().startswith(before)


@pytest.mark.parametrize(
    "site",
    ["central", "sz-futian", "A", "-AB", "AB-", "A--B", "A/B", "A+", "#", "A B", "X" * 33, ""],
)
def test_bad_site_ids_are_rejected(brokerdir: BrokerDir, tmp_path: Path, site: str) -> None:
    before = brokerdir.passwd.read_text()
    with pytest.raises(ProvisionError, match="invalid site id"):
        add_site(brokerdir.root, site, broker_url=URL, out=tmp_path)
    with pytest.raises(ProvisionError, match="invalid site id"):
        remove_site(brokerdir.root, site)
    assert brokerdir.passwd.read_text() == before
    assert list(tmp_path.glob("*.tar")) == []


@pytest.mark.parametrize(
    "url",
    [
        "hq.example.com:8883",
        "https://hq.example.com",
        "mqtts://",
        "mqtts://hq.example.com:99999",
        "mqtts://hq.example.com/x",
        'mqtts://hq"x',
        "mqtt://hq.example.com:1883",  # plain MQTT only on loopback
    ],
)
def test_bad_broker_urls_are_rejected(brokerdir: BrokerDir, tmp_path: Path, url: str) -> None:
    with pytest.raises(ProvisionError, match="broker url"):
        add_site(brokerdir.root, "BJ01", broker_url=url, out=tmp_path)
    assert list_sites(brokerdir.root) == []


def test_remove_site_deletes_only_its_line(brokerdir: BrokerDir, tmp_path: Path) -> None:
    for site in ("BJ01", "BJ02", "BJ03"):
        add_site(brokerdir.root, site, broker_url=URL, out=tmp_path)
    users = passwd_users(brokerdir)
    remove_site(brokerdir.root, "BJ02")
    del users["BJ02"]
    assert passwd_users(brokerdir) == users
    assert list_sites(brokerdir.root) == ["BJ01", "BJ03"]
    with pytest.raises(ProvisionError, match="unknown site BJ02"):
        remove_site(brokerdir.root, "BJ02")


def test_rotate_site_replaces_only_its_password(brokerdir: BrokerDir, tmp_path: Path) -> None:
    old_bundle = add_site(brokerdir.root, "BJ01", broker_url=URL, out=tmp_path / "old.tar")
    add_site(brokerdir.root, "BJ02", broker_url=URL, out=tmp_path)
    old_password = bundle_text(old_bundle, "mqtt.password").strip()
    before = passwd_users(brokerdir)
    new_bundle = rotate_site(brokerdir.root, "BJ01", broker_url=URL, out=tmp_path)
    new_password = bundle_text(new_bundle, "mqtt.password").strip()
    after = passwd_users(brokerdir)
    assert not verify_password(old_password, after["BJ01"])
    assert verify_password(new_password, after["BJ01"])
    assert {k: v for k, v in after.items() if k != "BJ01"} == {
        k: v for k, v in before.items() if k != "BJ01"
    }
    assert list(after) == list(before)  # same order: a rotation is an in-place edit
    with pytest.raises(ProvisionError, match="unknown site BJ09"):
        rotate_site(brokerdir.root, "BJ09", broker_url=URL, out=tmp_path)


def test_list_sites_is_sorted_and_omits_central(brokerdir: BrokerDir, tmp_path: Path) -> None:
    for site in ("SZ-FUTIAN", "BJ01", "CANTEEN-3"):
        add_site(brokerdir.root, site, broker_url=URL, out=tmp_path)
    assert list_sites(brokerdir.root) == ["BJ01", "CANTEEN-3", "SZ-FUTIAN"]


def test_password_file_keeps_its_mode_and_owner_when_rewritten(
    brokerdir: BrokerDir, tmp_path: Path
) -> None:
    brokerdir.passwd.chmod(0o640)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        user = pwd.getpwnam("mosquitto")
        owner = (user.pw_uid, user.pw_gid)
        os.chown(brokerdir.passwd, *owner)
    add_site(brokerdir.root, "BJ01", broker_url=URL, out=tmp_path)
    remove_site(brokerdir.root, "BJ01")
    st = brokerdir.passwd.stat()
    assert st.st_mode & 0o777 == 0o640
    assert (st.st_uid, st.st_gid) == owner
    assert sorted(p.name for p in brokerdir.root.iterdir() if p.name.startswith(".passwd")) == []


def test_missing_or_uninitialised_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="no such broker directory"):
        list_sites(tmp_path / "nowhere")
    with pytest.raises(ProvisionError, match="not an initialised broker directory"):
        add_site(tmp_path, "BJ01", broker_url=URL, out=tmp_path)


def test_a_half_deleted_directory_is_not_initialised(brokerdir: BrokerDir, tmp_path: Path) -> None:
    brokerdir.acl.unlink()
    with pytest.raises(ProvisionError, match="missing acl"):
        remove_site(brokerdir.root, "BJ01")
    shutil.rmtree(brokerdir.root)
    with pytest.raises(ProvisionError, match="no such broker directory"):
        rotate_site(brokerdir.root, "BJ01", broker_url=URL, out=tmp_path)


def test_file_system_errors_become_provision_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ProvisionError, match="a-file"):
        init_broker(blocker / "broker", hostnames=["hq"])
