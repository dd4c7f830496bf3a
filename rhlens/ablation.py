"""Mask attention heads with TransformerLens hooks, and choose which heads to mask.

Three ways to take one *query* head out of the model (under grouped-query attention each
query head is masked on its own; its key/value group is untouched):

* ``"uniform"`` (the paper's): the head's pre-softmax scores are replaced by a constant, so
  it attends uniformly over the keys it can see. The causal mask (and a sliding window) is
  kept: the hook sees ``blocks.{l}.attn.hook_attn_scores`` *after* masking, where hidden keys
  hold the dtype's most negative value, and only the visible entries are set to 0;
* ``"zero"``: the head's output ``blocks.{l}.attn.hook_z`` (``[batch, pos, head, d_head]``)
  is set to 0;
* ``"mean"``: ``hook_z`` is replaced by the head's mean output over reference prompts
  (:func:`head_means`).

Hooks come back as a list of ``(name, fn)`` pairs, ready for ``model.hooks(...)``,
``run_with_hooks`` or the ``decode_hooks`` / ``prefill_hooks`` of
:func:`rhlens.decode.greedy_decode`. The paper masks during decoding only.

Example::

    >>> hooks = mask_hooks([(17, 3), (18, 6)], mode="uniform")
    >>> [name for name, _ in hooks]
    ['blocks.17.attn.hook_attn_scores', 'blocks.18.attn.hook_attn_scores']
    >>> top_heads(torch.tensor([[0.9, 0.0], [0.2, 0.5]]), 2)
    [(0, 0), (1, 1)]
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import einops
import torch

from .decode import Hook

MODES = ("uniform", "zero", "mean")

#: The paper's K grid for models with 32 layers x 32 heads = 1024 query heads.
PAPER_K_GRID = (0, 2, 5, 10, 15, 20, 30, 50, 100)
PAPER_N_HEADS = 1024

HeadList = Sequence[tuple[int, int]]


def parse_head(text: str) -> tuple[int, int]:
    """``"L17H3"``, ``"17-3"`` or ``"17.3"`` -> ``(17, 3)``.

    >>> parse_head("L17H3"), parse_head("16-19")
    ((17, 3), (16, 19))
    """
    m = re.fullmatch(r"\s*(?:L(\d+)H(\d+)|(\d+)[-.,:](\d+))\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"Cannot read head {text!r}: write it as L17H3 or 17-3.")
    a, b, c, d = m.groups()
    return (int(a), int(b)) if a is not None else (int(c), int(d))


def heads_by_layer(heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """``[(1, 2), (0, 3), (1, 0)]`` -> ``{0: [3], 1: [0, 2]}``."""
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return {k: sorted(set(v)) for k, v in sorted(out.items())}


def check_heads(model, heads: HeadList) -> None:
    """Raise a clear error when a head does not exist in ``model``."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    bad = [(l, h) for l, h in heads if not (0 <= l < n_layers and 0 <= h < n_heads)]
    if bad:
        raise ValueError(
            f"Heads {bad} do not exist: the model has {n_layers} layers x {n_heads} query heads."
        )


