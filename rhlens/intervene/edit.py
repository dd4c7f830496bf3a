"""The one head edit: change what some query heads of one layer look at or write.

Every intervention on heads in rhlens is a :func:`head_edit` hook: a :class:`~rhlens.intervene.mask.Mask`
(uniform attention, zeroed or mean outputs), activation patching (outputs from another run,
:mod:`rhlens.intervene.patch`) and the compressed KV cache of :mod:`rhlens.apps.kvcache`
(keys a head no longer holds). Under grouped-query attention each *query* head is edited on its
own; its key/value group is untouched.

Two sites, five edits (:data:`EDITS`):

* on the pre-softmax scores (``hook_attn_scores``, ``[batch, head, query, key]``, seen *after*
  the causal mask, where hidden keys hold the dtype's most negative value):

  - ``"uniform"``: the visible scores of the heads are set to 0, so each attends uniformly
    over the keys it can see (the causal mask and a sliding window are kept);
  - ``"window"``: keys ``sink <= i < n_keys - window`` are hidden (``-inf``), as if the head's
    cache held only the first ``sink`` and the last ``window`` tokens;

* on the heads' outputs (``hook_z``, ``[batch, pos, head, d_head]``):

  - ``"zero"``: set to 0;
  - ``"mean"``: replaced by ``value``, ``[n_heads, d_head]`` (e.g. mean outputs over reference
    prompts);
  - ``"patch"``: replaced by ``value``, ``[pos, n_heads, d_head]``, the outputs of another run
    at the same positions.

``heads`` are head indices, or a bool mask ``[n_heads]``, or ``[batch, n_heads]`` to edit other
heads in each batch row (one patched group per row). ``from_pos`` leaves queries before that
position alone.

>>> name, fn = head_edit("window", 4, [1], sink=1, window=1)
>>> name, fn(torch.ones(1, 2, 1, 4), None)[0, :, 0].tolist()
('blocks.4.attn.hook_attn_scores', [[1.0, 1.0, 1.0, 1.0], [1.0, -inf, -inf, 1.0]])
>>> fn = head_edit("zero", 0, [0], n_heads=2)[1]
>>> fn(torch.ones(1, 1, 2, 3), None)[0, 0].tolist()
[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import einops
import torch

from ..run.decode import Hook
from ..run.hooks import act_name

#: The edits, and where each acts (see the module docstring).
Edit = Literal["uniform", "window", "zero", "mean", "patch"]
SITES: dict[str, str] = {"uniform": "attn_scores", "window": "attn_scores", "zero": "z",
                         "mean": "z", "patch": "z"}
EDITS: tuple[Edit, ...] = ("uniform", "window", "zero", "mean", "patch")


def split_heads(z: torch.Tensor, n_heads: int | None) -> torch.Tensor:
    """``hook_z`` as ``[batch, pos, head, d_head]`` (some bridges give it flat)."""
    if z.ndim == 3:
        return einops.rearrange(z, "b p (h d) -> b p h d", h=n_heads)
    return z


def _select(heads: Sequence[int] | torch.Tensor, n_heads: int, device) -> torch.Tensor:
    """``[rows, n_heads]`` bool: which heads each batch row edits (one row: every batch row)."""
    if isinstance(heads, torch.Tensor) and heads.dtype == torch.bool:
        sel = heads if heads.ndim == 2 else heads[None]
    else:
        sel = torch.zeros(1, n_heads, dtype=torch.bool)
        sel[0, list(heads)] = True
    return sel.to(device)


def _from(n: int, offset: int, from_pos: int, device) -> torch.Tensor:
    """``[n]`` bool: which of ``n`` query positions (the first at ``offset``) are edited."""
    return torch.arange(n, device=device) + offset >= from_pos


def head_edit(edit: Edit, layer: int, heads: Sequence[int] | torch.Tensor, *,
              n_heads: int | None = None, value: torch.Tensor | None = None, from_pos: int = 0,
              sink: int = 4, window: int = 64) -> Hook:
    """The TransformerLens ``(hook name, fn)`` that applies ``edit`` to ``heads`` of ``layer``.

    Args:
        edit: one of :data:`EDITS`.
        heads: head indices, or a bool mask ``[n_heads]`` / ``[batch, n_heads]``.
        n_heads: query heads per layer; needed only for a model that gives ``hook_z`` flat.
        value: ``"mean"``: ``[n_heads, d_head]``; ``"patch"``: ``[pos, n_heads, d_head]``.
        from_pos: edit only queries at position ``>= from_pos``. ``"uniform"`` and
            ``"window"`` read absolute positions from the number of keys (they hold with a
            KV cache); the output edits count the positions of the current forward pass.
        sink, window: the keys a ``"window"`` head keeps.
    """
    if edit not in SITES:
        raise ValueError(f"edit must be one of {EDITS}, got {edit!r}.")
    if edit in ("mean", "patch") and value is None:
        raise ValueError(f"A {edit!r} edit needs the outputs to write (value).")
    if edit == "window" and (sink < 0 or window < 0 or sink + window < 1):
        raise ValueError("sink and window must be >= 0 and keep at least one token.")

    def on_scores(scores: torch.Tensor, hook) -> torch.Tensor:
        # scores: [batch, head, query, key]; hidden keys already at the dtype's minimum
        sel = _select(heads, scores.shape[1], scores.device)[:, :, None, None]
        q, k = scores.shape[-2:]
        rows = _from(q, k - q, from_pos, scores.device)[None, None, :, None]
        if edit == "uniform":
            visible = torch.isfinite(scores) & (scores > torch.finfo(scores.dtype).min / 2)
            return torch.where(sel & rows & visible, torch.zeros_like(scores), scores)
        keys = torch.arange(k, device=scores.device)
        hidden = ((keys >= sink) & (keys < k - window))[None, None, None, :]
        return torch.where(sel & rows & hidden, torch.full_like(scores, float("-inf")), scores)

    def on_z(z: torch.Tensor, hook) -> torch.Tensor:
        # z: [batch, pos, head, d_head] (or flat [batch, pos, head * d_head])
        zz = split_heads(z, n_heads)
        sel = _select(heads, zz.shape[2], zz.device)[:, None, :, None]
        rows = _from(zz.shape[1], 0, from_pos, zz.device)[None, :, None, None]
        if edit == "zero":
            new = torch.zeros_like(zz)
        else:
            assert value is not None
            new = (value[None, None] if edit == "mean" else value[None]).to(zz)
        return torch.where(sel & rows, new, zz).reshape(z.shape)

    return act_name(SITES[edit], layer), on_scores if SITES[edit] == "attn_scores" else on_z
