"""Needle-in-a-haystack prompts, built in token space for any tokenizer.

A prompt is built so that the needle's position is known exactly::

    [chat-template prefix] [haystack ... needle ... haystack] [question, template end, answer prefix]
                            \\___________ context ___________/

A sample knows two spans: the needle sentence (``needle_span``) and, inside it, the answer
(``answer_span``: the tokens of :attr:`Needle.answer`, the public code's ``real_needle``, found
among the needle's own tokens, so the tokenisation at its edges is the needle's). The retrieval
score reads the answer span by default, as the public code that made the published maps does.

Two prompt layouts (:data:`PROMPT_STYLES`): ``"rhlens"`` (an instruction, the context between
``<document>`` tags, the question, and the needle's answer prefix to start the answer) and
``"public-code"``, the paper's public code's layout: the context wrapped as a book
(``<book>...</book>``), then ``Based on the content of the book, Question: ...`` and the answer
cue ``Answer:``, through the chat template when the model has one.

The needle is spliced in at a sentence boundary of the haystack. Boundaries are found from the
tokenizer itself (any token whose text ends in ``.``, ``!`` or ``?``), not from hard-coded token
ids, so Llama, Mistral, Qwen and SmolLM2 tokenizers all work.

Example::

    >>> from rhlens.models.bridge import embedded_tokenizer
    >>> tok = embedded_tokenizer()                                   # doctest: +SKIP
    >>> hay = default_haystack()                                     # doctest: +SKIP
    >>> s = build_sample(tok, NEEDLES[0], hay, length=1000, depth=0.5)  # doctest: +SKIP
    >>> len(s.input_ids), s.needle_span, s.answer_span               # doctest: +SKIP
    (1000, (519, 538), (534, 537))
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import torch

from .haystack import CONTEXT_MARKER, INSTRUCTION, Needle

#: Prompt layouts: rhlens's own, or the paper's public code's (see the module docstring).
PromptStyle = Literal["rhlens", "public-code"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("rhlens", "public-code")
#: Which span the retrieval score reads: the answer inside the needle, or the whole sentence.
ScoreSpan = Literal["answer", "needle"]
SCORE_SPANS: tuple[ScoreSpan, ...] = ("answer", "needle")

@dataclass
class Sample:
    """One NIAH prompt.

    Attributes:
        input_ids: ``[n]`` prompt token ids (chat template, context, question, answer prefix).
        needle_span: ``(start, end)``, the needle sentence's token positions in ``input_ids``,
            end exclusive.
        needle: the needle hidden in it.
        length: requested prompt length in tokens (``len(input_ids)`` equals it).
        depth: requested depth of the needle in the context, 0 (start) to 1 (end).
        answer_span: ``(start, end)`` of the answer's tokens, inside ``needle_span``.
    """

    input_ids: torch.Tensor
    needle_span: tuple[int, int]
    needle: Needle
    length: int
    depth: float
    answer_span: tuple[int, int]

    def span(self, which: ScoreSpan = "answer") -> tuple[int, int]:
        """The span the retrieval score reads: ``"answer"`` (default) or ``"needle"``."""
        if which not in SCORE_SPANS:
            raise ValueError(f"score_span must be one of {SCORE_SPANS}, got {which!r}.")
        return self.answer_span if which == "answer" else self.needle_span

    @property
    def key(self) -> str:
        """Identifies the sample in result files: ``needle text|length|depth|fingerprint``.

        The depth is written in full (``repr``), and the fingerprint hashes what decides the
        sample's result besides the model: the prompt's token ids (haystack, needle, question,
        template, tokenizer), the needle's and the answer's spans and the answer it is scored
        against. A resumed
        run reuses a logged sample only when its key is the same.
        """
        h = hashlib.sha256(self.input_ids.to(torch.int64).cpu().numpy().tobytes())
        h.update(json.dumps([list(self.needle_span), self.needle.answer,
                             list(self.answer_span)]).encode())
        return f"{self.needle.text}|{self.length}|{float(self.depth)!r}|{h.hexdigest()[:16]}"


def chat_parts(tokenizer, needle: Needle, instruction: str = INSTRUCTION,
               style: PromptStyle = "rhlens") -> tuple[str, str]:
    """The text before and after the context, with the model's chat template if it has one.

    ``style="rhlens"``: the prompt ends with ``needle.answer_prefix`` so that the model answers
    directly. ``style="public-code"``: the public code's layout, ``<book>CONTEXT</book>``, then
    ``Based on the content of the book, Question: ...`` and ``Answer:`` (without a chat
    template the context and the question follow each other with no separator, as there).
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {style!r}.")
    chat = bool(getattr(tokenizer, "chat_template", None))
    if style == "public-code":
        ask = f"Based on the content of the book, Question: {needle.question}\nAnswer:"
        user = f"<book>{CONTEXT_MARKER}</book>\n{ask}" if chat else f"{CONTEXT_MARKER}{ask}"
        cue = ""
    else:
        user = f"{instruction}\n\n<document>\n{CONTEXT_MARKER}\n</document>\n\n{needle.question}"
        cue = needle.answer_prefix
    if CONTEXT_MARKER in needle.question or CONTEXT_MARKER in instruction:
        raise ValueError(f"The question or instruction contains {CONTEXT_MARKER!r}, which marks "
                         "where the context goes; remove it.")
    if chat:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    else:
        bos = tokenizer.bos_token or ""
        rendered = f"{bos}{user}" + ("" if style == "public-code" else "\n\n")
    before, after = rendered.split(CONTEXT_MARKER)
    return before, after + cue


