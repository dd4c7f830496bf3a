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

ROOT = Path(__file__).resolve().parents[2]
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
    from rhlens.book.exercises.generate import exercises

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
    for path, _nb, found in _chapters():
        assert [ex["number"] for ex in found] == list(range(1, len(found) + 1)), path.name
        titles += [ex["title"].lower() for ex in found]
    assert len(titles) == len(set(titles)), "two exercises have the same title"


def _badges(text: str) -> dict[str, str]:
    """``{alt text: URL}`` of the Colab badges in markdown ``text``."""
    return dict(re.findall(r"\[!\[([^\]]+)\]\(https://colab\.research\.google\.com/assets/"
                           r"colab-badge\.svg\)\]\((https://colab\.research\.google\.com/github/[^)]*)\)",
                           text))


def test_two_badges_open_the_chapter_and_its_exercises():
    """The chapter (solutions in: Run all runs to the end) and its exercise notebook (stubs),
    each said; the exercise notebook says at its top where Run all stops and how to skip ahead,
    and links back to the chapter."""
    for path, nb, _ in _chapters():
        badges = _badges("".join(nb["cells"][0]["source"]))
        assert badges.get("Open the chapter in Colab", "").endswith(f"/notebooks/{path.name}"), \
            f"{path.name}: no badge opening the chapter itself"
        assert badges.get("Open the exercises in Colab", "").endswith(
            f"/notebooks/exercises/{path.name}"), f"{path.name}: no badge opening its exercises"
        exercise = json.loads((ROOT / "notebooks" / "exercises" / path.name).read_text())
        top = "".join(exercise["cells"][0]["source"])
        assert _badges(top) == {"Open the chapter in Colab": badges["Open the chapter in Colab"]}
        for words in ("*Run all* stops at the first exercise you have not solved",
                      "one-line hint", "skip ahead", "Run after"):
            assert words in top, f"exercises/{path.name}: its top does not say {words!r}"


# --- the set-up cell: one folded cell, the same on Colab and in CI ------------------------

