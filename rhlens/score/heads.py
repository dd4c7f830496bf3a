"""Heads: how rhlens names them, chooses them and compares maps of them.

A *head* is a query head ``(layer, head)`` (:data:`Head`): under grouped-query attention each
query head has its own score and its own mask, and score files index query heads. A *score
map* is a ``[n_layers, n_heads]`` tensor of mean retrieval scores, what
:func:`rhlens.score.detect.detect_retrieval_heads` and :func:`rhlens.run.results.load_scores` return.

This module is the one home of

* names: :func:`head_name` (``L16H19``) and :func:`parse_head` (``"L16H19"``, ``"16-19"``);
* choices: :func:`top_heads`, :func:`control_pool`, :func:`random_heads` (a random control
  never draws a retrieval head, and the same seed gives the same heads);
* shares: :func:`share_above`, :func:`sparsity`, :func:`summarize`, :func:`head_table`.

They take score maps as tensors; where maps come from (score files, URLs, the paper's published
maps) is :mod:`rhlens.analyze.maps`, and how two maps are compared :mod:`rhlens.analyze.statistics`.

Example::

    >>> s = torch.tensor([[0.9, 0.0, 0.05], [0.0, 0.3, 0.0]])
    >>> top_heads(s, 2), [head_name(*h) for h in top_heads(s, 2)]
    ([(0, 0), (1, 1)], ['L0H0', 'L1H1'])
    >>> share_above(s, 0.1)
    0.3333333333333333
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from ..validate import count
from ..validate import seed as check_seed

#: A query head: ``(layer, head)``.
Head = tuple[int, int]

# --------------------------------------------------------------------------- names


def head_name(layer: int, head: int) -> str:
    """``"L16H19"``: how the paper and rhlens name a head.

    >>> head_name(16, 19)
    'L16H19'
    """
    return f"L{int(layer)}H{int(head)}"


def head_names(heads: Iterable[Head], sep: str = " ") -> str:
    """``"L0H1 L3H2"``: a list of heads as one string (for tables and logs)."""
    return sep.join(head_name(l, h) for l, h in heads)


def parse_head(text: str) -> Head:
    """``"L17H3"``, ``"17-3"`` or ``"17.3"`` -> ``(17, 3)``.

    >>> parse_head("L17H3"), parse_head("16-19")
    ((17, 3), (16, 19))
    """
    m = re.fullmatch(r"\s*(?:L(\d+)H(\d+)|(\d+)[-.,:](\d+))\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"Cannot read head {text!r}: write it as L17H3 or 17-3.")
    a, b, c, d = m.groups()
    return (int(a), int(b)) if a is not None else (int(c), int(d))


def as_heads(heads: Iterable) -> tuple[Head, ...]:
    """Heads as a tuple of ``(int, int)``, from pairs or names (``"L1H2"``)."""
    return tuple(parse_head(h) if isinstance(h, str) else (int(h[0]), int(h[1])) for h in heads)


def heads_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """``[(1, 2), (0, 3), (1, 0)]`` -> ``{0: [3], 1: [0, 2]}``."""
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return {k: sorted(set(v)) for k, v in sorted(out.items())}


def check_heads(heads: Iterable[Head], n_layers: int, n_heads: int) -> None:
    """Raise a clear error when a head does not exist in an ``n_layers x n_heads`` model.

    >>> check_heads([(1, 9)], 2, 9)
    Traceback (most recent call last):
    ...
    ValueError: Heads [(1, 9)] do not exist: the model has 2 layers x 9 query heads.
    """
    bad = [(l, h) for l, h in heads if not (0 <= l < n_layers and 0 <= h < n_heads)]
    if bad:
        raise ValueError(
            f"Heads {bad} do not exist: the model has {n_layers} layers x {n_heads} query heads."
        )


# --------------------------------------------------------------------------- score maps


def score_map(scores: torch.Tensor) -> torch.Tensor:
    """A ``[n_layers, n_heads]`` score map as float64 on the CPU (score files, URLs and the
    paper's published maps become maps through :func:`rhlens.analyze.maps.as_map`).

    >>> score_map(torch.zeros(3)).shape
    Traceback (most recent call last):
    ...
    ValueError: A score map is [n_layers, n_heads]; got shape (3,).
    """
    scores = torch.as_tensor(scores)
    if scores.ndim != 2:
        raise ValueError(f"A score map is [n_layers, n_heads]; got shape {tuple(scores.shape)}.")
    return scores.detach().double().cpu()


def head_table(scores: torch.Tensor):
    """``[n_layers, n_heads]`` scores as a pandas table sorted by score (``layer``, ``head``,
    ``score``, ``name`` as ``L16H19``); ties keep the heads' order."""
    import pandas as pd

    n_layers, n_heads = scores.shape
    layer, head = torch.meshgrid(torch.arange(n_layers), torch.arange(n_heads), indexing="ij")
    table = pd.DataFrame(
        {
            "layer": layer.flatten().numpy(),
            "head": head.flatten().numpy(),
            "score": scores.flatten().double().numpy(),
        }
    )
    table["name"] = [head_name(l, h) for l, h in zip(table["layer"], table["head"])]
    return table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def share_above(scores: torch.Tensor, threshold: float) -> float:
    """Fraction of heads whose score exceeds ``threshold`` (0.1: the paper's retrieval heads).

    >>> share_above(torch.tensor([[0.0, 0.2], [0.6, 0.05]]), 0.1)
    0.5
    """
    return float((score_map(scores) > threshold).double().mean())


def sparsity(scores: torch.Tensor) -> dict[str, float]:
    """Share of heads with mean score > 0.1, > 0.5 and exactly 0 (the paper's Sec. 3.1).

    >>> sparsity(torch.tensor([[0.0, 0.2], [0.6, 0.0]]))
    {'share_above_0.1': 0.5, 'share_above_0.5': 0.25, 'share_zero': 0.5}
    """
    m = score_map(scores)
    return {"share_above_0.1": share_above(m, 0.1),
            "share_above_0.5": share_above(m, 0.5),
            "share_zero": float((m == 0).double().mean())}


def summarize(scores: torch.Tensor, top: int = 10) -> dict:
    """Headline numbers of a score map, as the paper reports them: ``n_heads``, ``top``
    (list of ``(name, score)``) and the shares of :func:`sparsity`."""
    m = score_map(scores)
    table = head_table(m)
    return {"n_heads": int(m.numel()),
            "top": list(zip(table.name[:top], table.score[:top].round(4))),
            **sparsity(m)}


# --------------------------------------------------------------------------- choosing heads


def top_heads(scores: torch.Tensor, k: int) -> list[Head]:
    """The ``k`` heads with the highest score.

    Ties are broken by position (lower layer, then lower head), so the choice is stable.

    >>> top_heads(torch.tensor([[0.1, 0.9], [0.5, 0.5]]), 3)
    [(0, 1), (1, 0), (1, 1)]
    """
    m = score_map(scores)
    flat = m.flatten()
    count(k, "k", minimum=0)  # 1.5 heads, or "3": not a torch slicing error
    if not 0 <= k <= flat.numel():
        raise ValueError(f"k must lie in [0, {flat.numel()}], got {k}.")
    order = torch.argsort(-flat, stable=True)[:k].tolist()
    n_heads = m.shape[1]
    return [(i // n_heads, i % n_heads) for i in order]


def control_pool(
    scores: torch.Tensor, threshold: float | None = 0.1, *, same_layers: bool = False
) -> list[Head]:
    """Heads a random control may draw: those that are *not* retrieval heads.

    A retrieval head scores above ``threshold`` (0.1 in the paper), so the pool holds the heads
    scoring ``<= threshold`` (every head if ``threshold`` is None). With ``same_layers``, only
    heads in layers that hold a retrieval head: in a 2-layer toy model, layer 0 builds the
    features layer 1's retrieval heads read, so masking any layer-0 head can break retrieval
    without being a retrieval head; drawing from the retrieval heads' own layers compares like
    with like. A map without any retrieval head (a random-weight model's) leaves no layer to
    match, so there every layer counts.

    >>> s = torch.tensor([[0.0, 0.05], [0.9, 0.0]])
    >>> control_pool(s), control_pool(s, same_layers=True)
    ([(0, 0), (0, 1), (1, 1)], [(1, 1)])
    >>> control_pool(torch.zeros(2, 2), same_layers=True)
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    """
    n_layers, n_heads = scores.shape
    if threshold is None:
        return [(l, h) for l in range(n_layers) for h in range(n_heads)]
    below = scores <= threshold  # compared in the scores' dtype: a float32 0.1 is at the threshold
    layers = list(range(n_layers))
    if same_layers and not bool(below.all()):
        layers = [l for l in layers if not bool(below[l].all())]
    return [(l, h) for l in layers for h in range(n_heads) if bool(below[l, h])]


def random_heads(
    scores: torch.Tensor, k: int, seed: int, threshold: float | None = 0.1, *,
    same_layers: bool = False, exclude: Iterable[Head] = (),
) -> list[Head]:
    """``k`` heads drawn at random, with ``seed``, among heads that are *not* retrieval heads.

    The pool is :func:`control_pool` (heads scoring ``<= threshold``, optionally only in the
    retrieval heads' layers) less ``exclude``, so the control never masks a retrieval head.
    The same seed always gives the same heads.

    >>> s = torch.tensor([[0.9, 0.0, 0.05], [0.0, 0.3, 0.0]])
    >>> sorted(random_heads(s, 4, seed=0)) == [(0, 1), (0, 2), (1, 0), (1, 2)]
    True
    """
    count(k, "k", minimum=0)
    check_seed(seed)
    excluded = {(int(l), int(h)) for l, h in exclude}
    pool = [hd for hd in control_pool(scores, threshold, same_layers=same_layers)
            if hd not in excluded]
    if k > len(pool):
        where = "" if threshold is None else f" score <= {threshold}"
        raise ValueError(
            f"Only {len(pool)} heads{where} are left to draw from; cannot draw {k} random "
            "non-retrieval heads. Use a smaller k."
        )
    g = torch.Generator().manual_seed(int(seed))
    return [pool[i] for i in torch.randperm(len(pool), generator=g)[:k].tolist()]
