"""A private mosquitto made by ``central.provision.init_broker``, for integration tests.

Import it from tests run in ``tests/central`` as ``from broker import PrivateBroker``. The
broker listens with TLS on a free loopback port, with the generated ACL and password file;
it is never the system's mosquitto (which may be running on 127.0.0.1:1883).

Run as root, mosquitto drops privileges to the ``mosquitto`` user *before* it reads the
password file, keys and log, so the broker directory is chowned to that user (as
``docs/deploy.md`` tells operators to do). It lives under a fresh ``/tmp`` directory because
pytest's ``tmp_path`` sits in a root-only (0700) tree the broker could not traverse.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from central.provision import BrokerDir, add_site, init_broker

HOSTNAME = "localhost"
START_TIMEOUT_S = 10.0


class BrokerStartError(RuntimeError):
    """The private mosquitto did not come up; the message holds its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateBroker:
    """A running private mosquitto and the directory it was provisioned from."""

    dir: BrokerDir
    port: int
    bundles: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The ``mqtts://`` URL sites dial."""
        return f"mqtts://{HOSTNAME}:{self.port}"

    def tls_context(self) -> ssl.SSLContext:
        """A client context trusting only the generated CA, with hostname checking."""
        return ssl.create_default_context(cafile=str(self.dir.ca_cert))

    def central_password(self) -> str:
        """Central's password, as ``broker init`` wrote it."""
        return self.dir.central_password.read_text().strip()

    def add_site(self, site: str) -> str:
        """Provision ``site``, reload the broker (it reads passwords only at start and on
        SIGHUP) and return the password from the site's bundle."""
        bundle = add_site(self.dir.root, site, broker_url=self.url, out=self.bundles)
        self.reload()
        return bundle_password(bundle)

    def client(
        self, username: str, password: str, *, identifier: str | None = None, timeout: float = 5
    ) -> aiomqtt.Client:
        """An MQTT v5 client over TLS; ``async with`` it to connect."""
        return aiomqtt.Client(
            HOSTNAME,
            self.port,
            username=username,
            password=password,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=self.tls_context(),
            timeout=timeout,
        )

    def central(self) -> aiomqtt.Client:
        """Central's own client."""
        return self.client("central", self.central_password(), identifier="central-test")

    def log(self) -> str:
        """Everything the broker logged so far."""
        return self.dir.log_file.read_text(errors="replace")

    def stop(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop mosquitto as an operator would (SIGTERM: it saves its persistence file)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def start(self) -> None:
        """Start mosquitto again on the same port, directory and persistence (after
        :meth:`stop`): sessions, their queues and retained messages come back."""
        if self.process.poll() is None:
            raise BrokerStartError("mosquitto is already running")
        self.process = _spawn(self.dir)
        _wait_for_tls(self)

    def reload(self, timeout: float = START_TIMEOUT_S) -> None:
        """SIGHUP the broker and wait until it has re-read its config and password file."""
        before = self.log().count("Reloading config.")
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log().count("Reloading config.") <= before:
            if time.monotonic() > deadline:
                raise BrokerStartError(f"mosquitto did not reload:\n{self.log()}")
            time.sleep(0.02)
        # The log line is written before the files are re-read; a short grace covers it.
        time.sleep(0.1)


def bundle_password(bundle: Path) -> str:
    """The MQTT password inside a site bundle."""
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("mqtt.password")
        assert member is not None
        return member.read().decode().strip()


def _give_to_mosquitto_user(root: Path) -> None:
    if os.geteuid() != 0:
        return  # mosquitto runs as us and reads our files
    user = pwd.getpwnam("mosquitto")
    for path in [root, *root.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)


def _wait_for_tls(broker: PrivateBroker) -> None:
    """Return once the broker completes a TLS handshake on its port."""
    context = broker.tls_context()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if broker.process.poll() is not None:
            raise BrokerStartError(
                f"mosquitto exited ({broker.process.returncode}):\n{_all_logs(broker)}"
            )
        try:
            with (
                socket.create_connection(("127.0.0.1", broker.port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname=HOSTNAME),
            ):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerStartError(f"mosquitto not ready:\n{_all_logs(broker)}") from None
            time.sleep(0.02)


def _all_logs(broker: PrivateBroker) -> str:
    log = broker.log() if broker.dir.log_file.exists() else ""
    console = broker.dir.root.parent / "console.log"
    return log + (console.read_text(errors="replace") if console.exists() else "")


def _spawn(brokerdir: BrokerDir) -> subprocess.Popen[bytes]:
    """Run mosquitto on ``brokerdir`` (its console output appended next to the directory)."""
    with (brokerdir.root.parent / "console.log").open("ab") as console:
        return subprocess.Popen(
            ["mosquitto", "-c", str(brokerdir.conf), "-v"],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def private_broker() -> Iterator[PrivateBroker]:
    """Provision a broker directory, run mosquitto on it, stop and delete it afterwards.

    mosquitto runs with ``-v`` so that ACL denials ("Denied PUBLISH …", a debug-level line)
    reach the log file the tests read.
    """
    base = Path(tempfile.mkdtemp(prefix="onecard-broker-"))
    base.chmod(0o711)  # the broker's user must traverse it to reach its directory
    try:
        port = free_port()
        root = base / "broker"
        brokerdir = init_broker(
            root, hostnames=[HOSTNAME, "127.0.0.1"], port=port, tls_bind="127.0.0.1"
        )
        bundles = base / "bundles"
        bundles.mkdir()
        _give_to_mosquitto_user(root)
        broker = PrivateBroker(dir=brokerdir, port=port, bundles=bundles, process=_spawn(brokerdir))
        try:
            _wait_for_tls(broker)
            yield broker
        finally:
            broker.stop(5)
    finally:
        shutil.rmtree(base, ignore_errors=True)
