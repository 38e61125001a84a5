"""Broker provisioning: a ready-to-run mosquitto directory and per-site credentials.

Operators never hand-write mosquitto config. :func:`init_broker` creates a directory holding
a private CA, the broker's TLS certificate, ``mosquitto.conf``, the ACL of the architecture
brief and a password file with central's own account. :func:`add_site` gives a branch its
MQTT credentials and writes the **bundle** (``edge.toml``, ``ca.crt``, ``mqtt.password``,
``README.txt``) a technician copies to the branch. :func:`remove_site`, :func:`rotate_site`
and :func:`list_sites` manage them afterwards.

mosquitto reads the password file at start and on ``SIGHUP`` (``systemctl reload
mosquitto``): after adding, removing or rotating a site, reload the broker. A reload also
drops the connections of users who are no longer in the file. See ``docs/deploy.md``.

Passwords are hashed in mosquitto 2.0's own format (``$7$``: PBKDF2-HMAC-SHA512), exactly
what ``mosquitto_passwd`` writes, so no mosquitto tool is needed at HQ. Every file is
rewritten atomically (temporary file, fsync, rename) and keeps its owner and mode, so a file
chowned to the ``mosquitto`` user stays readable by the broker after ``site add`` run as root.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import hmac
import io
import ipaddress
import os
import secrets
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.errors import TopicError
from protocol.messages import MAX_PAYLOAD_BYTES
from protocol.topics import PREFIX, check_site_id

#: Central's MQTT username. Lower case, so it can never collide with a site id (upper case).
CENTRAL_USER = "central"
#: mosquitto_passwd's defaults for ``$7$`` hashes (mosquitto 2.0 ``src/password_mosq.c``).
PW_ITERATIONS = 101
PW_SALT_BYTES = 12
CA_DAYS = 10 * 365
SERVER_DAYS = 2 * 365
#: Where the bundle's files go on the branch PC.
EDGE_ETC = Path("/etc/onecard")


class ProvisionError(Exception):
    """A provisioning step cannot be done; the message says what and how to fix it."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _os_errors_mapped(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Report a file the operator cannot read or write as a ProvisionError naming it."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except PermissionError as exc:
            raise ProvisionError(
                f"{exc.filename}: permission denied (run as root or as the directory's owner)"
            ) from exc
        except OSError as exc:
            raise ProvisionError(f"{exc.filename}: {exc.strerror or exc}") from exc

    return wrapper


@dataclass(frozen=True, slots=True)
class BrokerDir:
    """The files of a broker directory made by :func:`init_broker`."""

    root: Path

    @property
    def conf(self) -> Path:
        """mosquitto's configuration: ``mosquitto -c`` this file."""
        return self.root / "mosquitto.conf"

    @property
    def passwd(self) -> Path:
        """mosquitto password file: central and every site."""
        return self.root / "passwd"

    @property
    def acl(self) -> Path:
        """mosquitto ACL file."""
        return self.root / "acl"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate edges trust (goes into every bundle)."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA's private key: keep it for certificate renewal, the broker never reads it."""
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The broker's TLS certificate."""
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        """The broker's TLS private key."""
        return self.root / "server.key"

    @property
    def central_password(self) -> Path:
        """Password of central's own MQTT account (username ``central``)."""
        return self.root / "central.password"

    @property
    def data_dir(self) -> Path:
        """mosquitto's persistence directory."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        """mosquitto's log."""
        return self.root / "mosquitto.log"

    @property
    def _lock(self) -> Path:
        return self.root / ".provision.lock"

    def check(self) -> BrokerDir:
        """Return self, or raise :class:`ProvisionError` if the directory is not usable."""
        if not self.root.is_dir():
            raise ProvisionError(f"{self.root}: no such broker directory (run broker init)")
        missing = [
            p.name for p in (self.conf, self.passwd, self.acl, self.ca_cert) if not p.is_file()
        ]
        if missing:
            raise ProvisionError(
                f"{self.root}: not an initialised broker directory (missing {', '.join(missing)}; "
                "run broker init)"
            )
        return self