def _as_heads(z: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``hook_z`` as ``[batch, pos, head, d_head]`` (some bridges give it flat)."""
    if z.ndim == 3:
        return einops.rearrange(z, "b p (h d) -> b p h d", h=n_heads)
    return z


def _query_rows(n_query: int, offset: int, from_pos: int, device) -> torch.Tensor:
    """``[n_query, 1]`` bool: which query rows sit at absolute position ``>= from_pos``."""
    return (torch.arange(n_query, device=device) + offset >= from_pos)[:, None]


def _uniform_fn(head_idx: list[int], from_pos: int = 0):
    def hook(scores: torch.Tensor, hook) -> torch.Tensor:
        # scores: [batch, head, query, key], hidden keys already at the dtype's minimum
        sub = scores[:, head_idx]
        visible = torch.isfinite(sub) & (sub > torch.finfo(sub.dtype).min / 2)
        if from_pos > 0:  # the queries are the last n_query of the n_key positions
            q, k = sub.shape[-2:]
            visible = visible & _query_rows(q, k - q, from_pos, sub.device)
        scores = scores.clone()
        scores[:, head_idx] = torch.where(visible, torch.zeros_like(sub), sub)
        return scores

    return hook


def _replace_fn(head_idx: list[int], n_heads: int | None, fill: torch.Tensor | None = None,
                from_pos: int = 0):
    def hook(z: torch.Tensor, hook) -> torch.Tensor:
        # z: [batch, pos, head, d_head] (or flat [batch, pos, head * d_head])
        zz = _as_heads(z, n_heads).clone()
        new = zz[:, :, head_idx]
        new = torch.zeros_like(new) if fill is None else fill.to(zz).expand_as(new)
        if from_pos > 0:
            rows = _query_rows(zz.shape[1], 0, from_pos, zz.device)[None, :, :, None]
            new = torch.where(rows, new, zz[:, :, head_idx])
        zz[:, :, head_idx] = new
        return zz.reshape(z.shape)

    return hook


def mask_hooks(
    heads: HeadList,
    mode: str = "uniform",
    means: torch.Tensor | None = None,
    n_heads: int | None = None,
    from_pos: int = 0,
) -> list[Hook]:
    """Hooks that mask the query heads ``heads`` (``[(layer, head), ...]``).

    Args:
        heads: heads to mask; may be empty (then no hook is returned).
        mode: ``"uniform"``, ``"zero"`` or ``"mean"``.
        means: ``[n_layers, n_heads, d_head]`` mean head outputs, needed for ``"mean"``
            (see :func:`head_means`).
        n_heads: query heads per layer; only needed if the model gives ``hook_z`` flat
            (``[batch, pos, n_heads * d_head]``).
        from_pos: mask only queries at position ``>= from_pos`` (0: every query). Use it to
            mask the answer positions of a teacher-forced run without a KV cache, e.g.
            ``from_pos=len(prompt) - 1``. ``"uniform"`` reads absolute positions from the
            number of keys, so it also holds with a KV cache; ``"zero"`` and ``"mean"`` count
            the positions of the current forward pass.

    Returns:
        ``[(hook name, fn), ...]``, one per masked layer.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if mode == "mean" and means is None:
        raise ValueError("mode='mean' needs `means` ([n_layers, n_heads, d_head]); "
                         "compute them with head_means(model, prompts).")
    hooks: list[Hook] = []
    for layer, idx in heads_by_layer(heads).items():
        if mode == "uniform":
            hooks.append((f"blocks.{layer}.attn.hook_attn_scores", _uniform_fn(idx, from_pos)))
            continue
        fill = None if mode == "zero" else means[layer, idx]  # [k, d_head]
        hooks.append((f"blocks.{layer}.attn.hook_z", _replace_fn(idx, n_heads, fill, from_pos)))
    return hooks


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
    device = next(model.parameters()).device
    for ids in prompts:
        _, cache = model.run_with_cache(ids[None].to(device),
                                        names_filter=lambda n: n.endswith("attn.hook_z"))
        z = torch.stack([_as_heads(cache[f"blocks.{l}.attn.hook_z"], n_heads)[0].float().sum(0)
                         for l in range(n_layers)])  # [L, H, d]
        total = z if total is None else total + z
        count += ids.numel()
    if total is None:
        raise ValueError("head_means needs at least one reference prompt.")
    return (total / count).cpu()


# --------------------------------------------------------------------------- which heads


def top_heads(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the highest score (``scores``: ``[n_layers, n_heads]``).

    Ties are broken by position (lower layer, then lower head), so the choice is stable.

    >>> top_heads(torch.tensor([[0.1, 0.9], [0.5, 0.5]]), 3)
    [(0, 1), (1, 0), (1, 1)]
    """
    flat = scores.flatten()
    if not 0 <= k <= flat.numel():
        raise ValueError(f"k must lie in [0, {flat.numel()}], got {k}.")
    order = torch.argsort(-flat.float(), stable=True)[:k].tolist()
    n_heads = scores.shape[1]
    return [(i // n_heads, i % n_heads) for i in order]


def control_pool(
    scores: torch.Tensor, threshold: float | None = 0.1, same_layers: bool = False
) -> list[tuple[int, int]]:
    """Heads a random control may draw: those that are *not* retrieval heads.

    A retrieval head scores above ``threshold`` (0.1 in the paper), so the pool holds the heads
    scoring ``<= threshold`` (every head if ``threshold`` is None). With ``same_layers``, only
    heads in layers that hold a retrieval head: in a 2-layer toy model, layer 0 builds the
    features layer 1's retrieval heads read, so masking any layer-0 head can break retrieval
    without being a retrieval head; drawing from the retrieval heads' own layers compares like
    with like.

    >>> s = torch.tensor([[0.0, 0.05], [0.9, 0.0]])
    >>> control_pool(s), control_pool(s, same_layers=True)
    ([(0, 0), (0, 1), (1, 1)], [(1, 1)])
    """
    n_layers, n_heads = scores.shape
    if threshold is None:
        return [(l, h) for l in range(n_layers) for h in range(n_heads)]
    below = scores <= threshold  # compared in the scores' dtype: a float32 0.1 is at the threshold
    layers = range(n_layers)
    if same_layers:
        layers = [l for l in layers if not bool(below[l].all())]
    return [(l, h) for l in layers for h in range(n_heads) if bool(below[l, h])]


def random_heads(
    scores: torch.Tensor, k: int, seed: int, threshold: float | None = 0.1,
    same_layers: bool = False, exclude: Iterable[tuple[int, int]] = (),
) -> list[tuple[int, int]]:
    """``k`` heads drawn at random, with ``seed``, among heads that are *not* retrieval heads.

    The pool is :func:`control_pool` (heads scoring ``<= threshold``, optionally only in the
    retrieval heads' layers) less ``exclude``, so the control never masks a retrieval head.
    The same seed always gives the same heads.

    >>> s = torch.tensor([[0.9, 0.0, 0.05], [0.0, 0.3, 0.0]])
    >>> sorted(random_heads(s, 4, seed=0)) == [(0, 1), (0, 2), (1, 0), (1, 2)]
    True
    """
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}.")
    excluded = {(int(l), int(h)) for l, h in exclude}
    pool = [hd for hd in control_pool(scores, threshold, same_layers) if hd not in excluded]
    if k > len(pool):
        where = "" if threshold is None else f" score <= {threshold}"
        raise ValueError(
            f"Only {len(pool)} heads{where} are left to draw from; cannot draw {k} random "
            "non-retrieval heads. Use a smaller k."
        )
    g = torch.Generator().manual_seed(int(seed))
    return [pool[i] for i in torch.randperm(len(pool), generator=g)[:k].tolist()]


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


def masked_decode(model, input_ids, heads: HeadList = (), mode: str = "uniform",
                  prefill: bool = False, means=None, **decode_kwargs):
    """:func:`rhlens.decode.greedy_decode` with ``heads`` masked (decode steps only unless
    ``prefill``)."""
    from .decode import greedy_decode

    check_heads(model, heads)
    hooks = mask_hooks(heads, mode, means, model.cfg.n_heads)
    return greedy_decode(model, input_ids, decode_hooks=hooks,
                         prefill_hooks=hooks if prefill else (), **decode_kwargs)
