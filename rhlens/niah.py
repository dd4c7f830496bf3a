"""Evaluate answers the way the paper does: ROUGE-1 recall of the needle's answer span.

>>> rouge1_recall("smoked cardamom", " The soup uses smoked cardamom.")
1.0
>>> rouge1_recall("purple walrus seventeen", "purple walrus")
0.6666666666666666
>>> niah_score("purple walrus seventeen", "a green door")
0.0
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


def rouge1_recall(answer: str, output: str) -> float:
    """Share of the answer's unigrams found in ``output`` (rouge-score's ROUGE-1 recall)."""
    return float(_scorer().score(answer, output)["rouge1"].recall)


def niah_score(answer: str, output: str) -> float:
    """The NIAH score of the paper: ROUGE-1 recall x 100, in ``[0, 100]``."""
    return 100.0 * rouge1_recall(answer, output)
