"""A pair of linked pseudo-terminals made by socat: a serial cable without the hardware."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path


class PtyPairError(RuntimeError):
    """socat is missing or did not create the pair in time."""


@contextlib.asynccontextmanager
async def pty_pair(timeout_s: float = 5.0) -> AsyncIterator[tuple[Path, Path]]:
    """Yield two device paths; bytes written to one are read from the other (raw, no echo)."""
    socat = shutil.which("socat")
    if socat is None:
        raise PtyPairError(
            "socat is not installed (make test/demo install it: apt-get install socat)"
        )
    with tempfile.TemporaryDirectory(prefix="onecard-pty-") as tmp:
        a, b = Path(tmp, "edge"), Path(tmp, "terminal")
        proc = await asyncio.create_subprocess_exec(
            socat,
            f"pty,raw,echo=0,link={a}",
            f"pty,raw,echo=0,link={b}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    while not (a.exists() and b.exists()):  # noqa: ASYNC240 - a stat on tmpfs
                        if proc.returncode is not None:
                            raise PtyPairError(f"socat exited with {proc.returncode}")
                        await asyncio.sleep(0.02)
            except TimeoutError:
                raise PtyPairError("socat did not create the pty pair in time") from None
            yield a, b
        finally:
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
