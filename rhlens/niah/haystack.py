"""Needles and haystacks: the facts to hide, and the text to hide them in.

* needles: :class:`Needle` (a fact, its question and the answer span that counts),
  :data:`NEEDLES` (invented facts no pre-training corpus holds), :func:`load_needles`;
* haystacks: :func:`default_haystack` (prose from the standard library's docstrings, offline),
  :func:`load_haystack` (a text file, a folder of them, or a Hugging Face dataset).

Prompts that put a needle into a haystack are built by :mod:`rhlens.niah.prompts`.

>>> NEEDLES[0].answer
'smoked cardamom'
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import FetchError, UsageError
from ..files import read_bytes

CONTEXT_MARKER = "<<RHLENS_CONTEXT>>"
INSTRUCTION = (
    "Read the document below and answer the question that follows it, "
    "using only the information in the document."
)


@dataclass(frozen=True)
class Needle:
    """A fact to hide (``text``), how to ask for it, and the span that counts as the answer.

    ``answer`` is the paper's ``real_needle``: the NIAH score is the ROUGE-1 recall of this
    span in the model's output. ``answer_prefix`` ends the prompt (the model continues it).
    """

    text: str
    question: str
    answer: str
    answer_prefix: str = "According to the document,"

    def __post_init__(self):
        for name in ("text", "question", "answer"):
            if not getattr(self, name).strip():
                raise ValueError(f"Needle.{name} must not be empty: {self!r}")
        for name in ("text", "question", "answer_prefix"):  # checked when the file is read, not
            if CONTEXT_MARKER in getattr(self, name):       # once the model has loaded
                raise ValueError(f"Needle.{name} contains {CONTEXT_MARKER!r}, which marks where "
                                 "the context goes in the prompt; remove it.")
        self.answer_chars()  # the answer must lie inside the text: the score reads it there

    def answer_chars(self) -> tuple[int, int]:
        """``(start, end)`` of the answer in ``text.strip()``, in characters (end exclusive).

        The retrieval score reads the tokens of this span (the public code's ``real_needle``),
        so the answer must be a contiguous part of the needle's text; letter case may differ.

        >>> NEEDLES[0].answer_chars()
        (67, 82)
        """
        text, answer = self.text.strip(), self.answer.strip()
        start = text.find(answer)
        if start < 0:
            start = text.lower().find(answer.lower())
        if start < 0:
            raise ValueError(
                f"Needle.answer {self.answer!r} is not a contiguous part of Needle.text "
                f"{self.text!r}; the answer must be copied from the needle's own words."
            )
        return start, start + len(answer)


#: Built-in needles: invented facts that no pre-training corpus contains.
NEEDLES: tuple[Needle, ...] = (
    Needle(
        "The secret ingredient in Marguerite Okonjo's prize-winning soup is smoked cardamom.",
        "What is the secret ingredient in Marguerite Okonjo's prize-winning soup?",
        "smoked cardamom",
    ),
    Needle(
        "The password to the Velmora lighthouse archive is purple walrus seventeen.",
        "What is the password to the Velmora lighthouse archive?",
        "purple walrus seventeen",
    ),
    Needle(
        "The best thing to do in the town of Quillsby is to ride the copper tram at dawn.",
        "What is the best thing to do in the town of Quillsby?",
        "ride the copper tram at dawn",
    ),
    Needle(
        "Doctor Ilse Varnholt keeps her spare keys inside a hollow wooden owl.",
        "What does Doctor Ilse Varnholt keep her spare keys inside?",
        "a hollow wooden owl",
    ),
    Needle(
        "The winning horse at the 1893 Brackenfold fair was named Saffron Thunder.",
        "What was the name of the winning horse at the 1893 Brackenfold fair?",
        "Saffron Thunder",
    ),
    Needle(
        "The favourite snack of the astronaut Teodor Ambrell is pickled mango with honey.",
        "What is the favourite snack of the astronaut Teodor Ambrell?",
        "pickled mango with honey",
    ),
    Needle(
        "The meeting of the Orrin Valley chess club takes place in the old glass greenhouse.",
        "What is the meeting place of the Orrin Valley chess club?",
        "in the old glass greenhouse",
    ),
    Needle(
        "The rarest stamp in Harriet Mbeki's collection shows a blue giraffe on a bicycle.",
        "What does the rarest stamp in Harriet Mbeki's collection show?",
        "a blue giraffe on a bicycle",
    ),
    Needle(
        "The first ship built in the harbour of Pellucid Bay was called the Amber Heron.",
        "What was the first ship built in the harbour of Pellucid Bay called?",
        "the Amber Heron",
    ),
    Needle(
        "The lucky number of the poet Casimir Delaunoy is four hundred and twelve.",
        "What is the lucky number of the poet Casimir Delaunoy?",
        "four hundred and twelve",
    ),
)


def load_needles(path: str | Path | None = None, n: int | None = None) -> list[Needle]:
    """The first ``n`` built-in needles, or needles from a JSON file.

    The file holds a list of objects with keys ``text`` (or ``needle``), ``question``,
    ``answer`` (or ``real_needle``) and optionally ``answer_prefix``, all strings; no two
    needles may share a text.
    """
    if path is None:
        needles = list(NEEDLES)
    else:
        path = Path(path)
        if path.is_dir():
            raise UsageError(f"Needle file {path} is a folder; pass the JSON file itself.")
        if not path.exists():
            raise FileNotFoundError(f"Needle file {path} does not exist.")
        try:
            raw = json.loads(read_text(path, "Needle file"))
            if not isinstance(raw, list):
                raise TypeError("the file holds no list")
            for item in raw:
                fields = ("text", "needle", "question", "answer", "real_needle", "answer_prefix")
                bad = [f for f in fields if f in item and not isinstance(item[f], str)]
                if bad:
                    raise TypeError(f"{bad[0]!r} must be a string")
            needles = [
                Needle(
                    text=item.get("text", item.get("needle", "")),
                    question=item["question"],
                    answer=item.get("answer", item.get("real_needle", "")),
                    answer_prefix=item.get("answer_prefix", Needle.answer_prefix),
                )
                for item in raw
            ]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
            if isinstance(err, UsageError):
                raise
            if isinstance(err, ValueError) and str(err).startswith("Needle."):
                raise UsageError(f"{path}: {err}") from err  # a needle that can't be scored
            raise UsageError(
                f"{path} is not a needle file: expected a JSON list of objects with keys "
                f"'text', 'question' and 'answer' ({err})."
            ) from err
        if not needles:
            raise UsageError(f"{path} holds no needles; it needs at least one.")
        texts = [nd.text for nd in needles]
        twice = next((t for t in texts if texts.count(t) > 1), None)
        if twice is not None:
            raise UsageError(f"{path} holds the needle {twice!r} twice; each needle's text "
                             "must be unique.")
    if n is not None:
        if n < 1:
            raise UsageError(f"needles must be at least 1, got {n}.", arg="needles")
        if n > len(needles):
            raise UsageError(
                f"Asked for {n} needles but only {len(needles)} exist; pass a needle file "
                "with more, or ask for fewer.", arg="needles"
            )
        needles = needles[:n]
    return needles


def needles_to_json(needles: list[Needle]) -> str:
    """Serialise needles in the format :func:`load_needles` reads."""
    return json.dumps([asdict(n) for n in needles], indent=2)


# --------------------------------------------------------------------------- haystacks

#: Standard-library modules whose docstrings make the offline default haystack.
STDLIB_MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "collections", "concurrent.futures",
    "configparser", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email", "enum", "fractions", "ftplib", "functools", "gzip", "heapq", "http.client",
    "imaplib", "inspect", "ipaddress", "itertools", "json", "logging", "mailbox", "pathlib",
    "pickle", "poplib", "queue", "random", "shutil", "smtplib", "socket", "sqlite3",
    "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "zipfile",
)

_PROSE = re.compile(r"^[A-Z][^>|{}\[\]=_`$]*[.!?]$")


def _prose_paragraphs(doc: str) -> list[str]:
    paragraphs = []
    for block in re.split(r"\n\s*\n", doc):
        text = " ".join(line.strip() for line in block.splitlines()).strip()
        if len(text) > 80 and _PROSE.match(text) and text.count("(") < 3:
            paragraphs.append(text)
    return paragraphs


@functools.lru_cache(maxsize=1)
def default_haystack() -> str:
    """English prose gathered at run time from the Python standard library's docstrings.

    Needs no download. Only paragraphs that read as sentences are kept (no code, no tables).
    The text depends on the Python version, but not on anything else.
    """
    seen: set[str] = set()
    paragraphs: list[str] = []
    for name in STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module] + [obj for _, obj in sorted(vars(module).items())
                              if inspect.isclass(obj) or inspect.isfunction(obj)]
        for obj in objects:
            if getattr(obj, "__module__", name) not in (name, None) and obj is not module:
                continue
            for para in _prose_paragraphs(inspect.getdoc(obj) or ""):
                if para not in seen:
                    seen.add(para)
                    paragraphs.append(para)
    return "\n\n".join(paragraphs)


#: Control characters that do not occur in text (tab, newlines and form feed do).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def read_text(path: str | Path, what: str = "File") -> str:
    """The UTF-8 text of ``path``; an error when it is not text (invalid UTF-8, or control
    characters such as NUL that only binary files hold).

    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"\\x89PNG\\x00\\x01"); f.close()
    >>> read_text(f.name, "Haystack")                       # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rhlens.errors.UsageError: Haystack ... is not text ...
    >>> os.unlink(f.name)
    """
    data = read_bytes(path, what)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(f"{what} {path} is not text (byte {err.start} is not UTF-8: a binary "
                         "file?); pass a UTF-8 text file.") from None
    bad = len(_CONTROL.findall(text))
    if "\x00" in text or bad > len(text) // 1000:
        raise UsageError(f"{what} {path} is not text ({bad} control characters: a binary "
                         "file?); pass a UTF-8 text file.")
    return text


def _hf_haystack(spec: str) -> str:
    parts = spec[3:].split(":")
    name, split, column = (parts + ["train", "text"])[:3]
    if not name.strip():
        raise UsageError(f"Haystack {spec!r} names no dataset; write hf:NAME[:SPLIT[:COLUMN]].",
                         arg="haystack")
    try:
        import datasets  # optional dependency
    except ImportError:
        raise UsageError("An hf: haystack needs the `datasets` package (pip install datasets); "
                         "or pass a text file.", arg="haystack") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"Cannot load the haystack dataset {name!r} (split {split!r}): "
                         f"{first}", arg="haystack") from None
    except Exception as err:  # noqa: BLE001 (offline, hub errors: all mean "not reachable")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FetchError(f"Cannot load the haystack dataset {name!r}: {first}. Offline? Pass "
                       "a text file or a folder of .txt files instead.") from None
    if column not in ds.column_names:
        raise UsageError(f"Dataset {name!r} has no column {column!r} (it has "
                         f"{', '.join(ds.column_names)}); write hf:{name}:{split}:COLUMN.",
                         arg="haystack")
    rows = ds.select(range(min(len(ds), 2000)))[column]
    return "\n\n".join(r for r in rows if isinstance(r, str))


def load_haystack(source: str | Path | None = None) -> str:
    """Haystack text from ``source``.

    * ``None`` or ``"stdlib"``: :func:`default_haystack` (offline);
    * a UTF-8 text file, or a folder of ``.txt``/``.md`` files (read in sorted order), e.g.
      the Paul Graham essays of the original NIAH benchmark;
    * ``"hf:NAME[:SPLIT[:COLUMN]]"``: a Hugging Face dataset (needs ``datasets`` and network).

    Raises:
        UsageError: when the haystack is empty, missing or not text.
        FetchError: when a dataset cannot be fetched (e.g. offline).
    """
    if source is None or str(source) == "stdlib":
        text = default_haystack()
    elif str(source).startswith("hf:"):
        text = _hf_haystack(str(source))
    else:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
            if not files:
                raise UsageError(f"The haystack folder {source!r} holds no .txt or .md file.",
                                 arg="haystack")
            text = "\n\n".join(read_text(p, "Haystack file") for p in files)
        elif path.exists():  # a file; anything else (a FIFO, a device) is refused by read_text
            text = read_text(path, "Haystack")
        else:
            raise FileNotFoundError(
                f"Haystack {source!r} is neither a file nor a folder; pass a text file, a "
                "folder of .txt files, 'hf:DATASET' or leave it out for the built-in haystack."
            )
    if not text.strip():
        raise UsageError(
            f"The haystack {source!r} is empty: it needs some prose to hide the needle in.",
            arg="haystack",
        )
    return text
