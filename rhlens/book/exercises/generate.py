"""Exercise notebooks from the chapters: every marked solution becomes a stub.

A chapter states an exercise in a markdown cell whose first line is
``### Exercise C.N: Title`` and solves it in the next code cell, tagged
``["solution", "hide-input"]`` (the book folds it), between a line ``# BEGIN SOLUTION`` and a
line ``# END SOLUTION``. The exercise notebook is the chapter with each marked region replaced
by ``raise NotImplementedError("Exercise C.N: Title")`` at the marker's indentation (the
``def`` line stays, so the check call in the following cell still runs and fails with its
hint), the ``hide-input`` tag dropped, and every output removed. Nothing else changes, so
running the generator twice gives the same bytes.

>>> cell = {"cell_type": "code", "metadata": {"tags": ["solution", "hide-input"]},
...         "source": ["def f(x):\\n", "    # BEGIN SOLUTION\\n", "    return x\\n",
...                    "    # END SOLUTION\\n"], "outputs": [], "execution_count": 3}
>>> stub = stub_cell(cell, "Exercise 1.1: Identity")
>>> "".join(stub["source"])
'def f(x):\\n    raise NotImplementedError("Exercise 1.1: Identity")\\n'
>>> stub["metadata"], stub["execution_count"]
({'tags': ['solution']}, None)
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
SOLUTION_TAG, HIDE_TAG = "solution", "hide-input"
#: The first line of an exercise statement: ``### Exercise 2.3: The argmax hook``.
HEADING = re.compile(r"^###\s+(Exercise\s+(\d+)\.(\d+):\s*(.+?))\s*$")
#: The second line: ``*Difficulty* 🔴🔴🔴⚪⚪ · *Importance* 🔵🔵🔵🔵⚪ · *About 20 min*``.
RATING = re.compile(r"^\*Difficulty\* ([🔴⚪]{5}) · \*Importance\* ([🔵⚪]{5}) · "
                    r"\*About (\d+) min\*\s*$")


def source_of(cell: dict) -> str:
    """A cell's source as one string (notebooks store it as a list of lines, or a string)."""
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def as_lines(text: str) -> list[str]:
    """``text`` in the notebook format: a list of lines, each but the last ending in a newline."""
    return text.splitlines(keepends=True)


def tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def is_solution(cell: dict) -> bool:
    return cell.get("cell_type") == "code" and SOLUTION_TAG in tags(cell)


def exercise_heading(cell: dict) -> re.Match | None:
    """The ``### Exercise C.N: Title`` match of a markdown cell's first line, or None."""
    if cell.get("cell_type") != "markdown":
        return None
    first = source_of(cell).split("\n", 1)[0]
    return HEADING.match(first)


def exercises(nb: dict) -> list[dict]:
    """Every exercise of a notebook, in order: its label, numbers, rating and cell indices.

    Each entry: ``label`` (``"Exercise 2.3: Title"``), ``chapter``, ``number``, ``title``,
    ``difficulty`` and ``importance`` (counts of 5), ``minutes``, ``statement`` (cell index),
    ``solution`` and ``check`` (indices of the solution cell and the cell after it, or None).
    Raises ValueError when a statement lacks its rating line or a solution cell has no
    statement before it.
    """
    found, cells = [], nb["cells"]
    current = None
    for i, cell in enumerate(cells):
        m = exercise_heading(cell)
        if m:
            lines = source_of(cell).split("\n")
            rating = RATING.match(lines[1]) if len(lines) > 1 else None
            if not rating:
                raise ValueError(f"{m.group(1)!r}: the line after the heading must read "
                                 "'*Difficulty* 🔴🔴⚪⚪⚪ · *Importance* 🔵🔵🔵⚪⚪ · *About 10 min*'.")
            current = {"label": m.group(1), "chapter": int(m.group(2)),
                       "number": int(m.group(3)), "title": m.group(4),
                       "difficulty": rating.group(1).count("🔴"),
                       "importance": rating.group(2).count("🔵"),
                       "minutes": int(rating.group(3)), "statement": i,
                       "solution": None, "check": None}
            found.append(current)
        elif is_solution(cell):
            if current is None or current["solution"] is not None:
                raise ValueError(f"cell {i}: a solution cell needs its own '### Exercise C.N: "
                                 "Title' markdown cell before it.")
            current["solution"] = i
            current["check"] = i + 1 if i + 1 < len(cells) else None
    return found


def stub_source(source: str, label: str) -> str:
    """``source`` with each ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` region (markers
    included) replaced by one ``raise NotImplementedError(label)`` line at the marker's
    indentation."""
    out, inside, n_regions = [], False, 0
    for line in as_lines(source):
        text = line.strip()
        if text == BEGIN:
            if inside:
                raise ValueError(f"{label}: '{BEGIN}' twice without '{END}' between.")
            inside, n_regions = True, n_regions + 1
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}raise NotImplementedError({json.dumps(label, ensure_ascii=False)})\n")
        elif text == END:
            if not inside:
                raise ValueError(f"{label}: '{END}' without '{BEGIN}' before it.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{label}: '{BEGIN}' is never closed by '{END}'.")
    if not n_regions:
        raise ValueError(f"{label}: the solution cell has no '{BEGIN}' ... '{END}' region.")
    text = "".join(out)
    return text[:-1] if text.endswith("\n") and not source.endswith("\n") else text


def clean_cell(cell: dict) -> dict:
    """A copy of ``cell`` without outputs or execution count."""
    cell = copy.deepcopy(cell)
    if cell.get("cell_type") == "code":
        cell["outputs"], cell["execution_count"] = [], None
    return cell


def stub_cell(cell: dict, label: str) -> dict:
    """The exercise-notebook version of a solution cell (see the module docstring)."""
    cell = clean_cell(cell)
    cell["source"] = as_lines(stub_source(source_of(cell), label))
    cell["metadata"]["tags"] = [t for t in tags(cell) if t != HIDE_TAG]
    return cell


def exercise_notebook(nb: dict) -> dict:
    """The exercise notebook of chapter notebook ``nb`` (a new dict; ``nb`` is unchanged)."""
    out = copy.deepcopy(nb)
    labels = {ex["solution"]: ex["label"] for ex in exercises(nb) if ex["solution"] is not None}
    out["cells"] = [stub_cell(c, labels[i]) if i in labels else clean_cell(c)
                    for i, c in enumerate(nb["cells"])]
    return out


def dumps(nb: dict) -> str:
    """The repository's notebook format: indent 1, UTF-8 as is, a trailing newline."""
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def chapters(notebooks: Path) -> list[Path]:
    """The chapter notebooks: ``NN_*.ipynb`` directly under ``notebooks``."""
    return sorted(p for p in notebooks.glob("[0-9][0-9]_*.ipynb"))


def render(notebooks: Path) -> dict[Path, str]:
    """``{exercise notebook path: its text}`` for every chapter under ``notebooks``."""
    return {notebooks / "exercises" / p.name: dumps(exercise_notebook(json.loads(p.read_text())))
            for p in chapters(notebooks)}


def write(notebooks: Path) -> list[Path]:
    """Write the exercise notebooks; return those whose content changed. Exercise notebooks
    whose chapter no longer exists are removed (and listed)."""
    texts = render(notebooks)
    changed = []
    for path, text in texts.items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    for old in sorted((notebooks / "exercises").glob("*.ipynb")):
        if old not in texts:
            old.unlink()
            changed.append(old)
    return changed
