"""The book's table of contents: no dangling entry, no orphan chapter, citations resolve.

These checks are structural and fast; the book build itself (scripts/build_book.sh)
executes every notebook once and fails on any cell error or warning.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import yaml  # a dependency of transformers

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".md", ".ipynb")


def toc_files(toc: dict) -> list[str]:
    """Every ``file:`` entry of a jb-book ``_toc.yml`` (root first), in order."""
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or ():
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", ()):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def resolve(entry: str) -> Path | None:
    """The file a toc entry points at (entries omit the suffix), or None."""
    for suffix in ("", *SUFFIXES):
        path = ROOT / f"{entry}{suffix}"
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="module")
def toc():
    return yaml.safe_load((ROOT / "_toc.yml").read_text())


def test_toc_walker_finds_nested_entries():
    toc = {"root": "a", "parts": [{"chapters": [{"file": "b", "sections": [{"file": "c"}]}]}]}
    assert toc_files(toc) == ["a", "b", "c"]


def test_every_toc_entry_exists(toc):
    files = toc_files(toc)
    assert files[0] == "book/intro"
    missing = [f for f in files if resolve(f) is None]
    assert not missing, f"_toc.yml points at files that do not exist: {missing}"
    assert len(files) == len(set(files)), "an entry appears twice in _toc.yml"


def test_every_notebook_is_in_the_toc(toc):
    """Every chapter notebook (notebooks/*.ipynb; the exercise notebooks below it are not
    pages of the book) is listed."""
    listed = {resolve(f) for f in toc_files(toc)}
    orphans = [p.name for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if p not in listed]
    assert not orphans, f"notebooks missing from _toc.yml (add them under 'Chapters'): {orphans}"


def test_exercise_notebooks_stay_out_of_the_book(toc):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "notebooks/exercises" in config["exclude_patterns"]
    assert not [f for f in toc_files(toc) if f.startswith("notebooks/exercises/")]


def _chapters():
    from rhlens.exercises.generate import exercises

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        yield path, nb, exercises(nb)


def test_every_solution_is_folded_in_the_book():
    """myst-nb folds a code cell tagged hide-input behind a toggle; every solution has the tag,
    and every exercise that has a solution states its difficulty, importance and time."""
    sphinx = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert sphinx["nb_code_prompt_show"] == "Show solution"
    for path, nb, found in _chapters():
        for i, cell in enumerate(nb["cells"]):
            tags = cell.get("metadata", {}).get("tags", [])
            if "solution" in tags:
                assert "hide-input" in tags and cell["cell_type"] == "code", (path.name, i)
        for ex in found:
            assert 1 <= ex["difficulty"] <= 5 and 1 <= ex["importance"] <= 5 and ex["minutes"] > 0
            assert ex["chapter"] == int(path.name[:2]), (path.name, ex["label"])


def test_exercise_numbers_run_in_order_and_no_title_repeats():
    titles = []
    for path, nb, found in _chapters():
        assert [ex["number"] for ex in found] == list(range(1, len(found) + 1)), path.name
        titles += [ex["title"].lower() for ex in found]
    assert len(titles) == len(set(titles)), "two exercises have the same title"


def test_the_colab_badge_opens_the_exercise_notebook():
    """A chapter with exercises links its Colab badge to its exercise notebook (stubs to fill)."""
    for path, nb, found in _chapters():
        if not found:
            continue
        title = "".join(nb["cells"][0]["source"])
        link = re.search(r"\(https://colab\.research\.google\.com/github/[^)]*\)", title)
        assert link and link.group(0).endswith(f"/notebooks/exercises/{path.name})"), \
            f"{path.name}: the Colab badge should open notebooks/exercises/{path.name}"


def test_chapters_are_in_numeric_order(toc):
    chapters = [f for f in toc_files(toc) if f.startswith("notebooks/")]
    numbers = [int(re.match(r"notebooks/(\d+)_", f).group(1)) for f in chapters]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers) and numbers, chapters


def test_every_citation_is_in_the_bibliography():
    keys = set(re.findall(r"@\w+\{([^,\s]+),", (ROOT / "book/references.bib").read_text()))
    assert "wu2024retrieval" in keys
    pages = [*ROOT.glob("book/*.md"), *ROOT.glob("notebooks/*.ipynb")]
    cited = set()
    for page in pages:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text()):
            cited.update(k.strip() for k in group.split(","))
    unknown = sorted(cited - keys)
    assert not unknown, f"citations with no entry in book/references.bib: {unknown}"


def test_build_executes_every_chapter_and_fails_on_errors():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    execute = config["execute"]
    assert execute["execute_notebooks"] == "force" and execute["allow_errors"] is False
    assert config["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    assert "sphinxcontrib.bibtex" in config["sphinx"]["extra_extensions"]
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    script = (ROOT / "scripts/build_book.sh").read_text()
    assert "--warningiserror" in script and "RHLENS_STATIC=1" in script


# --------------------------------------------------------------------------- install source


def _set_repository():
    import importlib.util

    spec = importlib.util.spec_from_file_location("set_repository", ROOT / "scripts" / "set_repository.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_source_and_badges_agree_with_config():
    """One source of truth for where rhlens installs from: _config.yml's repository. Every
    set-up cell, Colab badge, README and intro install line must name it (fix with
    `python scripts/set_repository.py`)."""
    tool = _set_repository()
    url, branch = tool.repository()
    assert url.startswith("https://github.com/")
    assert tool.disagreements() == []
    install, badge = tool.expected(url, branch)
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        text = path.read_text()
        assert install in text, f"{path.name}: its set-up cell does not install from {install}"
        assert badge in text, f"{path.name}: no Colab badge opening {badge}"


def test_install_source_check_finds_a_stale_copy(monkeypatch):
    tool = _set_repository()
    monkeypatch.setattr(tool, "repository", lambda: ("https://github.com/someone/fork", "main"))
    bad = tool.disagreements()
    assert any("README.md" in b for b in bad) and any(".ipynb" in b for b in bad)
    assert all("someone/fork" in b for b in bad)