# --- mosquitto password hashes -------------------------------------------------------------


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``password`` in mosquitto 2.0's ``$7$`` format: ``$7$101$<b64 salt>$<b64 sha512>``."""
    salt = secrets.token_bytes(PW_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PW_ITERATIONS)
    return f"$7${PW_ITERATIONS}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash as mosquitto would check it."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return hmac.compare_digest(digest, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _new_password() -> str:
    # 32 random bytes, URL-safe base64: no character that needs quoting in TOML or a shell.
    return secrets.token_urlsafe(32)


def _read_users(path: Path) -> tuple[list[str], dict[str, int]]:
    """The password file's lines and, per username, the index of its line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    users = {
        line.split(":", 1)[0]: i
        for i, line in enumerate(lines)
        if line.strip() and not line.startswith("#")
    }
    return lines, users


def _write_users(path: Path, lines: list[str]) -> None:
    _write_atomic(path, "".join(f"{line}\n" for line in lines).encode(), mode=0o600)


# --- files ----------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` by ``data`` all at once. An existing file keeps its owner and mode."""
    uid = gid = -1
    try:
        st = path.stat()
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if uid != -1 and (uid, gid) != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), uid, gid)
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(broker: BrokerDir) -> Iterator[None]:
    """Serialise changes to one broker directory (two technicians adding sites at once)."""
    with broker._lock.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --- certificates ---------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(*allowed: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{usage: usage in allowed for usage in _KEY_USAGES})


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    # ECDSA P-256 rather than Ed25519: every TLS stack an edge PC may run verifies it.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _san(hostnames: list[str]) -> x509.SubjectAlternativeName:
    if not hostnames:
        raise ProvisionError("give at least one host name or IP address the sites will dial")
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c in host for c in " /:@") or not host.isascii():
                raise ProvisionError(f"{host!r} is neither a DNS name nor an IP address") from None
            names.append(x509.DNSName(host.lower()))
    return x509.SubjectAlternativeName(names)


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hostnames: list[str]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    san = _san(hostnames)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@_os_errors_mapped
def renew_server_cert(broker_dir: Path, *, hostnames: list[str] | None = None) -> Path:
    """Issue a new 2-year server certificate from the directory's CA; return its path.

    ``hostnames`` default to those of the current certificate. Edges keep trusting the same
    CA, so nothing changes at the branches. mosquitto loads the new certificate on reload.
    """
    broker = BrokerDir(broker_dir).check()
    try:
        ca_key = serialization.load_pem_private_key(broker.ca_key.read_bytes(), password=None)
    except FileNotFoundError:
        raise ProvisionError(f"{broker.ca_key}: the CA key is needed to renew") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{broker.ca_key}: not an ECDSA key made by broker init")
    ca_cert = x509.load_pem_x509_certificate(broker.ca_cert.read_bytes())
    if hostnames is None:
        old = x509.load_pem_x509_certificate(broker.server_cert.read_bytes())
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hostnames = [str(n.value) for n in san]
    key, cert = _make_server_cert(ca_key, ca_cert, hostnames)
    with _locked(broker):
        _write_atomic(broker.server_key, _pem_key(key), mode=0o600)
        _write_atomic(broker.server_cert, _pem_cert(cert), mode=0o644)
    return broker.server_cert


