"""What a patching run's CSV says (:mod:`rhlens.intervene.patch_sweep`): the fraction each group
moved, with bootstrap intervals over pairs; the per-pair maps of the per-head patches and of
direct logit attribution; and how a patching map compares with the score map.

>>> compare_maps(torch.tensor([[3., 2.], [1., 0.]]), torch.tensor([[3., 0.], [2., 1.]]), (2,))
{'spearman': 0.4, 'top2_overlap': 0.5}
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from ..score.heads import parse_head
from .statistics import bootstrap_ci, spearman, top_k_overlap


def group_summary(df, *, n_boot: int = 1000, seed: int = 0):
    """Per direction, kind (``top``/``control``) and K: mean fraction moved and greedy
    clean-answer rate over pairs, each with a bootstrap interval over pairs (controls are first
    averaged over their seeds within each pair). ``k = 0`` is the unpatched run."""
    g = df[df.measure.isin(["group", "none"])]
    per_pair = (g.assign(greedy=g.greedy_clean.astype(float))
                .groupby(["direction", "kind", "k", "pair"])[["value", "greedy"]].mean()
                .reset_index())
    out = []
    for (direction, kind, k), part in per_pair.groupby(["direction", "kind", "k"]):
        f = bootstrap_ci(part.value, n_boot=n_boot, seed=seed)
        r = bootstrap_ci(part.greedy, n_boot=n_boot, seed=seed)
        out.append({"direction": direction, "kind": kind, "k": k, "pairs": len(part),
                    "fraction": f[0], "fraction_lo": f[1], "fraction_hi": f[2],
                    "greedy_clean": r[0], "greedy_lo": r[1], "greedy_hi": r[2]})
    return pd.DataFrame(out).sort_values(["direction", "k", "kind"], ascending=[False, True, False],
                                         ignore_index=True)


def pair_maps(df, measure: str = "head") -> tuple[torch.Tensor, list[int]]:
    """``[n_pairs, n_layers, n_heads]`` per-head values of ``measure`` (``"head"`` or
    ``"dla"``) and the pairs' numbers."""
    part = df[df.measure == measure]
    if part.empty:
        raise ValueError(f"The run has no {measure!r} rows.")
    hs = [parse_head(h) for h in part.heads.unique()]
    n_layers, n_heads = max(l for l, _ in hs) + 1, max(h for _, h in hs) + 1
    pairs = sorted(part.pair.unique().tolist())
    maps = torch.zeros(len(pairs), n_layers, n_heads, dtype=torch.float64)
    where = {p: i for i, p in enumerate(pairs)}
    for p, h, v in zip(part.pair, part.heads, part.value):
        l, hh = parse_head(h)
        maps[where[p], l, hh] = v
    return maps, pairs


def compare_maps(patch: torch.Tensor, scores: torch.Tensor, ks: Sequence[int] = (5, 10, 20)) -> dict:
    """Spearman correlation and top-K overlaps of the patching map with the score map
    (:func:`~rhlens.analyze.statistics.spearman`, :func:`~rhlens.analyze.statistics.top_k_overlap`).

    >>> compare_maps(torch.tensor([[3., 2.], [1., 0.]]), torch.tensor([[3., 0.], [2., 1.]]), (2,))
    {'spearman': 0.4, 'top2_overlap': 0.5}
    """
    out = {"spearman": spearman(patch, scores)}
    for k in ks:
        out[f"top{k}_overlap"] = top_k_overlap(patch, scores, k)
    return out
