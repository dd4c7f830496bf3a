"""Clean and counterfactual prompts for activation patching: a :class:`PatchPair`.

The two prompts differ *only* in the needle's answer tokens: the counterfactual answer has the
same number of tokens (:func:`counterfactual_tokens`: other one-token words), so every other
position lines up. Both are teacher-forced on the clean model's continuation, up to the end of
its answer (:func:`make_pair`), which the patching engine (:mod:`rhlens.intervene.patch`) reads.

>>> find_tokens([5, 1, 2, 3, 1, 2], [1, 2], start=2)
4
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..niah.prompts import Sample, answer_ids
from ..run.decode import greedy_decode

#: Plain words used to build counterfactual answers (kept if they are one token).
REPLACEMENT_WORDS = (
    "red", "blue", "green", "stone", "river", "paper", "silver", "garden", "window", "table",
    "orange", "candle", "forest", "copper", "winter", "violet", "marble", "harbor", "pepper",
    "cotton", "ginger", "lemon", "tiger", "eagle", "maple", "salt", "iron", "cloud", "north",
    "seven", "ninety", "ocean", "bridge", "yellow", "wooden", "golden", "velvet", "olive",
)


def find_tokens(haystack: list[int], needle: list[int], start: int = 0) -> int:
    """Where ``needle`` first occurs in ``haystack`` at or after ``start`` (-1: nowhere)."""
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


def counterfactual_tokens(tokenizer, original: Sequence[int], seed: int = 0) -> list[int]:
    """Same-length replacement of ``original`` token ids: each token becomes a different
    one-token word (with a leading space where the original has one).

    >>> tok.decode(counterfactual_tokens(tok, answer_ids(tok, "smoked cardamom")))  # doctest: +SKIP
    ' maple cloudblue'
    """
    rng = random.Random(seed)
    pools = {}
    for space in (True, False):
        pool = []
        for w in REPLACEMENT_WORDS:
            ids = tokenizer((" " if space else "") + w, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                pool.append(ids[0])
        pools[space] = pool
    out = []
    for t in original:
        space = tokenizer.decode([t]).startswith(" ")
        choices = [c for c in pools[space] or pools[not space] if c not in original and c not in out]
        if not choices:
            raise ValueError("No replacement word left for the counterfactual answer.")
        out.append(rng.choice(choices))
    return out


@dataclass
class PatchPair:
    """A clean and a counterfactual prompt, teacher-forced on the clean answer.

    Attributes:
        clean_ids, cf_ids: ``[n]`` prompts, equal except at the answer's tokens in the needle.
        continuation: ``[T]`` the clean model's generated tokens, up to the end of the answer.
        answer_steps: ``[m]`` indices into ``continuation`` of the answer tokens.
        clean_tokens, cf_tokens: ``[m]`` answer tokens of each prompt.
        sample: the clean sample.
    """

    clean_ids: torch.Tensor
    cf_ids: torch.Tensor
    continuation: torch.Tensor
    answer_steps: torch.Tensor
    clean_tokens: torch.Tensor
    cf_tokens: torch.Tensor
    sample: Sample


class NoAnswerError(ValueError):
    """The clean model's output does not contain the needle's answer, so nothing to patch."""


def make_pair(model, sample: Sample, seed: int = 0, max_new_tokens: int = 32, *,
              force_answer: bool = False) -> PatchPair:
    """Build the counterfactual prompt of ``sample`` and the clean continuation.

    With ``force_answer`` the continuation is the needle's answer itself, right after the
    prompt, whatever the model would write (for random-weight test models).

    Raises:
        NoAnswerError: when the model does not answer the clean prompt with the needle's answer.
    """
    tok = model.tokenizer
    ids = sample.input_ids.tolist()
    a_ids = answer_ids(tok, sample.needle.answer)
    start, end = sample.needle_span
    at = find_tokens(ids[start:end], a_ids)
    if at < 0:
        raise ValueError(f"The answer {sample.needle.answer!r} is not a token span of the needle.")
    cf = counterfactual_tokens(tok, a_ids, seed)
    cf_ids = list(ids)
    cf_ids[start + at : start + at + len(a_ids)] = cf
    if force_answer:
        gen, pos = list(a_ids), 0
    else:
        trace = greedy_decode(model, sample.input_ids, max_new_tokens)
        gen = trace.tokens.tolist()
        pos = find_tokens(gen, a_ids)
    if pos < 0:
        raise NoAnswerError(f"The model answered {trace.text!r}, without {sample.needle.answer!r}.")
    return PatchPair(
        clean_ids=sample.input_ids,
        cf_ids=torch.tensor(cf_ids),
        continuation=torch.tensor(gen[: pos + len(a_ids)]),
        answer_steps=torch.arange(pos, pos + len(a_ids)),
        clean_tokens=torch.tensor(a_ids),
        cf_tokens=torch.tensor(cf),
        sample=sample,
    )