@functools.lru_cache(maxsize=256)
def answer_offsets(tokenizer, needle: Needle) -> tuple[list[int], tuple[int, int]]:
    """The needle's token ids (as they are spliced into the prompt) and the answer's token
    span among them, ``(start, end)``, end exclusive.

    The answer's tokens are the needle's own tokens that overlap the answer's characters
    (:meth:`Needle.answer_chars`), so a token that straddles the answer's edge (``" smoked"``
    with its leading space) counts as the answer's.
    """
    text = " " + needle.text.strip()
    c0, c1 = needle.answer_chars()
    c0, c1 = c0 + 1, c1 + 1  # the leading space
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        inside = [i for i, (a, b) in enumerate(offsets) if a < c1 and b > c0 and b > a]
    else:  # no offsets: the length of each decoded prefix gives where each token ends
        ids = encode(tokenizer, text)
        full = tokenizer.decode(ids)
        lead = len(text) - len(full)  # decoders that drop the leading space
        ends = [len(tokenizer.decode(ids[: j + 1])) + lead for j in range(len(ids))]
        starts = [lead] + ends[:-1]
        inside = [i for i, (a, b) in enumerate(zip(starts, ends)) if a < c1 and b > c0]
    if not inside:
        raise ValueError(f"Could not find the answer {needle.answer!r} among the tokens of the "
                         f"needle {needle.text!r}.")
    return ids, (inside[0], inside[-1] + 1)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (the pieces a prompt is built from)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@functools.lru_cache(maxsize=8)
def _haystack_ids_cached(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(encode(tokenizer, text))


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
    prompt_style: PromptStyle = "rhlens",
) -> Sample:
    """Build a prompt of exactly ``length`` tokens with ``needle`` at ``depth`` of the context.

    The haystack is repeated when it is too short (as in the NIAH benchmark).
    ``prompt_style`` chooses the layout around the context (:data:`PROMPT_STYLES`).

    Raises:
        ValueError: if ``length`` exceeds ``n_ctx``, or cannot hold the template, question
            and needle.
    """
    if n_ctx is not None and length > n_ctx:
        raise ValueError(
            f"A {length}-token prompt does not fit this model's context of {n_ctx} tokens; "
            f"use lengths of at most {n_ctx}."
        )
    before, after = chat_parts(tokenizer, needle, style=prompt_style)
    pre, post = encode(tokenizer, before), encode(tokenizer, after)
    if tokenizer.bos_token_id is not None and (not pre or pre[0] != tokenizer.bos_token_id):
        if not getattr(tokenizer, "chat_template", None):
            pre = [tokenizer.bos_token_id] + pre
    needle_ids, (a0, a1) = answer_offsets(tokenizer, needle)
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
        answer_span=(start + a0, start + a1),
    )


# --------------------------------------------------------------------------- where things are


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Token ids of the answer as it appears after a space inside a sentence (as a model
    writes it in its reply)."""
    return tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]


def _token_chars(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``text``'s token ids and each token's character span."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    ids = encode(tokenizer, text)
    ends = [len(tokenizer.decode(ids[: j + 1])) for j in range(len(ids))]
    return ids, list(zip([0] + ends[:-1], ends))


def question_span(tokenizer, sample: Sample) -> tuple[int, int]:
    """``(start, end)`` of the question's tokens in ``sample.input_ids`` (either layout of
    :data:`PROMPT_STYLES`), end exclusive.

    Raises:
        ValueError: the prompt does not end as a NIAH prompt of this tokenizer does.
    """
    ids = sample.input_ids.tolist()
    question = sample.needle.question.strip()
    for style in PROMPT_STYLES:
        after = chat_parts(tokenizer, sample.needle, style=style)[1]
        post, chars = _token_chars(tokenizer, after)
        c0 = after.find(question)
        if c0 < 0 or not post or ids[-len(post):] != post:
            continue
        inside = [i for i, (a, b) in enumerate(chars) if a < c0 + len(question) and b > c0]
        start = len(ids) - len(post)
        return start + inside[0], start + inside[-1] + 1
    raise ValueError("Cannot find the question's tokens at the end of the prompt: build the "
                     "sample with rhlens.niah.prompts.build_sample and the model's own tokenizer.")
