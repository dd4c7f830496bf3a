"""The exercise notebooks are generated from the chapters and committed: they must be current,
the generator must be idempotent, and a stub must keep everything but the solution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rhlens.book.exercises.generate import (
    chapters,
    dumps,
    exercise_notebook,
    exercises,
    render,
    source_of,
    stub_source,
    write,
)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def _nb(*cells) -> dict:
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}


def _code(text, tags=None, outputs=()):
    return {"cell_type": "code", "execution_count": 7 if outputs else None,
            "metadata": {"tags": tags} if tags else {}, "outputs": list(outputs),
            "source": text.splitlines(keepends=True)}


STATEMENT = _md("### Exercise 3.2: Two heads\n"
                "*Difficulty* 🔴🔴🔴⚪⚪ · *Importance* 🔵🔵⚪⚪⚪ · *About 20 min*\n\nDo it.")
SOLUTION = _code("import torch\n\ndef f(x):\n    y = 1\n    # BEGIN SOLUTION\n    return x + y\n"
                 "    # END SOLUTION\n\n\nclass A:\n    def g(self):\n        # BEGIN SOLUTION\n"
                 "        return 2\n        # END SOLUTION", ["solution", "hide-input"],
                 outputs=[{"output_type": "stream", "name": "stdout", "text": ["x\n"]}])
CHECK = _code("ch03.check_two_heads(f)", outputs=[{"output_type": "stream", "name": "stdout",
                                                     "text": ["✓\n"]}])


def test_committed_exercise_notebooks_are_current():
    """Fails when a chapter changed and `make exercises` was not run."""
    texts = render(NOTEBOOKS)
    stale = [p.name for p, text in texts.items() if not p.is_file() or p.read_text() != text]
    assert not stale, f"exercise notebooks out of date (run `make exercises`): {stale}"
    extra = sorted({p.name for p in (NOTEBOOKS / "exercises").glob("*.ipynb")}
                   - {p.name for p in texts})
    assert not extra, f"exercise notebooks without a chapter: {extra}"
    assert len(texts) == len(chapters(NOTEBOOKS)) >= 9


def test_a_stub_keeps_the_def_lines_and_drops_only_the_solution():
    nb = _nb(_md("# 3. Title"), STATEMENT, SOLUTION, CHECK)
    out = exercise_notebook(nb)
    stub = out["cells"][2]
    assert source_of(stub) == (
        "import torch\n\ndef f(x):\n    y = 1\n"
        '    raise NotImplementedError("Exercise 3.2: Two heads")\n\n\nclass A:\n'
        '    def g(self):\n        raise NotImplementedError("Exercise 3.2: Two heads")')
    assert stub["metadata"]["tags"] == ["solution"] and stub["outputs"] == []
    assert stub["execution_count"] is None
    assert out["cells"][3]["outputs"] == [] and source_of(out["cells"][3]) == source_of(CHECK)
    assert out["cells"][:2] == nb["cells"][:2]
    assert nb["cells"][2]["outputs"]  # the chapter itself is left alone
    exec(compile(source_of(stub), "stub", "exec"), ns := {})
    with pytest.raises(NotImplementedError, match=r"^Exercise 3.2: Two heads$"):
        ns["f"](1)


def test_the_same_chapter_gives_the_same_bytes():
    nb = _nb(STATEMENT, SOLUTION, CHECK)
    assert dumps(exercise_notebook(nb)) == dumps(exercise_notebook(json.loads(dumps(nb))))


@pytest.mark.parametrize("source,message", [
    ("def f():\n    return 1\n", "no '# BEGIN SOLUTION'"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    # END SOLUTION\n", "without '# BEGIN SOLUTION'"),
])
def test_malformed_markers_are_refused_with_a_clear_message(source, message):
    with pytest.raises(ValueError, match=message):
        stub_source(source, "Exercise 1.1: X")


def test_a_statement_needs_its_rating_and_a_solution_its_statement():
    bad = _md("### Exercise 1.1: No rating\n\nDo it.")
    with pytest.raises(ValueError, match="Difficulty"):
        exercises(_nb(bad))
    with pytest.raises(ValueError, match="needs its own"):
        exercises(_nb(SOLUTION))
    (ex,) = exercises(_nb(STATEMENT, SOLUTION, CHECK))
    assert (ex["label"], ex["difficulty"], ex["importance"], ex["minutes"], ex["solution"],
            ex["check"]) == ("Exercise 3.2: Two heads", 3, 2, 20, 1, 2)


def test_write_is_idempotent_and_removes_orphans(tmp_path):
    (tmp_path / "03_x.ipynb").write_text(dumps(_nb(STATEMENT, SOLUTION, CHECK)))
    (tmp_path / "exercises").mkdir()
    (tmp_path / "exercises" / "99_gone.ipynb").write_text("{}")
    first = write(tmp_path)
    assert sorted(p.name for p in first) == ["03_x.ipynb", "99_gone.ipynb"]
    assert not (tmp_path / "exercises" / "99_gone.ipynb").exists()
    assert write(tmp_path) == []
    text = (tmp_path / "exercises" / "03_x.ipynb").read_text()
    assert text.endswith("}\n") and json.loads(text)["cells"][1]["metadata"]["tags"] == ["solution"]


def test_the_script_runs_and_reports_no_change():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_exercises.py")],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().endswith("0 exercise notebook(s) changed")
