"""What every harness in ``fuzz/`` shares: running under atheris, and reading a corpus.

A harness module defines ``check(data: bytes) -> None``: it feeds ``data`` to a decoder and
raises :class:`InvariantError` if the decoder broke its contract (any other exception
escaping ``check`` is a crash too). The same function is what atheris drives and what
``tests/protocol/test_fuzz_corpus.py`` replays the committed corpus through, so CI checks
every seed and every reproducer kept in ``fuzz/corpus/<name>/``.

atheris is imported only in :func:`run`: importing a harness (as the tests do) needs
nothing but the project itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

#: ``fuzz/corpus``: one folder of seed inputs per harness, kept in the repository.
CORPUS = Path(__file__).resolve().parent / "corpus"


class InvariantError(AssertionError):
    """A decoder returned something it must not, or raised something undocumented."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`InvariantError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise InvariantError(message)


def pick(data: bytes, count: int) -> tuple[int, bytes]:
    """Split ``data`` into a selector in ``range(count)`` and the rest.

    A first byte below ``count`` selects that entry as is, so seeds written for the entries
    of today keep their meaning when entries are appended; larger bytes wrap around.
    """
    if not data:
        return 0, b""
    first = data[0]
    return (first if first < count else first % count), data[1:]


def corpus_files(name: str) -> list[Path]:
    """The committed inputs of harness ``name`` (sorted, so test ids are stable)."""
    return sorted(p for p in (CORPUS / name).iterdir() if p.is_file() and p.name[0] != ".")


def run(check: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """Fuzz ``check`` with atheris (libFuzzer flags and corpus folders from ``argv``).

    Every Python module already imported is instrumented, so the project's decoders give
    coverage feedback; this takes a few seconds at start.
    """
    import atheris  # type: ignore[import-untyped]  # noqa: PLC0415 - fuzzing runs only

    atheris.instrument_all()
    atheris.Setup(sys.argv if argv is None else argv, check)
    atheris.Fuzz()
