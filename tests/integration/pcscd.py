"""A private pcscd with the vpcd reader driver, and a pyscard client talking to it.

Why a mount namespace: pcsc-lite 1.9.9's pcscd ignores ``PCSCLITE_CSOCK_NAME`` (only
libpcsclite, the client side, reads it) and hard-codes ``/run/pcscd/pcscd.comm`` and
``pcscd.pid``. A second pcscd next to the system's refuses to start ("Another pcscd seems to
be running") and, on exit, deletes the system's socket. So ours runs under ``unshare
--mount`` (with ``--map-root-user`` when not root), where

* a temp dir is bind-mounted over the parent of pcscd's ipcdir (``/run``): its socket and pid
  file land in the temp dir and the host's ``/run`` is never touched;
* an empty dir is bind-mounted over pcscd's USB drivers dir, so it never claims a real USB
  reader that belongs to the system pcscd; the vpcd driver is loaded from a copy;

and clients find it with ``PCSCLITE_CSOCK_NAME=<tmp>/run/pcscd/pcscd.comm``.

libpcsclite reads ``PCSCLITE_CSOCK_NAME`` once per process, so pyscard runs in a child
process (:class:`PcscClient`, this file run as a script) that is told the socket from birth,
whatever else the test process has done. Running this file is only for that purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

FRIENDLY_NAME = "onecard vpcd"
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_DEFAULT_IPC_DIR = "/run/pcscd"
_DEFAULT_DROP_DIR = "/usr/lib/pcsc/drivers"
_VPCD_DRIVER_DIRS = (
    "/usr/lib/pcsc/drivers/serial",
    "/usr/lib64/pcsc/drivers/serial",
    "/usr/local/lib/pcsc/drivers/serial",
)


class PcscdError(RuntimeError):
    """pcscd (or what it needs) is missing or did not come up."""


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A free TCP port ``p`` whose neighbour ``p + 1`` is free too.

    vpcd opens two reader slots, listening on CHANNELID and CHANNELID + 1.
    """
    for _ in range(100):
        with socket.socket() as first:
            first.bind((host, 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
            return port
    raise PcscdError("no two adjacent free TCP ports on loopback")


def _find_program(name: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_SBIN_PATH}")
    if path is None:
        raise PcscdError(
            f"{name!r} not found in PATH or {_SBIN_PATH}: the pcscd integration tests need "
            "the Debian packages pcscd and vsmartcard-vpcd (the Makefile installs them)"
        )
    return path


def _pcscd_dirs(pcscd: str) -> tuple[Path, Path]:
    """pcscd's compiled-in (ipcdir, usbdropdir), from ``pcscd --version``."""
    out = subprocess.run(
        [pcscd, "--version"], capture_output=True, text=True, timeout=5, check=False
    ).stdout
    ipc = re.search(r"ipcdir=(\S+)", out)
    drop = re.search(r"usbdropdir=(\S+)", out)
    return (
        Path(ipc.group(1) if ipc else _DEFAULT_IPC_DIR),
        Path(drop.group(1) if drop else _DEFAULT_DROP_DIR),
    )


def _find_vpcd_driver(drop_dir: Path) -> Path:
    candidates = [drop_dir / "serial", *map(Path, _VPCD_DRIVER_DIRS)]
    for directory in candidates:
        driver = directory / "libifdvpcd.so"
        if driver.exists():
            return driver
    raise PcscdError(
        "libifdvpcd.so not found in "
        + ", ".join(map(str, candidates))
        + ": install the Debian package vsmartcard-vpcd (the Makefile does)"
    )


class PrivatePcscd:
    """``pcscd --foreground`` in its own mount namespace with one vpcd reader entry.

    vpcd listens on ``vpcd_port`` (reader ``<FRIENDLY_NAME> 00 00``) and ``vpcd_port + 1``
    (``... 00 01``) on all interfaces. A card connects there to be inserted. Use as a
    context manager, or :meth:`start` / :meth:`stop`. Start and stop block; call them
    through ``asyncio.to_thread`` while a card is being served from the event loop.
    """

    def __init__(self, *, vpcd_port: int | None = None, workdir: Path | None = None) -> None:
        self.vpcd_port = vpcd_port if vpcd_port is not None else free_port_pair()
        self.reader_name = f"{FRIENDLY_NAME} 00 00"
        #: A fixed work dir (created on start, deleted on stop): the client socket keeps its
        #: path across restarts, so a client can be told it before pcscd (re)starts.
        self.workdir = workdir
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_path: Path | None = None

    @property
    def socket_path(self) -> Path:
        """The daemon's client socket, for ``PCSCLITE_CSOCK_NAME``."""
        if self._socket_path is None:
            if self.workdir is None:
                raise PcscdError("pcscd is not started")
            ipc_dir, _ = _pcscd_dirs(_find_program("pcscd"))
            return self.workdir / "run" / ipc_dir.name / "pcscd.comm"
        return self._socket_path

    def client_env(self) -> dict[str, str]:
        """The environment for a process whose libpcsclite must talk to this pcscd."""
        return {**os.environ, "PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    def log_text(self) -> str:
        """What pcscd has written to stdout and stderr so far."""
        if self._dir is None:
            return ""
        log = self._dir / "pcscd.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def start(self, timeout: float = 10.0) -> None:
        """Start pcscd and return once it accepts clients (its readers are up by then)."""
        pcscd, unshare = _find_program("pcscd"), _find_program("unshare")
        ipc_dir, drop_dir = _pcscd_dirs(pcscd)
        driver = _find_vpcd_driver(drop_dir)
        # The temp dir must not be under the dir _launch hides, or pcscd could not see it.
        hidden = Path(tempfile.gettempdir()).resolve().is_relative_to(ipc_dir.parent)
        base = "/tmp" if hidden else None
        if self.workdir is not None:
            self.workdir.mkdir(parents=True)
            self._dir = workdir = self.workdir
        else:
            self._dir = workdir = Path(tempfile.mkdtemp(prefix="onecard-pcscd-", dir=base))
        try:
            self._launch(
                workdir,
                pcscd=pcscd,
                unshare=unshare,
                ipc_dir=ipc_dir,
                drop_dir=drop_dir,
                driver=driver,
            )
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _launch(
        self,
        workdir: Path,
        *,
        pcscd: str,
        unshare: str,
        ipc_dir: Path,
        drop_dir: Path,
        driver: Path,
    ) -> None:
        """Write the reader.conf and driver copy into ``workdir``; spawn pcscd."""
        hidden = ipc_dir.parent  # bind over the parent: ipcdir may not exist on the host
        run_dir = workdir / "run"
        (run_dir / ipc_dir.name).mkdir(parents=True)
        (workdir / "no-usb-drivers").mkdir()
        (workdir / "reader.conf.d").mkdir()
        shutil.copy2(driver, workdir / "libifdvpcd.so")
        (workdir / "reader.conf.d" / "vpcd").write_text(
            f'FRIENDLYNAME "{FRIENDLY_NAME}"\n'
            f"DEVICENAME   /dev/null:0x{self.vpcd_port:04X}\n"
            f"LIBPATH      {workdir / 'libifdvpcd.so'}\n"
            f"CHANNELID    0x{self.vpcd_port:04X}\n"
        )
        self._socket_path = run_dir / ipc_dir.name / "pcscd.comm"

        # mount -n: no /run/mount/utab bookkeeping on the host's /run.
        script = 'mount -n --bind "$1" "$2"'
        if drop_dir.is_dir():
            script += ' && mount -n --bind "$3" "$4"'
        script += ' && exec "$5" --foreground --info --config "$6"'
        as_root = [] if os.geteuid() == 0 else ["--map-root-user"]
        argv = [
            unshare, "--mount", "--propagation", "private", *as_root, "--",
            "/bin/sh", "-c", script, "sh",
            str(run_dir), str(hidden), str(workdir / "no-usb-drivers"), str(drop_dir),
            pcscd, str(workdir / "reader.conf.d"),
        ]  # fmt: skip
        with (workdir / "pcscd.log").open("wb") as log:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise PcscdError(
                    f"private pcscd exited with {self._process.returncode} while starting "
                    f"(unshare needs root or unprivileged user namespaces):\n{self.log_text()}"
                )
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(self.socket_path))
                except OSError:
                    pass
                else:
                    return
            if time.monotonic() > deadline:
                raise PcscdError(f"private pcscd not ready after {timeout} s:\n{self.log_text()}")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pcscd (SIGTERM, then SIGKILL) and delete its temp dir. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrivatePcscd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PcscClientError(Exception):
    """A PC/SC call failed in the client process; ``kind`` is the exception class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class PcscClient:
    """pyscard in a child process bound to one :class:`PrivatePcscd` reader, driven over
    JSON lines on its stdin/stdout. Every call is async so that a card served by the same
    event loop can answer meanwhile, and bounded by ``call_timeout``.
    """

    def __init__(self, process: asyncio.subprocess.Process, call_timeout: float) -> None:
        self._process = process
        self._call_timeout = call_timeout

    @classmethod
    async def start(cls, pcscd: PrivatePcscd, *, call_timeout: float = 10.0) -> PcscClient:
        """Spawn the client process for ``pcscd``'s first vpcd reader."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, pcscd.reader_name,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=pcscd.client_env(),
        )  # fmt: skip
        return cls(process, call_timeout)

    async def close(self) -> None:
        """Ask the client to exit and wait for it (killing it if it hangs)."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            async with asyncio.timeout(5):
                await self._process.communicate()
        except TimeoutError:
            self._process.kill()
            await self._process.communicate()

    async def _call(self, op: str, **args: Any) -> Any:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        async with asyncio.timeout(self._call_timeout):
            await self._process.stdin.drain()
            line = await self._process.stdout.readline()
        if not line:
            raise PcscClientError("EOFError", f"client process died during {op}")
        reply = json.loads(line)
        if "error" in reply:
            raise PcscClientError(reply["error"], reply["message"])
        return reply["result"]

    async def readers(self) -> list[str]:
        """``smartcard.System.readers()`` as names."""
        result: list[str] = await self._call("readers")
        return result

    async def wait_for_card(self, *, present: bool, within: float = 5.0) -> None:
        """Block (SCardGetStatusChange) until the reader has a card, or has none.

        Raises PcscClientError of kind TimeoutError after ``within`` seconds.
        """
        await self._call("wait_for_card", present=present, within=within)

    async def connect(self) -> bytes:
        """Connect to the card (T=0 or T=1, shared) and return its ATR.

        Raises PcscClientError of kind NoCardException when the reader is empty.
        """
        return bytes.fromhex(await self._call("connect"))

    async def transmit(self, apdu: bytes) -> bytes:
        """Send a command APDU; return response data and status word as one bytes."""
        return bytes.fromhex(await self._call("transmit", apdu=apdu.hex()))

    async def disconnect(self) -> None:
        """Disconnect from the card (leaving it powered in the reader)."""
        await self._call("disconnect")

    async def time_transmits(self, apdu: bytes, count: int) -> list[float]:
        """Send ``apdu`` ``count`` times; each round trip's duration in seconds."""
        result: list[float] = await self._call("time_transmits", apdu=apdu.hex(), count=count)
        return result


# --- the client process -----------------------------------------------------------------


class _ClientProcess:
    """The child side of :class:`PcscClient`: pyscard on one reader, one connection.

    smartcard is imported inside the methods: only this child process may load libpcsclite.
    """

    def __init__(self, reader_name: str) -> None:
        self.reader_name = reader_name
        self.connection: Any = None

    def readers(self) -> list[str]:
        from smartcard.System import readers

        return [str(reader) for reader in readers()]

    def wait_for_card(self, present: bool, within: float) -> None:
        from smartcard import scard

        hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult != scard.SCARD_S_SUCCESS:
            raise OSError(scard.SCardGetErrorMessage(hresult))
        try:
            deadline = time.monotonic() + within
            known = scard.SCARD_STATE_UNAWARE
            while True:
                left_ms = max(0, int((deadline - time.monotonic()) * 1000))
                hresult, states = scard.SCardGetStatusChange(
                    context, left_ms, [(self.reader_name, known)]
                )
                if hresult == scard.SCARD_E_TIMEOUT:
                    change = "inserted" if present else "removed"
                    raise TimeoutError(f"card not {change} within {within} s")
                if hresult != scard.SCARD_S_SUCCESS:
                    raise OSError(scard.SCardGetErrorMessage(hresult))
                event = states[0][1]
                if bool(event & scard.SCARD_STATE_PRESENT) == present:
                    return
                known = event & ~scard.SCARD_STATE_CHANGED
        finally:
            scard.SCardReleaseContext(context)

    def connect(self) -> str:
        from smartcard.System import readers

        for reader in readers():
            if str(reader) == self.reader_name:
                connection = reader.createConnection()
                connection.connect()
                self.connection = connection
                return bytes(connection.getATR()).hex()
        raise LookupError(f"no reader {self.reader_name!r}")

    def transmit(self, apdu: str) -> str:
        data, sw1, sw2 = self.connection.transmit(list(bytes.fromhex(apdu)))
        return bytes([*data, sw1, sw2]).hex()

    def time_transmits(self, apdu: str, count: int) -> list[float]:
        command = list(bytes.fromhex(apdu))
        durations = []
        for _ in range(count):
            started = time.perf_counter()
            self.connection.transmit(command)
            durations.append(time.perf_counter() - started)
        return durations

    def disconnect(self) -> None:
        if self.connection is not None:
            self.connection.disconnect()
            self.connection.release()
            self.connection = None

    def serve(self) -> None:
        """One JSON request per stdin line, one JSON reply per stdout line, until EOF."""
        for line in sys.stdin:
            request = json.loads(line)
            try:
                reply = {"result": getattr(self, request.pop("op"))(**request)}
            except Exception as exc:  # noqa: BLE001 -- every failure goes back to the test
                reply = {"error": type(exc).__name__, "message": str(exc)}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    _ClientProcess(sys.argv[1]).serve()
