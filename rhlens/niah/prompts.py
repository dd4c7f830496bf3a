"""Needle-in-a-haystack prompts, built in token space for any tokenizer.

A prompt is built so that the needle's position is known exactly::

    [chat-template prefix] [haystack ... needle ... haystack] [question, template end, answer prefix]
                            \\___________ context ___________/

The needle is spliced in at a sentence boundary of the haystack. Boundaries are found from the
tokenizer itself (any token whose text ends in ``.``, ``!`` or ``?``), not from hard-coded token
ids, so Llama, Mistral, Qwen and SmolLM2 tokenizers all work.

Example::

    >>> from rhlens.models.loading import embedded_tokenizer
    >>> tok = embedded_tokenizer()                                   # doctest: +SKIP
    >>> hay = default_haystack()                                     # doctest: +SKIP
    >>> s = build_sample(tok, NEEDLES[0], hay, length=1000, depth=0.5)  # doctest: +SKIP
    >>> len(s.input_ids), s.needle_span                             # doctest: +SKIP
    (1000, (519, 538))
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import torch

from .haystack import CONTEXT_MARKER, INSTRUCTION, Needle

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