@_os_errors_mapped
def issue_web_cert(
    broker_dir: Path, *, hostnames: list[str], out_dir: Path | None = None
) -> tuple[Path, Path]:
    """A 2-year certificate for central's HTTPS listener (``serve --http … --tls-cert
    --tls-key``), issued by the broker's CA — the CA every edge already trusts (``ca.crt`` of
    its bundle), so edges download releases over HTTPS with nothing new to install. Writes
    ``web.crt`` and ``web.key`` (0600) into ``out_dir`` (default: the broker directory)."""
    broker = BrokerDir(broker_dir).check()
    try:
        ca_key = serialization.load_pem_private_key(broker.ca_key.read_bytes(), password=None)
    except FileNotFoundError:
        raise ProvisionError(f"{broker.ca_key}: the CA key is needed to issue one") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{broker.ca_key}: not an ECDSA key made by broker init")
    ca_cert = x509.load_pem_x509_certificate(broker.ca_cert.read_bytes())
    key, cert = _make_server_cert(ca_key, ca_cert, hostnames)
    out = out_dir or broker.root
    out.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out / "web.key", out / "web.crt"
    _write_atomic(key_path, _pem_key(key), mode=0o600)
    _write_atomic(cert_path, _pem_cert(cert), mode=0o644)
    return cert_path, key_path


# --- mosquitto.conf and ACL -----------------------------------------------------------------

ACL_TEXT = f"""\
# onecard broker ACL (written by broker init; see docs/deploy.md). A site's MQTT username is
# its site id, which mosquitto substitutes for %u: each site writes only its own uplink and
# reads only its own downlink plus the broadcasts. Central checks payload site = topic site.
pattern write {PREFIX}/site/%u/up/#
pattern read {PREFIX}/site/%u/down/#
pattern read {PREFIX}/broadcast/#
pattern read {PREFIX}/central/state

# Central's own account. Lower case: it can never be a site id.
user {CENTRAL_USER}
topic readwrite {PREFIX}/#
"""

#: Per-client queue of QoS 1 messages while the client is offline or slow.
MAX_QUEUED_MESSAGES = 100_000
MAX_QUEUED_BYTES = 256 * 1024 * 1024


