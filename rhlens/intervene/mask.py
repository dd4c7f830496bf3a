"""Mask attention heads with TransformerLens hooks: the :class:`Mask`.

A :class:`Mask` says which *query* heads to take out of the model and how; it is the one
object that every masking experiment (NIAH grids, K sweeps, failure modes, downstream tasks,
toy models) takes, and :meth:`Mask.hooks` builds its hooks: one
:func:`~rhlens.intervene.edit.head_edit` per layer.

Three ways to take one query head out (under grouped-query attention each query head is
masked on its own; its key/value group is untouched):

* ``"uniform"`` (the paper's): the head's pre-softmax scores are replaced by a constant, so
  it attends uniformly over the keys it can see. The causal mask (and a sliding window) is
  kept: the hook sees ``blocks.{l}.attn.hook_attn_scores`` *after* masking, where hidden keys
  hold the dtype's most negative value, and only the visible entries are set to 0;
* ``"zero"``: the head's output ``blocks.{l}.attn.hook_z`` (``[batch, pos, head, d_head]``)
  is set to 0;
* ``"mean"``: ``hook_z`` is replaced by the head's mean output over reference prompts
  (:meth:`Mask.with_means`, :func:`head_means`).

The paper masks during decoding only (``prefill=False``): while the prompt is read, every head
works as usual. :func:`rhlens.run.decode.greedy_decode` takes a mask as ``mask=``.

Example::

    >>> scores = torch.tensor([[0.9, 0.0], [0.2, 0.5]])
    >>> Mask.top(scores, 2).heads
    ((0, 0), (1, 1))
    >>> [name for name, _ in Mask([(17, 3), (18, 6)]).hooks(n_heads=9)]
    ['blocks.17.attn.hook_attn_scores', 'blocks.18.attn.hook_attn_scores']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..run.decode import Hook, model_device
from ..run.hooks import act_name, every_layer
from ..score.heads import Head, as_heads, check_heads, heads_by_layer, random_heads, top_heads
from .edit import head_edit, split_heads

#: How a masked head is taken out.
MaskMode = Literal["uniform", "zero", "mean"]
MASK_MODES: tuple[MaskMode, ...] = ("uniform", "zero", "mean")

#: The paper's K grid for models with 32 layers x 32 heads = 1024 query heads.
PAPER_K_GRID = (0, 2, 5, 10, 15, 20, 30, 50, 100)
PAPER_N_HEADS = 1024


@dataclass(frozen=True)
class Mask:
    """Which query heads to mask, and how.

    Attributes:
        heads: ``((layer, head), ...)``; empty: nothing is masked (the unmasked model).
        mask_mode: ``"uniform"`` (the paper), ``"zero"`` or ``"mean"``.
        prefill: also mask while the prompt is read (the paper masks decode steps only).
        means: ``[n_layers, n_heads, d_head]`` mean head outputs, needed for ``"mean"``
            (:meth:`with_means`).
    """

    heads: tuple[Head, ...] = ()
    mask_mode: MaskMode = field(default="uniform", metadata={"identity": "mode"})
    prefill: bool = False
    means: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "heads", as_heads(self.heads))
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {self.mask_mode!r}.")

    # ----------------------------------------------------------------- choosing the heads

    @classmethod
    def top(cls, scores: torch.Tensor, k: int, **options) -> Mask:
        """The ``k`` best-scoring heads (:func:`rhlens.score.heads.top_heads`)."""
        return cls(tuple(top_heads(scores, k)), **options)

    @classmethod
    def random(cls, scores: torch.Tensor, k: int, seed: int, *, threshold: float | None = 0.1,
               same_layers: bool = False, exclude: Iterable[Head] = (), **options) -> Mask:
        """``k`` random heads scoring ``<= threshold``, never a retrieval head
        (:func:`rhlens.score.heads.random_heads`)."""
        heads = random_heads(scores, k, seed, threshold, same_layers=same_layers, exclude=exclude)
        return cls(tuple(heads), **options)

    def with_heads(self, heads: Iterable[Head]) -> Mask:
        """The same mode, prefill and means on other heads (a K sweep's runs)."""
        return dataclasses.replace(self, heads=as_heads(heads))

    def with_means(self, model, reference_prompts: Iterable[torch.Tensor]) -> Mask:
        """This mask with the mean head outputs over ``reference_prompts`` (for ``"mean"``)."""
        return dataclasses.replace(self, means=head_means(model, reference_prompts))

    # ----------------------------------------------------------------- hooks

    def hooks(self, model=None, *, n_heads: int | None = None, from_pos: int = 0) -> list[Hook]:
        """TransformerLens ``(hook name, fn)`` pairs that mask :attr:`heads`, one per layer.

        Args:
            model: checks that the heads exist and reads ``n_heads`` from it.
            n_heads: query heads per layer, when no model is given (only needed if the model
                gives ``hook_z`` flat, ``[batch, pos, n_heads * d_head]``).
            from_pos: mask only queries at position ``>= from_pos`` (0: every query). Use it to
                mask the answer positions of a teacher-forced run without a KV cache, e.g.
                ``from_pos=len(prompt) - 1``. ``"uniform"`` reads absolute positions from the
                number of keys, so it also holds with a KV cache; ``"zero"`` and ``"mean"``
                count the positions of the current forward pass.
        """
        if model is not None:
            check_heads(self.heads, model.cfg.n_layers, model.cfg.n_heads)
            n_heads = model.cfg.n_heads
        if self.mask_mode == "mean" and self.heads and self.means is None:
            raise ValueError("mask_mode 'mean' needs the heads' mean outputs; build the mask "
                             "with mask.with_means(model, reference_prompts).")
        # a mask mode is a head edit of the same name (rhlens.intervene.edit)
        means = self.means if self.mask_mode == "mean" else None
        return [head_edit(self.mask_mode, layer, idx, n_heads=n_heads, from_pos=from_pos,
                          value=None if means is None else means[layer])
                for layer, idx in heads_by_layer(self.heads).items()]

    def prefill_hooks(self, model=None, **kwargs) -> list[Hook]:
        """:meth:`hooks` if the mask also covers the prefill, else none."""
        return self.hooks(model, **kwargs) if self.prefill else []


@torch.no_grad()
def head_means(model, prompts: Iterable[torch.Tensor]) -> torch.Tensor:
    """Mean output (``hook_z``) of every query head over all positions of ``prompts``.

    Args:
        prompts: 1-D token-id tensors (a reference set, e.g. NIAH prompts with other needles).

    Returns:
        ``[n_layers, n_heads, d_head]``.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    total, count = None, 0
    device = model_device(model)
    for ids in prompts:
        _, cache = model.run_with_cache(ids[None].to(device), names_filter=every_layer("z"))
        # .to(device): under a device_map each layer's cache sits on its own GPU
        z = torch.stack([split_heads(cache[act_name("z", l)], n_heads)[0].float().sum(0)
                         .to(device) for l in range(n_layers)])  # [L, H, d]
        total = z if total is None else total + z
        count += ids.numel()
    if total is None:
        raise ValueError("head_means needs at least one reference prompt.")
    return (total / count).cpu()


def k_grid(n_heads_total: int, paper_grid: Sequence[int] = PAPER_K_GRID) -> list[int]:
    """The paper's K grid (0…100 of 1024 heads) scaled to a model with ``n_heads_total``.

    Each K keeps its share of all heads; duplicates after rounding are dropped.

    >>> k_grid(1024)
    [0, 2, 5, 10, 15, 20, 30, 50, 100]
    >>> k_grid(270)           # SmolLM2-135M: 30 layers x 9 heads
    [0, 1, 3, 4, 5, 8, 13, 26]
    """
    out = []
    for k in paper_grid:
        v = 0 if k == 0 else max(1, round(k * n_heads_total / PAPER_N_HEADS))
        if v not in out:
            out.append(v)
    return out
