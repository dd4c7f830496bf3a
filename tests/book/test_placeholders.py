"""No chapter is published with a placeholder where a measured runtime, a headline or a verdict belongs.

A chapter's prose is written after its cells have run; while it is being written, the spots that wait for the
executed output hold a capitalised marker (``RUNTIME``, ``HEADLINE``, ``..._VERDICT``). This test fails if one
is left in a chapter's markdown, naming the chapter and the marker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"))
MARKER = re.compile(r"\b(?:RUNTIME(?:_CPU)?|HEADLINE|[A-Z]+_VERDICT)\b")


def markers(markdown: str) -> list[str]:
    return MARKER.findall(markdown)


def test_the_marker_pattern_finds_placeholders_and_leaves_prose_alone():
    assert markers("**Runtime:** CPU about RUNTIME min") == ["RUNTIME"]
    assert markers("**Headline result:** HEADLINE") == ["HEADLINE"]
    assert markers("the table above. ATT_VERDICT") == ["ATT_VERDICT"]
    assert markers("set `RHLENS_MODEL` or read rhlens.PAPER_MODELS; runtime 12 min") == []


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_placeholder_is_left_in_a_chapter(path):
    cells = json.loads(path.read_text())["cells"]
    found = [m for c in cells if c["cell_type"] == "markdown" for m in markers("".join(c["source"]))]
    assert not found, f"{path.name}: placeholders left in the markdown: {sorted(set(found))}"
