"""The retrieval score of every query head (Wu et al. 2024, section 2).

At each decode step the model emits token ``w``. Query head ``h`` *copy-pastes* when the key
it attends to most, ``i = argmax(attention row)``, lies inside the span ``k`` and
``prompt[i] == w``. ``k`` is the needle's answer span by default (the public code's
``real_needle``; :meth:`rhlens.niah.prompts.Sample.span`), or the whole needle sentence. With ``g_h``
the span tokens head ``h`` copied over the whole answer,

* ``score_mode="paper"`` (default): ``score_h = |g_h ∩ k| / |k|``. Each needle position counts once,
  so the score lies in ``[0, 1]``;
* ``score_mode="sum"``: the public code's arithmetic, which adds ``1/|k|`` at *every* copying step
  without de-duplicating, so one sample can exceed 1.

Everything here is a pure function of (argmax positions, needle span, prompt ids, generated
tokens), so it can be tested exactly on hand-built cases.

Example::

    >>> import torch
    >>> prompt = torch.tensor([7, 8, 9, 10, 11])     # needle = positions 1..3 = [8, 9, 10]
    >>> argmax = torch.tensor([[[1, 0]], [[2, 2]], [[2, 4]]])   # [steps=3, layers=1, heads=2]
    >>> tokens = torch.tensor([8, 9, 9])
    >>> retrieval_scores(argmax, tokens, prompt, (1, 4))
    tensor([[0.6667, 0.3333]], dtype=torch.float64)
    >>> retrieval_scores(argmax, tokens, prompt, (1, 4), score_mode="sum")
    tensor([[1.0000, 0.3333]], dtype=torch.float64)
"""

from __future__ import annotations

from typing import Literal

import torch

#: ``"paper"``: ``|g_h ∩ k| / |k|`` (at most 1); ``"sum"``: the public code's summing.
ScoreMode = Literal["paper", "sum"]
SCORE_MODES: tuple[ScoreMode, ...] = ("paper", "sum")


def copy_hits(
    argmax: torch.Tensor, token: int, prompt_ids: torch.Tensor, needle_span: tuple[int, int]
) -> torch.Tensor:
    """Which heads copy-paste ``token`` from the needle at one decode step.

    Args:
        argmax: ``[n_layers, n_heads]`` most-attended key position per query head.
        token: the token generated at this step.
        prompt_ids: ``[n]`` prompt ids.
        needle_span: ``(start, end)`` needle positions in the prompt, end exclusive.

    Returns:
        ``[n_layers, n_heads]`` bool.

    >>> copy_hits(torch.tensor([[1, 3]]), 8, torch.tensor([7, 8, 9, 8]), (1, 3))
    tensor([[ True, False]])
    """
    start, end = needle_span
    inside = (argmax >= start) & (argmax < end)
    safe = argmax.clamp(0, prompt_ids.numel() - 1)
    return inside & (prompt_ids[safe] == token)


def retrieval_scores(
    argmax: torch.Tensor,
    tokens: torch.Tensor,
    prompt_ids: torch.Tensor,
    needle_span: tuple[int, int],
    score_mode: ScoreMode = "paper",
) -> torch.Tensor:
    """Retrieval score of every query head for one sample.

    Args:
        argmax: ``[T, n_layers, n_heads]`` most-attended key per head at each decode step.
        tokens: ``[T]`` generated tokens.
        prompt_ids: ``[n]`` prompt ids.
        needle_span: ``(start, end)``, end exclusive.
        score_mode: ``"paper"`` (de-duplicated, at most 1) or ``"sum"`` (the public code).

    Returns:
        ``[n_layers, n_heads]`` float64 scores.
    """
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}.")
    start, end = needle_span
    size = end - start
    if size <= 0:
        raise ValueError(f"Empty needle span {needle_span}.")
    if argmax.ndim != 3 or argmax.shape[0] != tokens.numel():
        raise ValueError(
            f"argmax must be [steps, layers, heads] with one step per token; got "
            f"{tuple(argmax.shape)} for {tokens.numel()} tokens."
        )
    hits = torch.stack(
        [copy_hits(argmax[t], int(tokens[t]), prompt_ids, needle_span) for t in range(len(tokens))]
    ) if len(tokens) else torch.zeros((0, *argmax.shape[1:]), dtype=torch.bool)
    # float64: a head's sum of 1/|k| terms is then exact to ~1e-16, as the public code's
    # Python floats are (float32 would differ from them in the 8th digit)
    if score_mode == "sum":
        return hits.sum(0).double() / size
    # paper: the set of distinct needle positions each head copied, over all steps
    offsets = (argmax - start).clamp(0, size - 1)  # [T, L, H]
    onehot = torch.nn.functional.one_hot(offsets, size).bool()  # [T, L, H, |k|]
    copied = (onehot & hits.unsqueeze(-1)).any(0)  # [L, H, |k|]
    return copied.sum(-1).double() / size