def _conf_text(
    broker: BrokerDir, *, port: int, plain_port: int | None, tls_bind: str | None
) -> str:
    plain = ""
    if plain_port is not None:
        plain = f"""
# FOR TESTS ONLY: plain MQTT, loopback only. A production broker has no such listener.
listener {plain_port} 127.0.0.1
"""
    bind = f" {tls_bind}" if tls_bind else ""
    return f"""\
# onecard broker, written by `onecard-central broker init` (docs/deploy.md).
# Run: mosquitto -c {broker.conf}
# Reload after `site add/remove/rotate` (re-reads passwd and acl, drops removed users):
#   systemctl reload mosquitto   (or: kill -HUP <pid>)

per_listener_settings false
allow_anonymous false
password_file {broker.passwd}
acl_file {broker.acl}

# TLS: the certificate is signed by the CA in {broker.ca_cert}, which every bundle holds.
listener {port}{bind}
certfile {broker.server_cert}
keyfile {broker.server_key}
{plain}
# Queues survive a broker restart. Saved every 60 s and at shutdown; the edge's outbox, not
# the broker, is the store of record (records are deleted there only on central's ack).
persistence true
persistence_location {broker.data_dir}/
autosave_interval 60
persistent_client_expiration 30d

# Queue sizing (per client, QoS 1, while it is offline or slow). The default of 1000 would
# silently drop messages for a site - or for central - out for a long lunch. Sizing:
# - a site's downlink (acks, feed changes, commands, blacklist deltas) is a few messages per
#   minute, a few thousand for hours offline;
# - central's session queues every site's uplink while central is down: records arrive in
#   batches (many records per message) within a small in-flight window per site, plus birth
#   messages and replies - 100 sites x some hundred messages for hours of outage.
# 100000 messages covers both with a wide margin. Bytes are capped too (256 MiB), because
# mosquitto keeps queues in memory. Past either limit messages are dropped, which costs a
# resend from the edge's outbox, never a record.
max_queued_messages {MAX_QUEUED_MESSAGES}
max_queued_bytes {MAX_QUEUED_BYTES}
# Unacknowledged QoS 1 messages in flight to each client (MQTT v5 clients may ask for fewer).
max_inflight_messages 100
# Twice protocol.messages.MAX_PAYLOAD_BYTES (1 MiB): a payload between the two reaches central,
# which dead-letters it with its reason (visible at HQ); beyond that the broker drops it.
message_size_limit {2 * MAX_PAYLOAD_BYTES}

log_dest file {broker.log_file}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


@_os_errors_mapped
def init_broker(
    out_dir: Path,
    *,
    hostnames: list[str],
    port: int = 8883,
    plain_port: int | None = None,
    tls_bind: str | None = None,
) -> BrokerDir:
    """Create a broker directory at ``out_dir`` (absent or empty) and return its paths.

    ``hostnames`` are the DNS names and IP addresses the sites dial; they become the server
    certificate's subject alternative names. The TLS listener takes ``port`` on all
    interfaces, or on ``tls_bind`` only. ``plain_port`` adds a plain listener on 127.0.0.1
    for tests; never use it in production.
    """
    _san(hostnames)  # validate before creating anything
    out_dir = out_dir.absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ProvisionError(f"{out_dir}: exists and is not empty; broker init wants a new dir")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    broker = BrokerDir(out_dir)
    broker.data_dir.mkdir(mode=0o700)

    ca_key, ca_cert = _make_ca(f"onecard broker CA {hostnames[0]}")
    key, cert = _make_server_cert(ca_key, ca_cert, hostnames)
    _write_atomic(broker.ca_key, _pem_key(ca_key), mode=0o600)
    _write_atomic(broker.ca_cert, _pem_cert(ca_cert), mode=0o644)
    _write_atomic(broker.server_key, _pem_key(key), mode=0o600)
    _write_atomic(broker.server_cert, _pem_cert(cert), mode=0o644)
    _write_atomic(broker.acl, ACL_TEXT.encode(), mode=0o644)

    central_password = _new_password()
    _write_atomic(broker.central_password, f"{central_password}\n".encode(), mode=0o600)
    _write_users(broker.passwd, [f"{CENTRAL_USER}:{hash_password(central_password)}"])
    conf = _conf_text(broker, port=port, plain_port=plain_port, tls_bind=tls_bind)
    _write_atomic(broker.conf, conf.encode(), mode=0o644)
    return broker


# --- sites ----------------------------------------------------------------------------------


def _check_site(site: str) -> str:
    try:
        return check_site_id(site)
    except TopicError as exc:
        raise ProvisionError(str(exc)) from None


@_os_errors_mapped
def list_sites(broker_dir: Path) -> list[str]:
    """The site ids with credentials in the password file, sorted."""
    broker = BrokerDir(broker_dir).check()
    _, users = _read_users(broker.passwd)
    return sorted(u for u in users if u != CENTRAL_USER)


@_os_errors_mapped
def add_site(broker_dir: Path, site: str, *, broker_url: str, out: Path | None = None) -> Path:
    """Give ``site`` MQTT credentials and write its bundle; return the bundle's path.

    ``broker_url`` is what the edge dials, ``mqtts://HOST:PORT``. ``out`` is the bundle file,
    or a directory to write ``SITE-bundle.tar`` into (default: the current directory).
    Reload mosquitto afterwards.
    """
    return _issue(broker_dir, site, broker_url=broker_url, out=out, new=True)


@_os_errors_mapped
def rotate_site(broker_dir: Path, site: str, *, broker_url: str, out: Path | None = None) -> Path:
    """Give ``site`` a new password and a new bundle; the old password stops working on reload."""
    return _issue(broker_dir, site, broker_url=broker_url, out=out, new=False)


@_os_errors_mapped
def remove_site(broker_dir: Path, site: str) -> None:
    """Delete ``site``'s credentials. On reload mosquitto refuses it and drops its connection."""
    broker = BrokerDir(broker_dir).check()
    _check_site(site)
    with _locked(broker):
        lines, users = _read_users(broker.passwd)
        if site not in users:
            raise ProvisionError(f"unknown site {site}: it has no MQTT credentials")
        del lines[users[site]]
        _write_users(broker.passwd, lines)


