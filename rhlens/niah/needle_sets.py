"""Literal and non-literal needles: does a head find the needle by its words, or by its meaning?

The built-in needles (:data:`rhlens.niah.haystack.NEEDLES`) are *literal*: the question repeats
the needle's words ("What is the password to the Velmora lighthouse archive?" for "The password
to the Velmora lighthouse archive is purple walrus seventeen."), so a head can find the needle
by matching words. The *non-literal* needles (NoLiMa-style, Modarressi et al. 2025) are invented
facts whose question shares no content word with the needle: "Who scaled the icy cascade?" for
"The only person who ever climbed the frozen waterfall of Orvik was a baker named Tomasz Ludd."
Answering them needs the meaning, not a word match; the answer is in the context alone.

* :data:`NEEDLE_SETS` and :func:`load_needle_set`: the two sets by name;
* :func:`shared_words`: the content words a question shares with its needle, as the stemmed
  ROUGE gate reads words (empty for every non-literal needle: a test checks it).

>>> sorted(shared_words(load_needle_set("literal")[0]))
['ingredi', 'marguerit', 'okonjo', 'prize', 'secret', 'soup', 'win']
>>> [shared_words(n) for n in load_needle_set("nonliteral")][:2]
[set(), set()]
"""

from __future__ import annotations

import functools

from ..errors import UsageError
from .haystack import Needle, load_needles

#: The needle sets: the built-in (literal) needles and the invented non-literal ones.
NEEDLE_SETS = ("literal", "nonliteral")
#: Words that carry no content (a non-literal question may share these with its needle).
FUNCTION_WORDS = frozenset(
    "a an the in on at of to with and or is was were be been by for from who whom whose which "
    "what when where why how that this these those it its his her their he she they did does do "
    "has have had not no as so than then there here into onto over under up down out about s".split())


def load_needle_set(name: str) -> list[Needle]:
    """The needles of a set of :data:`NEEDLE_SETS` (``nonliteral`` from the package's data,
    ``nonliteral_needles.json``)."""
    if name not in NEEDLE_SETS:
        raise UsageError(f"needle set must be one of {', '.join(NEEDLE_SETS)}, got {name!r}.")
    if name == "literal":
        return load_needles()
    from ..data import path

    return load_needles(path("nonliteral_needles.json"))


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from rouge_score.tokenizers import DefaultTokenizer

    return DefaultTokenizer(use_stemmer=True)


def shared_words(needle: Needle) -> set[str]:
    """Content words (stemmed, :data:`FUNCTION_WORDS` left out) that the needle's question
    shares with its text: empty for a non-literal needle."""
    def stems(text: str) -> set[str]:
        return {w for w in _tokenizer().tokenize(text) if w not in FUNCTION_WORDS}

    return stems(needle.question) & stems(needle.text)
