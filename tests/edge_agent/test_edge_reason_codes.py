"""The decision codes terminals see are exactly the ones the terminal protocol documents."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.core.reasons import Reason
from protocol.terminal import Code

DOC = Path(__file__).resolve().parents[2] / "docs" / "terminal-protocol.md"


def documented_codes() -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## 12. Decision codes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


def test_every_reason_code_is_documented_for_vendors_and_nothing_else():
    assert documented_codes() == {reason.value for reason in Reason}


def test_every_reason_code_fits_the_wire_format():
    pattern = re.compile(Code.__metadata__[0].pattern)  # type: ignore[attr-defined]
    assert all(pattern.match(reason.value) for reason in Reason)
