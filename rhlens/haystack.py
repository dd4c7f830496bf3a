"""Haystacks, needles and needle-in-a-haystack prompts, for any tokenizer.

A prompt is built in token space so that the needle's position is known exactly::

    [chat-template prefix] [haystack ... needle ... haystack] [question, template end, answer prefix]
                            \\___________ context ___________/

The needle is spliced in at a sentence boundary of the haystack. Boundaries are found from the
tokenizer itself (any token whose text ends in ``.``, ``!`` or ``?``), not from hard-coded token
ids, so Llama, Mistral, Qwen and SmolLM2 tokenizers all work.

Example::

    >>> from rhlens.models import embedded_tokenizer
    >>> tok = embedded_tokenizer()                                   # doctest: +SKIP
    >>> hay = default_haystack()                                     # doctest: +SKIP
    >>> s = build_sample(tok, NEEDLES[0], hay, length=1000, depth=0.5)  # doctest: +SKIP
    >>> len(s.input_ids), s.needle_span                             # doctest: +SKIP
    (1000, (519, 538))
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import FetchError, UsageError

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
    data = Path(path).read_bytes()
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
        elif path.is_file():
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


# --------------------------------------------------------------------------- prompts


@dataclass
class Sample:
    """One NIAH prompt.

    Attributes:
        input_ids: ``[n]`` prompt token ids (chat template, context, question, answer prefix).
        needle_span: ``(start, end)``, the needle's token positions in ``input_ids``, end
            exclusive.
        needle: the needle hidden in it.
        length: requested prompt length in tokens (``len(input_ids)`` equals it).
        depth: requested depth of the needle in the context, 0 (start) to 1 (end).
    """

    input_ids: torch.Tensor
    needle_span: tuple[int, int]
    needle: Needle
    length: int
    depth: float

    @property
    def key(self) -> str:
        """Identifies the sample in result files: ``needle text|length|depth|fingerprint``.

        The depth is written in full (``repr``), and the fingerprint hashes what decides the
        sample's result besides the model: the prompt's token ids (haystack, needle, question,
        template, tokenizer), the needle's span and the answer it is scored against. A resumed
        run reuses a logged sample only when its key is the same.
        """
        h = hashlib.sha256(self.input_ids.to(torch.int64).cpu().numpy().tobytes())
        h.update(json.dumps([list(self.needle_span), self.needle.answer]).encode())
        return f"{self.needle.text}|{self.length}|{float(self.depth)!r}|{h.hexdigest()[:16]}"


def chat_parts(tokenizer, needle: Needle, instruction: str = INSTRUCTION) -> tuple[str, str]:
    """The text before and after the context, with the model's chat template if it has one.

    The prompt ends with ``needle.answer_prefix`` so that the model answers directly.
    """
    user = f"{instruction}\n\n<document>\n{CONTEXT_MARKER}\n</document>\n\n{needle.question}"
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    else:
        bos = tokenizer.bos_token or ""
        rendered = f"{bos}{user}\n\n"
    before, after = rendered.split(CONTEXT_MARKER)
    return before, after + needle.answer_prefix


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@functools.lru_cache(maxsize=8)
def _haystack_ids_cached(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(_encode(tokenizer, text))


def haystack_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a haystack (cached per tokenizer and text)."""
    return list(_haystack_ids_cached(tokenizer, text))


def sentence_end_ids(tokenizer, ids: list[int]) -> set[int]:
    """The ids among ``ids`` whose text ends a sentence (``.``, ``!`` or ``?``).

    Works from the tokenizer's own decoding, so it holds for any vocabulary (the public code
    hard-codes Llama's period ids 29889 and 869).
    """
    unique = sorted(set(ids))
    texts = tokenizer.batch_decode([[i] for i in unique])
    return {i for i, t in zip(unique, texts) if t.rstrip().endswith((".", "!", "?"))}


def insertion_point(hay: list[int], depth: float, enders: set[int]) -> int:
    """Where to splice the needle: the last sentence boundary at or before ``depth``.

    Returns an index ``p`` into ``hay`` such that ``hay[p-1]`` ends a sentence (or ``p`` is 0
    or ``len(hay)``). Falls forward to the next boundary when none lies before the target.

    >>> insertion_point([5, 1, 5, 5, 1, 5], 0.5, {1})
    2
    >>> insertion_point([5, 1, 5, 5, 1, 5], 1.0, {1})
    5
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}.")
    target = min(round(depth * len(hay)), len(hay))
    if target <= 0:
        return 0
    for p in range(target, 0, -1):
        if hay[p - 1] in enders:
            return p
    for p in range(target, len(hay)):
        if hay[p - 1] in enders:
            return p
    return target


def build_sample(
    tokenizer,
    needle: Needle,
    haystack: str,
    length: int,
    depth: float,
    n_ctx: int | None = None,
) -> Sample:
    """Build a prompt of exactly ``length`` tokens with ``needle`` at ``depth`` of the context.

    The haystack is repeated when it is too short (as in the NIAH benchmark).

    Raises:
        ValueError: if ``length`` exceeds ``n_ctx``, or cannot hold the template, question
            and needle.
    """
    if n_ctx is not None and length > n_ctx:
        raise ValueError(
            f"A {length}-token prompt does not fit this model's context of {n_ctx} tokens; "
            f"use lengths of at most {n_ctx}."
        )
    before, after = chat_parts(tokenizer, needle)
    pre, post = _encode(tokenizer, before), _encode(tokenizer, after)
    if tokenizer.bos_token_id is not None and (not pre or pre[0] != tokenizer.bos_token_id):
        if not getattr(tokenizer, "chat_template", None):
            pre = [tokenizer.bos_token_id] + pre
    needle_ids = _encode(tokenizer, " " + needle.text.strip())
    budget = length - len(pre) - len(post) - len(needle_ids)
    if budget < 0:
        raise ValueError(
            f"length={length} is too short: the template, question and needle alone take "
            f"{length - budget} tokens. Use a length of at least {length - budget + 16}."
        )
    hay = haystack_ids(tokenizer, haystack)
    if not hay:
        raise ValueError("The haystack tokenizes to nothing; pass a haystack with some text.")
    while len(hay) < budget:
        hay = hay + hay
    hay = hay[:budget]
    p = insertion_point(hay, depth, sentence_end_ids(tokenizer, hay))
    ids = pre + hay[:p] + needle_ids + hay[p:] + post
    start = len(pre) + p
    return Sample(
        input_ids=torch.tensor(ids, dtype=torch.long),
        needle_span=(start, start + len(needle_ids)),
        needle=needle,
        length=length,
        depth=depth,
    )
