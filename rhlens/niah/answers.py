"""Answers: how rhlens scores what a model wrote against what it should have written.

* **NIAH score** (the paper's): ROUGE-1 recall x 100 of the needle's answer span in the
  output (:func:`rouge1_recall`, :func:`niah_score`), with Porter stemming as the paper's
  public code scores it (``RougeScorer(..., use_stemmer=True)``); ``stemmer=False`` is the
  unstemmed variant;
* **token F1** (SQuAD's), for extractive QA (:func:`normalize_answer`, :func:`token_f1`);
* **exact numbers**, for chain-of-thought answers (:func:`extract_number`);
* **answer classes**, the paper's two failure modes beside success (:data:`CLASSES`):
  ``complete`` (every content word of the answer is in the output), ``incomplete`` (some of
  them: the model retrieved part of the needle) and ``hallucinated`` (none of them).
  :func:`classify_answer` decides from the text, :func:`classify_score` from a NIAH score.

Content words leave out a few function words ("a", "the", "in"...), which would otherwise
make a hallucinated answer look partly right.

>>> rouge1_recall("smoked cardamom", " The soup uses smoked cardamom.")
1.0
>>> niah_score("purple walrus seventeen", "a green door")
0.0
>>> classify_answer("purple walrus seventeen", "It is purple cat.")
'incomplete'
>>> token_f1("the Amber Heron", "Amber Heron!")
1.0
"""

from __future__ import annotations

import collections
import functools
import re
import string
from collections.abc import Sequence
from typing import Literal

#: The classes of an answer, best first.
AnswerClass = Literal["complete", "incomplete", "hallucinated"]
CLASSES: tuple[AnswerClass, ...] = ("complete", "incomplete", "hallucinated")
#: One colour per class (green, orange, red), shared by every figure and explorer.
CLASS_COLORS = {"complete": "#1a9850", "incomplete": "#fdae61", "hallucinated": "#d73027"}
FUNCTION_WORDS = frozenset("a an the in on at of to with and or is was by for".split())


# --------------------------------------------------------------------------- ROUGE (NIAH)


@functools.lru_cache(maxsize=2)
def _scorer(stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=stemmer)


def rouge1_recall(answer: str, output: str, stemmer: bool = True) -> float:
    """Share of the answer's unigrams found in ``output`` (rouge-score's ROUGE-1 recall).

    ``stemmer=True`` (default) reduces words to their Porter stems first, as the paper's public
    code does, so an answer that writes "sandwiches" for "sandwich" still counts; samples near
    the 0.5 gate can pass with one setting and fail with the other.

    >>> rouge1_recall("purple walrus seventeen", "purple walrus")
    0.6666666666666666
    >>> rouge1_recall("ride the copper tram", "riding the copper trams")
    1.0
    >>> rouge1_recall("ride the copper tram", "riding the copper trams", stemmer=False)
    0.5
    """
    return float(_scorer(bool(stemmer)).score(answer, output)["rouge1"].recall)


def niah_score(answer: str, output: str, stemmer: bool = True) -> float:
    """The NIAH score of the paper: ROUGE-1 recall x 100, in ``[0, 100]`` (stemmed, as the
    public code scores it, unless ``stemmer=False``)."""
    return 100.0 * rouge1_recall(answer, output, stemmer)


# --------------------------------------------------------------------------- answer classes


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def content_recall(answer: str, output: str) -> float:
    """Share of the answer's content words found in ``output`` (all words if the answer has
    only function words).

    >>> content_recall("a hollow wooden owl", "a wooden box")
    0.3333333333333333
    """
    words = _words(answer)
    content = [w for w in words if w not in FUNCTION_WORDS] or words
    if not content:
        raise ValueError(f"The answer {answer!r} has no words.")
    found = set(_words(output))
    return sum(w in found for w in content) / len(content)


def classify_answer(answer: str, output: str) -> AnswerClass:
    """``"complete"``, ``"incomplete"`` or ``"hallucinated"``, from the answer's content words.

    >>> classify_answer("purple walrus seventeen", "The password is purple walrus seventeen.")
    'complete'
    >>> classify_answer("in the old glass greenhouse", "in the library")
    'hallucinated'
    """
    r = content_recall(answer, output)
    return "complete" if r == 1.0 else "hallucinated" if r == 0.0 else "incomplete"


def classify_score(score: float) -> AnswerClass:
    """Class of a NIAH score (ROUGE-1 recall x 100): 100 complete, 0 hallucinated, else incomplete.

    >>> [classify_score(s) for s in (100.0, 50.0, 0.0)]
    ['complete', 'incomplete', 'hallucinated']
    """
    if score >= 100.0 - 1e-9:
        return "complete"
    if score <= 1e-9:
        return "hallucinated"
    return "incomplete"


# --------------------------------------------------------------------------- QA and numbers


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces.

    >>> normalize_answer("The  Amber-Heron!")
    'amberheron'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, truths: str | Sequence[str]) -> float:
    """SQuAD token F1 of ``prediction`` against the best of ``truths`` (bag of tokens).

    >>> round(token_f1("purple walrus", "purple walrus seventeen"), 3)
    0.8
    >>> token_f1("", "x")
    0.0
    """
    truths = [truths] if isinstance(truths, str) else list(truths)
    pred = normalize_answer(prediction).split()
    best = 0.0
    for truth in truths:
        gold = normalize_answer(truth).split()
        common = collections.Counter(pred) & collections.Counter(gold)
        same = sum(common.values())
        if not pred or not gold:
            f1 = float(pred == gold)
        elif same == 0:
            f1 = 0.0
        else:
            p, r = same / len(pred), same / len(gold)
            f1 = 2 * p * r / (p + r)
        best = max(best, f1)
    return best


def extract_number(text: str) -> int | None:
    """The integer after the last ``"answer is"``, else the last integer in ``text``.

    >>> extract_number("d = 2 + 5 = 7, p = 7 - 3 = 4. The answer is 4.")
    4
    >>> extract_number(" 12.")
    12
    >>> extract_number("no idea") is None
    True
    """
    tail = text.rsplit("answer is", 1)[-1] if "answer is" in text else text
    nums = re.findall(r"-?\d+", tail.replace(",", ""))
    if not nums:
        nums = re.findall(r"-?\d+", text.replace(",", ""))
    if not nums:
        return None
    return int(nums[0] if "answer is" in text else nums[-1])