def _code_cells(nb: dict) -> list[tuple[int, str]]:
    return [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def _chapter_notebooks():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        yield path, json.loads(path.read_text())


def test_every_chapter_opens_with_one_folded_set_up_cell():
    install = '%pip install -q "rhlens[colab] @ git+'
    for path, nb in _chapter_notebooks():
        (first, source), *rest = _code_cells(nb)
        meta = nb["cells"][first]["metadata"]
        assert "hide-input" in meta.get("tags", []) and meta.get("cellView") == "form", path.name
        assert meta.get("mystnb", {}).get("code_prompt_show") == "Show set-up", path.name
        lines = source.splitlines()
        assert lines[0].startswith("# @title Set-up") and len(lines) <= 8, path.name
        assert 'if importlib.util.find_spec("rhlens") is None:' in source and install in source
        assert "rhlens.notebook(" in source, f"{path.name}: the set-up does not call rhlens.notebook"
        for plumbing in ("subprocess", "RHLENS_SOURCE", "model_menu", "chapter_runtime"):
            assert plumbing not in source, f"{path.name}: {plumbing} is back in the set-up cell"
        assert not any("%pip" in s or "rhlens.notebook(" in s for _, s in rest), path.name


def test_the_set_up_line_sizes_memory_for_the_chapters_longest_prompt():
    """``tokens=`` in ``rhlens.notebook(...)`` is what the GPU memory is computed for: it must be
    at least every prompt length the chapter's paper branch asks for."""
    for path, nb in _chapter_notebooks():
        (_, setup), *rest = _code_cells(nb)
        m = re.search(r"rhlens\.notebook\(paper=\"([\w.-]+)\", tokens=([\d_]+)\)", setup)
        if path.name.startswith("01_"):
            assert m is None and "rhlens.notebook()" in setup      # toy models only
            continue
        assert m, f"{path.name}: rhlens.notebook(paper=..., tokens=...) not found"
        tokens = int(m.group(2).replace("_", ""))
        code = "\n".join(s for _, s in rest)
        asked = [int(n) for group in re.findall(
            r"RT\.(?:grid\(paper=(?:rhlens\.)?Grid\(|lengths\(paper=)\[([\d, _]+)\]", code)
            for n in group.replace("_", "").split(",") if n.strip()]
        assert asked, f"{path.name}: no paper-branch prompt lengths found"
        assert tokens >= max(asked), f"{path.name}: tokens={tokens} < {max(asked)} asked for"


#: A string literal naming a folder of this repository: a chapter opened alone (Colab, an
#: installed wheel) has none of them beside it.
REPO_PATH = re.compile(r"(^|[\s/'\"])(\.\./|notebooks/|rhlens/|tests/|benchmarks/|scripts/|"
                       r"book/|shared/|data/)")


def _string_literals(source: str) -> list[str]:
    """The string literals of a code cell's Python (IPython ``%`` / ``!`` lines: as a whole)."""
    import io
    import tokenize

    python, shell = [], []
    for line in source.splitlines():
        (shell if line.lstrip().startswith(("%", "!")) else python).append(line)
    strings = list(shell)
    for tok in tokenize.generate_tokens(io.StringIO("\n".join(python) + "\n").readline):
        if tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            strings.append(tok.string)
    return strings


def test_every_notebook_cell_has_a_unique_id():
    """nbformat 4.5 requires a cell id (nbformat warns of a cell without one now and will refuse
    it later): every cell of every chapter and exercise notebook has one, unique in its
    notebook, of the schema's characters."""
    import nbformat

    bad = []
    for path in [*sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")),
                 *sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb"))]:
        nb = json.loads(path.read_text())
        assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5), path.name
        ids = [cell.get("id") for cell in nb["cells"]]
        if None in ids or len(set(ids)) != len(ids) or not all(
                re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids):
            bad.append(path.relative_to(ROOT))
        nbformat.validate(nbformat.reads(path.read_text(), as_version=4))
    assert not bad, f"cells without a unique valid id: {bad}"


def test_string_literals_are_told_apart_from_comments():
    src = ('x = load("notebooks/data/a.csv")  # made by: rhlens score --out rhlens/data/a.csv\n'
           '!ls ../data\ny = f"{z}/runs"\n')
    found = [s for s in _string_literals(src) if REPO_PATH.search(s)]
    assert found == ["!ls ../data", '"notebooks/data/a.csv"']


def test_no_notebook_reads_a_path_of_the_repository():
    """Chapters and exercise notebooks reach shipped files through ``rhlens.data.path`` only;
    commands in comments (how a stored run was made, run from a checkout) may name paths."""
    offenders = []
    notebooks = [*sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")),
                 *sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb"))]
    assert len(notebooks) >= 18
    for path in notebooks:
        for i, source in _code_cells(json.loads(path.read_text())):
            for literal in _string_literals(source):
                if REPO_PATH.search(literal) and "git+https://" not in literal:
                    offenders.append(f"{path.relative_to(ROOT)} cell {i}: {literal}")
    assert not offenders, ("notebooks name repository paths (ship the file in rhlens/data and "
                           "read it with rhlens.data.path): " + "; ".join(offenders))


def _package_files() -> list[str]:
    """Every file of the package that is not Python source: what the wheel must carry as data."""
    package = ROOT / "rhlens"
    return sorted(str(p.relative_to(ROOT)) for p in package.rglob("*")
                  if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
                  and not any(part.endswith(".egg-info") for part in p.parts))


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    """The file names inside a wheel built from this checkout, as scripts/colab_chapters.sh
    builds it (a copy of the sources, no build isolation: offline, a few seconds)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "rhlens", src / "rhlens",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(work / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("rhlens-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_every_data_file_a_chapter_reads_ships_in_the_wheel(wheel_names):
    """``data.path("name")`` in a chapter or an exercise notebook names a file that the wheel
    carries, as do the package's other data files (the published maps, ``py.typed``)."""
    named = set()
    for path in [*(ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"),
                 *(ROOT / "notebooks" / "exercises").glob("*.ipynb")]:
        for _, source in _code_cells(json.loads(path.read_text())):
            named |= set(re.findall(r"""data\.path\(\s*["']([^"']+)["']""", source))
    assert {"ch04_ksweep.csv", "ch05_patch_smollm2-135m.csv"} <= named
    missing = sorted(n for n in named if f"rhlens/data/{n}" not in wheel_names)
    assert not missing, (f"chapters read data files the wheel does not ship: {missing} (put them "
                         "in rhlens/data/, which pyproject.toml's package-data ships)")
    files = _package_files()
    assert "rhlens/data/published_heads.json" in files and "rhlens/py.typed" in files
    unshipped = [f for f in files if f not in wheel_names]
    assert not unshipped, f"package files the wheel leaves out (pyproject.toml package-data): {unshipped}"


def _colab_table() -> dict[str, str]:
    """``{chapter: what it runs on}`` of the CHAPTERS table in scripts/colab_chapters.sh."""
    script = (ROOT / "scripts" / "colab_chapters.sh").read_text()
    block = re.search(r"^CHAPTERS='\n(.*?)^'", script, re.S | re.M)
    assert block, "scripts/colab_chapters.sh has no CHAPTERS='...' table"
    rows = [line.split() for line in block.group(1).splitlines() if line.strip()]
    assert all(len(r) == 2 for r in rows), "a CHAPTERS line is '<chapter> <model or cpu>'"
    table = dict(rows)
    assert len(table) == len(rows), "a chapter has two lines in CHAPTERS"
    return table


def test_the_colab_job_has_one_line_per_chapter_and_covers_every_architecture():
    """Every chapter has its line in scripts/colab_chapters.sh: a paper checkpoint's stand-in
    when its set-up names a paper model, ``cpu`` when it loads none; the stand-ins cover each of
    the paper's architectures."""
    from rhlens.models.registry import ARCHITECTURES, PAPER_MODELS, is_standin, paper_key

    table = _colab_table()
    chapters = {path.name[:2]: nb for path, nb in _chapter_notebooks()}
    assert set(table) == set(chapters), (
        f"chapters without a line in CHAPTERS: {sorted(set(chapters) - set(table))}; "
        f"lines without a chapter: {sorted(set(table) - set(chapters))}")
    for ch, model in table.items():
        (_, setup), *_ = _code_cells(chapters[ch])
        if "rhlens.notebook(paper=" in setup:
            assert is_standin(model), f"chapter {ch}: {model!r} is not tiny-<paper key>"
        else:
            assert model == "cpu", f"chapter {ch} loads no pretrained model: its line says cpu"
    covered = {PAPER_MODELS[paper_key(m)].arch for m in table.values() if m != "cpu"}
    assert covered == set(ARCHITECTURES), f"no stand-in of {set(ARCHITECTURES) - covered}"


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
    assert execute["run_in_temp"] is True          # each chapter alone, in an empty folder
    assert config["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    assert "sphinxcontrib.bibtex" in config["sphinx"]["extra_extensions"]
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    script = (ROOT / "scripts/build_book.sh").read_text()
    assert "--warningiserror" in script and "RHLENS_STATIC=1" in script


# --------------------------------------------------------------------------- install source


def test_install_source_and_badges_agree_with_config(script):
    """One source of truth for where rhlens installs from: _config.yml's repository. Every
    set-up cell, Colab badge, README and intro install line must name it (fix with
    `python scripts/set_repository.py`)."""
    tool = script("scripts/set_repository.py")
    url, branch = tool.repository()
    assert url.startswith("https://github.com/")
    assert tool.disagreements() == []
    install, badge = tool.expected(url, branch)
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        text = path.read_text()
        assert install in text, f"{path.name}: its set-up cell does not install from {install}"
        assert badge in text, f"{path.name}: no Colab badge opening {badge}"


def test_install_source_check_finds_a_stale_copy(monkeypatch, script):
    tool = script("scripts/set_repository.py")
    monkeypatch.setattr(tool, "repository", lambda: ("https://github.com/someone/fork", "main"))
    bad = tool.disagreements()
    assert any("README.md" in b for b in bad) and any(".ipynb" in b for b in bad)
    assert all("someone/fork" in b for b in bad)

# --- roles: {term}, {cite}, {doc} ---------------------------------------------------------

def _pages():
    return [*sorted(ROOT.glob("book/**/*.md")), *sorted(ROOT.glob("notebooks/*.ipynb"))]


def _markdown(page: Path) -> str:
    """The text of a page that Sphinx parses as MyST: a .md file, or a notebook's markdown cells."""
    if page.suffix == ".ipynb":
        import json

        cells = json.loads(page.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return page.read_text()


def glossary_terms() -> list[str]:
    """The terms of book/glossary.md's ``{glossary}`` block, in file order."""
    text = (ROOT / "book/glossary.md").read_text()
    block = text.split("```{glossary}", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith((" ", ":"))]


def role_targets(role: str, text: str) -> list[str]:
    """Targets of ``{role}`text``` or ``{role}`label <target>``` in MyST text."""
    out = []
    for body in re.findall(r"\{" + role + r"\}`([^`]+)`", text):
        m = re.match(r"^(.*)<([^<>]+)>\s*$", body, re.S)
        out.append((m.group(2) if m else body).strip())
    return out


def test_role_target_parsing():
    text = "{term}`KV cache` and {term}`heads <Induction head>`, {doc}`../notebooks/01_toy_models`"
    assert role_targets("term", text) == ["KV cache", "Induction head"]
    assert role_targets("doc", text) == ["../notebooks/01_toy_models"]


def test_glossary_is_sorted_and_has_no_duplicates():
    terms = glossary_terms()
    assert len(terms) >= 40
    assert terms == sorted(terms, key=str.lower), "keep book/glossary.md in alphabetical order"
    assert len({t.lower() for t in terms}) == len(terms)


def test_glossary_defines_the_terms_the_chapters_rely_on():
    defined = {t.lower() for t in glossary_terms()}
    needed = ["induction head", "previous-token head", "phase change", "prefill", "chunked prefill",
              "teacher forcing", "logit difference", "restored fraction", "counterfactual prompt",
              "rouge-1 recall", "token f1", "extractqa", "moe", "sparse upcycling", "rope",
              "dynamic ntk", "sliding window", "streaming heads", "control pool", "k grid",
              "spearman correlation", "top-k overlap", "gguf", "attention sink", "stability",
              "universality"]
    missing = [t for t in needed if t not in defined]
    assert not missing, f"book/glossary.md lacks: {missing}"


def test_every_term_used_has_a_glossary_entry():
    defined = {t.lower() for t in glossary_terms()}
    unknown = {}
    for page in _pages():
        for target in role_targets("term", _markdown(page)):
            if target.lower() not in defined:
                unknown.setdefault(page.name, []).append(target)
    assert not unknown, f"{{term}} roles without a glossary entry: {unknown}"
    used = sum(len(role_targets("term", _markdown(p))) for p in _pages())
    assert used >= 40, "chapters should link glossary terms with {term}"


def test_every_cite_key_in_markdown_cells_is_in_the_bibliography():
    keys = set(re.findall(r"@\w+\{([^,\s]+),", (ROOT / "book/references.bib").read_text()))
    assert {"fu2024headkv", "xiao2024duoattention", "tang2024razorattention"} <= keys
    unknown = {}
    for page in _pages():
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", _markdown(page)):
            for key in (k.strip() for k in group.split(",")):
                if key not in keys:
                    unknown.setdefault(page.name, []).append(key)
    assert not unknown, f"citations with no entry in book/references.bib: {unknown}"


def test_every_doc_link_points_at_a_page_of_the_toc(toc):
    listed = {resolve(f) for f in toc_files(toc)}
    broken = {}
    for page in _pages():
        for target in role_targets("doc", _markdown(page)):
            base = (ROOT / target.lstrip("/")) if target.startswith("/") else (page.parent / target)
            found = next((p for s in ("", *SUFFIXES) if (p := Path(f"{base}{s}")).is_file()), None)
            if found is None or found.resolve() not in {p.resolve() for p in listed if p}:
                broken.setdefault(page.name, []).append(target)
    assert not broken, f"{{doc}} links to pages that are not in _toc.yml: {broken}"


# --- reading aids ---------------------------------------------------------------------------

READING_AID_CHAPTERS = ["01", "02", "03", "04", "06", "07", "08", "09", "10"]


@pytest.mark.parametrize("number", READING_AID_CHAPTERS)
def test_chapter_opens_with_reading_aids_and_closes_with_a_check(number):
    import json

    (path,) = ROOT.glob(f"notebooks/{number}_*.ipynb")
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
    first, last = "".join(cells[0]["source"]), "".join(cells[-1]["source"])
    assert first.startswith(f"# {int(number)}. "), f"{path.name}: title must read '# {int(number)}. ...'"
    for aid in ("**Prerequisites:**", "**Runtime:** CPU about", "**Headline result:**"):
        assert aid in first, f"{path.name}: the first cell lacks {aid}"
    assert "RUNTIME_CPU" not in first, f"{path.name}: the CPU runtime is a placeholder"
    assert "## Summary" in last and "## Check your understanding" in last
    answers = last.count("```{admonition} Answer")
    assert 2 <= answers <= 4 and last.count(":class: dropdown") == answers


def test_chapter_titles_are_numbered_one_way():
    import json

    for path in sorted(ROOT.glob("notebooks/*.ipynb")):
        title = "".join(json.loads(path.read_text())["cells"][0]["source"]).splitlines()[0]
        number = int(path.name.split("_")[0])
        assert title.startswith(f"# {number}. "), f"{path.name}: {title!r}"


# --- API reference --------------------------------------------------------------------------

def test_api_reference_has_a_page_per_subpackage_and_builds_with_autodoc(toc):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    extensions = config["sphinx"]["extra_extensions"]
    assert {"sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon"} <= set(extensions)
    files = set(toc_files(toc))
    assert "book/api/index" in files
    package = ROOT / "rhlens"
    tops = sorted(p.stem for p in package.glob("*.py") if p.stem not in {"__init__", "__main__"})
    tops += sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file())
    for top in tops:
        page = ROOT / "book/api" / f"{top}.md"
        assert page.is_file() and f"book/api/{top}" in files, f"no API page for rhlens.{top}"
        text = page.read_text()
        assert f".. automodule:: rhlens.{top}\n" in text
        modules = [] if not (package / top).is_dir() else [
            "rhlens." + ".".join(p.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
            for p in (package / top).rglob("*.py") if p.name != "__init__.py" or p.parent != package / top]
        for module in modules:  # every module of the subpackage has its section on the page
            assert f".. automodule:: {module}\n" in text, f"book/api/{top}.md lacks {module}"


# --- glued figures --------------------------------------------------------------------------
# A number that a page's prose quotes from its own output is pasted with myst-nb's glue
# (`{glue:text}`ch04_top13:.1f``), so the text cannot drift from what the cells computed. A
# name that no cell glues would only warn at build time, after half an hour of execution:
# these checks read the sources and fail in a second.

GLUE_ROLE = re.compile(r"\{glue(?::\w*)?\}`([^`]+)`")
GLUE_DIRECTIVE = re.compile(r"^\s*(?:`{3,}|:{3,})\{glue(?::\w+)?\}\s+(\S+)", re.M)
GLUE_CALL = re.compile(r"\bglue\(\s*(f?)([\"'])(.+?)\2")


def _code(page: Path) -> str:
    """The code a page executes: a notebook's code cells, a MyST page's ``{code-cell}`` blocks."""
    if page.suffix == ".ipynb":
        cells = json.loads(page.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return "\n".join(re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", page.read_text(), re.S))


def glue_references(page: Path, text: str | None = None) -> list[tuple[Path, str]]:
    """``(page that must glue it, name)`` for every glued name ``page``'s markdown pastes;
    ``path::name`` pastes from another page, relative to this one."""
    text = _markdown(page) if text is None else text
    refs = []
    for body in GLUE_ROLE.findall(text) + GLUE_DIRECTIVE.findall(text):
        doc, _, key = body.rpartition("::")
        key = key.split(":")[0].strip()  # {glue:text}`name:.1f`
        refs.append(((page.parent / doc).resolve() if doc else page.resolve(), key))
    return refs


def glued_names(code: str) -> list[re.Pattern]:
    """The names the code glues, as patterns: ``glue(f"ch04_top{k}", ...)`` glues ``ch04_top.+``."""
    names = []
    for is_f, _, name in GLUE_CALL.findall(code):
        parts = re.split(r"\{[^}]*\}", name) if is_f else [name]
        names.append(re.compile(".+".join(map(re.escape, parts))))
    return names


def glue_prefix(page: Path) -> str:
    """Every glued name starts with its page's prefix (``ch04_``, ``paper_``), so names of two
    pages never collide when one pastes from the other."""
    number = re.match(r"(\d+)_", page.name)
    return f"ch{number.group(1)}_" if number and page.suffix == ".ipynb" else f"{page.stem}_"


def _glue_pages() -> list[Path]:
    return [p for p in _pages() if "{glue" in _markdown(p) or "glue(" in _code(p)]


def test_glue_parsing_reads_every_form():
    text = ("{glue:text}`ch04_top:.1f` {glue:}`ch04_n` {glue}`ch04_m` "
            "{glue:text}`../notebooks/04_x.ipynb::ch04_far:.0f`\n```{glue:figure} ch04_fig\n```\n")
    page = ROOT / "book" / "intro.md"
    refs = glue_references(page, text)
    assert [k for _, k in refs] == ["ch04_top", "ch04_n", "ch04_m", "ch04_far", "ch04_fig"]
    assert refs[3][0] == (ROOT / "notebooks/04_x.ipynb").resolve() and refs[0][0] == page.resolve()
    code = 'glue("ch04_top", x)\nglue(f"ch04_k{k}_top", y, display=False)\nglue(\'ch04_n\', 3)'
    names = glued_names(code)
    assert [bool(p.fullmatch("ch04_k13_top")) for p in names] == [False, True, False]
    assert names[0].fullmatch("ch04_top") and names[2].fullmatch("ch04_n")
    assert not any(p.fullmatch("ch04_missing") for p in names)


def unglued(pages) -> list[str]:
    """One line per ``{glue:...}`name``` of ``pages``' markdown that no code cell of its page
    (or of the page a ``path::name`` reference points at) glues."""
    missing = []
    for page in pages:
        for target, key in glue_references(page):
            if not target.is_file():
                missing.append(f"{page.name}: pastes {key!r} from {target.name}, which does not exist")
            elif not any(p.fullmatch(key) for p in glued_names(_code(target))):
                missing.append(f"{page.name}: quotes glued name {key!r}, which no code cell of "
                               f"{target.name} glues")
    return missing


def bad_formats(text: str) -> list[str]:
    """``{glue:text}`name:spec``` roles whose ``spec`` Python cannot format with (e.g. ``.1f}``)."""
    bad = []
    for body in re.findall(r"\{glue:text\}`([^`]+)`", text):
        key, _, spec = body.rpartition("::")[2].partition(":")
        sample = 1 if spec[-1:] in tuple("bcdoxX") else "x" if spec[-1:] == "s" else 1.5
        try:
            format(sample, spec)
        except ValueError:
            bad.append(body)
    return bad


def test_every_glued_name_a_page_quotes_is_glued():
    missing = unglued(_pages())
    assert not missing, "\n".join(missing)
    bad = {p.name: b for p in _pages() if (b := bad_formats(_markdown(p)))}
    assert not bad, f"glue roles with a format Python cannot apply: {bad}"
    assert bad_formats("{glue:text}`ch04_a:.1f}` {glue:text}`ch04_b:.1f` {glue:text}`ch04_c`") == ["ch04_a:.1f}"]


def test_an_unglued_name_is_reported_with_its_notebook(tmp_path):
    def cell(kind, text):
        return {"cell_type": kind, "metadata": {}, "source": [text], "outputs": []}

    nb = {"cells": [cell("markdown", "top {glue:text}`ch04_top:.1f`, gone {glue:text}`ch04_gone`"),
                    cell("code", 'glue("ch04_top", 11.9)')], "metadata": {}, "nbformat": 4,
          "nbformat_minor": 5}
    page = tmp_path / "04_x.ipynb"
    page.write_text(json.dumps(nb))
    (tmp_path / "intro.md").write_text("{glue:text}`04_x.ipynb::ch04_top:.1f` {glue}`04_x.ipynb::ch04_far`")
    assert unglued([page, tmp_path / "intro.md"]) == [
        "04_x.ipynb: quotes glued name 'ch04_gone', which no code cell of 04_x.ipynb glues",
        "intro.md: quotes glued name 'ch04_far', which no code cell of 04_x.ipynb glues"]


def test_glued_names_carry_their_page_prefix_once():
    bad = []
    for page in _glue_pages():
        literal = [n for _, _, n in GLUE_CALL.findall(_code(page))]
        prefix = glue_prefix(page)
        bad += [f"{page.name}: glue name {n!r} should start with {prefix!r}"
                for n in literal if not n.startswith(prefix)]
        plain = [n for f, _, n in GLUE_CALL.findall(_code(page)) if not f]
        bad += [f"{page.name}: {n!r} is glued twice" for n in sorted(set(plain)) if plain.count(n) > 1]
    assert not bad, "\n".join(bad)


#: Pages whose prose quotes figures from their own cells (every one through glue).
GLUED_PAGES = ["notebooks/01_toy_models.ipynb", "notebooks/02_finding_retrieval_heads.ipynb",
               "notebooks/03_sparsity_universality.ipynb", "notebooks/04_causality_masking.ipynb",
               "book/paper.md"]


def test_chapters_quote_their_figures_through_glue():
    """The pages of GLUED_PAGES quote their figures through glue, and every chapter glues
    through rhlens: myst-nb is a dependency of the book build only, so a chapter that imports
    it fails on Colab before its first figure."""
    quiet = [p for p in GLUED_PAGES if not glue_references(ROOT / p)]
    assert not quiet, f"pages whose prose quotes no glued figure: {quiet}"
    pages = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + [ROOT / "book/paper.md"]
    direct = [p.name for p in pages if "from myst_nb import" in _code(p)]
    assert not direct, (f"{direct}: import glue from rhlens.book.runtime (it is myst-nb's glue where "
                        "myst-nb is installed, and does nothing on Colab, where it is not)")


def test_glue_from_another_page_names_a_format():
    """``{glue:text}`page::key``` without a format is read as key ``page:`` with format ``key``
    (myst-nb splits at the last colon): it must end in ``:<format>`` (``:d``, ``:.1f``, ``:s``)."""
    bare = [f"{page.relative_to(ROOT)}: {text}" for page in _pages()
            for text in re.findall(r"\{glue:text\}`([^`]+)`", _markdown(page))
            if "::" in text and ":" not in text.split("::", 1)[1]]
    assert not bare, f"cross-page glue without a format: {bare}"