def _issue(broker_dir: Path, site: str, *, broker_url: str, out: Path | None, new: bool) -> Path:
    broker = BrokerDir(broker_dir).check()
    _check_site(site)
    url = _check_url(broker_url)
    bundle = _bundle_path(site, out)
    password = _new_password()
    with _locked(broker):
        lines, users = _read_users(broker.passwd)
        if new and site in users:
            raise ProvisionError(
                f"site {site} already exists (use site rotate for new credentials)"
            )
        if not new and site not in users:
            raise ProvisionError(f"unknown site {site}: add it first")
        # The bundle first: credentials nobody received would only lock the site out.
        data = _bundle_bytes(site, url, password, broker.ca_cert.read_bytes())
        _write_atomic(bundle, data, mode=0o600)
        line = f"{site}:{hash_password(password)}"
        if site in users:
            lines[users[site]] = line
        else:
            lines.append(line)
        _write_users(broker.passwd, lines)
    return bundle


def _check_url(url: str) -> str:
    """``url`` without a trailing slash, or ProvisionError unless it is ``mqtts://HOST[:PORT]``."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ProvisionError(f"broker url {url!r}: bad port") from None
    host = parts.hostname or ""
    if (
        parts.scheme not in {"mqtts", "mqtt"}
        or not host
        or parts.path not in {"", "/"}
        or parts.username
        or parts.query
        or parts.fragment
        or not url.isascii()
        or any(c in url for c in '"\\ \t\r\n')
    ):
        raise ProvisionError(f"broker url {url!r} must look like mqtts://HOST:PORT")
    if parts.scheme == "mqtt" and host not in {"localhost", "127.0.0.1", "::1"}:
        raise ProvisionError(f"broker url {url!r}: plain mqtt:// is for loopback tests; use mqtts")
    return f"{parts.scheme}://{parts.netloc}"


def _bundle_path(site: str, out: Path | None) -> Path:
    name = f"{site}-bundle.tar"
    if out is None:
        return Path.cwd() / name
    if out.is_dir():
        return out / name
    if not out.parent.is_dir():
        raise ProvisionError(f"{out.parent}: no such directory for the bundle")
    return out


def _edge_toml(site: str, url: str) -> str:
    return f"""\
# onecard edge configuration for site {site}, made at HQ by `onecard-central site add`.
# Every key: docs/edge-config.md. Check with `onecard-edge check-config`.
site = "{site}"
data_dir = "/var/lib/onecard"

[terminals]
listen = "0.0.0.0:7700"
serial = []
heartbeat_s = 10

[mqtt]
url = "{url}"
username = "{site}"
password_file = "{EDGE_ETC / "mqtt.password"}"
ca_file = "{EDGE_ETC / "ca.crt"}"
"""


def _readme(site: str, url: str) -> str:
    return f"""\
onecard edge bundle for site {site}
===================================

This bundle lets the branch's edge PC connect to HQ ({url}).
It holds a password: keep it private and delete it once installed.

  edge.toml       the edge configuration (site {site})
  ca.crt          HQ's broker certificate authority
  mqtt.password   this site's MQTT password (username {site})

Install (on the edge PC, as root):

  onecard-edge install --bundle {site}-bundle.tar

or by hand: copy the three files to {EDGE_ETC}/ (mqtt.password with mode 0600, owned by
the user onecard-edge runs as), then run `onecard-edge check-config` and restart the edge.

A new bundle for the same site (after `site rotate` at HQ) replaces the old one; the old
password stops working once HQ reloads its broker.
"""


def _bundle_bytes(site: str, url: str, password: str, ca_pem: bytes) -> bytes:
    members = [
        ("edge.toml", _edge_toml(site, url).encode(), 0o644),
        ("ca.crt", ca_pem, 0o644),
        ("mqtt.password", f"{password}\n".encode(), 0o600),
        ("README.txt", _readme(site, url).encode(), 0o644),
    ]
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
