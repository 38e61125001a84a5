"""The fuzzing corpus, replayed: every file of ``fuzz/corpus/<name>/`` through its harness.

The harnesses in ``fuzz/`` are run by atheris for minutes at a time (``make fuzz``); here
each committed input — the seeds and every reproducer kept after a fix — goes once through
the harness's own ``check``, so a decoder change that breaks an invariant on any of them
fails CI without atheris. The seeds must also still be what they claim: valid input that
gets past the first checks (a seed the decoder now refuses would fuzz nothing).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from protocol.errors import MessageError

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = ("frames", "messages", "imports")


def harness(name: str) -> ModuleType:
    """``fuzz/fuzz_<name>.py`` as a module (its folder is not a package)."""
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    return importlib.import_module(f"fuzz_{name}")


def _files(name: str) -> list[Path]:
    """The committed inputs of harness ``name``, as the fuzzer reads them."""
    files: list[Path] = harness("common").corpus_files(name)
    return files


CASES = [
    pytest.param(name, path, id=f"{name}/{path.name}")
    for name in HARNESSES
    for path in _files(name)
]


@pytest.mark.parametrize(("name", "path"), CASES)
def test_every_corpus_input_keeps_its_harness_invariant(name: str, path: Path) -> None:
    harness(name).check(path.read_bytes())


@pytest.mark.parametrize("name", HARNESSES)
def test_every_harness_has_seeds(name: str) -> None:
    assert any(p.name.startswith("seed-") for p in _files(name))


def test_frame_seeds_cover_every_frame_type() -> None:
    from protocol.framing import FrameDecoder, FrameType

    seen = {
        frame.type
        for path in _files("frames")
        for frame in FrameDecoder().feed(path.read_bytes()[1:])
    }
    assert seen >= {int(t) for t in FrameType}


def test_message_seeds_are_valid_and_cover_every_decoder() -> None:
    messages = harness("messages")
    covered: set[str] = set()
    for path in _files("messages"):
        if not path.name.startswith("seed-"):
            continue
        decoder, payload = messages.select(path.read_bytes())
        try:
            result = decoder.decode(payload)
        except MessageError as exc:
            pytest.fail(f"{path.name}: the seed is refused: {exc}")
        assert result is not None, path.name
        covered.add(decoder.name)
    assert covered == set(messages.SELECTORS)


def test_member_seeds_import_and_the_formula_seed_is_refused_as_formulas() -> None:
    imports = harness("imports")
    from central.core.members import ExistingData, plan_import
    from central.core.tables import read_table

    verdicts = {}
    for path in _files("imports"):
        if not path.name.startswith("seed-members"):
            continue
        which, data = imports.pick(path.read_bytes(), len(imports.IMPORTERS))
        filename = imports.IMPORTERS[which][0]
        plan = plan_import(
            read_table(data, filename),
            batch_id="seed",
            operator="test",
            now=imports.NOW,
            existing=ExistingData(),
        )
        verdicts[path.name] = {issue.code for issue in plan.errors}
    assert verdicts.pop("seed-members-formula") == {"formula"}
    assert verdicts and all(codes == set() for codes in verdicts.values()), verdicts


def test_statement_seeds_have_payment_lines() -> None:
    imports = harness("imports")
    from central.core.statements import parse_statement

    for path in _files("imports"):
        if path.name.startswith("seed-statement"):
            _, data = imports.pick(path.read_bytes(), len(imports.IMPORTERS))
            assert parse_statement(data).lines, path.name
