"""The statistics of rhlens, in one place: correlations of two score maps, the head-shuffle null,
and bootstrap intervals over samples or pairs.

* correlations over heads: :func:`pearson`, :func:`spearman` (ties get average ranks: most heads
  score exactly 0), :func:`top_k_overlap`;
* the head-shuffle null (:func:`head_shuffle_null`, :func:`null_pearson`): a statistic of two
  maps after the heads of the second are permuted at random, i.e. of two maps with the same
  scores that share no heads;
* percentile bootstrap intervals over pairs or samples (:func:`bootstrap_ci`), and both together
  for a patching map against another map (:func:`map_correlation`). They rest on the one
  bootstrap of :mod:`rhlens.score.bootstrap` (:func:`bootstrap`, :func:`percentile_interval`,
  re-exported here), which also gives every head of a detection its interval
  (:mod:`rhlens.score.uncertainty`).

``tests/analyze/test_statistics.py`` checks each against scipy.

>>> a, b = torch.tensor([[0., 1.], [0.5, 0.]]), torch.tensor([[0., 2.], [1., 0.]])
>>> pearson(a, b), spearman(a, b)
(1.0, 1.0)
>>> est, lo, hi = bootstrap_ci([0.0, 1.0, 1.0, 1.0])
>>> est, lo <= est <= hi
(0.75, True)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from ..score.bootstrap import bootstrap, percentile_interval
from ..score.heads import top_heads
from .maps import ScoreSource, paired_maps

#: Where the random permutations and resamples come from: a seed, a torch generator (both draw
#: permutations with ``torch.randperm``), or a numpy generator.
Random = int | torch.Generator | np.random.Generator


# --------------------------------------------------------------------------- correlations


def pearson(a: ScoreSource, b: ScoreSource) -> float:
    """Pearson correlation of two score maps over all heads (NaN if one map is constant).

    >>> pearson(torch.tensor([[0., 1.], [0.5, 0.]]), torch.tensor([[0., 2.], [1., 0.]]))
    1.0
    """
    x, y = paired_maps(a, b)
    x, y = x.flatten() - x.mean(), y.flatten() - y.mean()
    denom = x.norm() * y.norm()
    return float("nan") if denom == 0 else round(float(x @ y / denom), 12)


def ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks from 1, ties sharing their average rank (as Spearman's correlation needs them).

    >>> ranks(torch.tensor([0.0, 0.0, 5.0])).tolist()
    [1.5, 1.5, 3.0]
    """
    return torch.tensor(pd.Series(v.flatten().numpy()).rank(method="average").to_numpy())


def spearman(a: ScoreSource, b: ScoreSource) -> float:
    """Spearman rank correlation (ties get average ranks: most heads score exactly 0).

    >>> spearman(torch.tensor([[0., 1., 3.]]), torch.tensor([[0., 5., 9.]]))
    1.0
    """
    x, y = paired_maps(a, b)
    return pearson(ranks(x)[None], ranks(y)[None])


def top_k_overlap(a: ScoreSource, b: ScoreSource, k: int = 20) -> float:
    """Share of the top-``k`` heads of ``a`` that are also top-``k`` heads of ``b``."""
    x, y = paired_maps(a, b)
    if not 0 < k <= x.numel():
        raise ValueError(f"k must be in 1..{x.numel()}, got {k}.")
    return len(set(top_heads(x, k)) & set(top_heads(y, k))) / k


# --------------------------------------------------------------------------- head-shuffle null


def _generator(rng: Random) -> torch.Generator | np.random.Generator:
    if isinstance(rng, (torch.Generator, np.random.Generator)):
        return rng
    return torch.Generator().manual_seed(int(rng))


def _permutation(rng: torch.Generator | np.random.Generator, n: int) -> torch.Tensor:
    if isinstance(rng, np.random.Generator):
        return torch.as_tensor(rng.permutation(n))
    return torch.randperm(n, generator=rng)


def head_shuffle_null(a: ScoreSource, b: ScoreSource,
                      statistic: Callable[[torch.Tensor, torch.Tensor], float] = pearson,
                      n: int = 1000, rng: Random = 0) -> torch.Tensor:
    """``statistic(a, b with its heads permuted)`` for ``n`` random permutations: what the
    statistic gives for two maps with the same scores but no head in common. ``[n]`` float64.

    ``rng`` is a seed, a torch generator or a numpy generator (drawn from in turn, so a caller
    that also bootstraps with it gets one reproducible stream).
    """
    x, y = paired_maps(a, b)
    gen, flat = _generator(rng), y.flatten()
    return torch.tensor([statistic(x, flat[_permutation(gen, flat.numel())].reshape(y.shape))
                         for _ in range(n)], dtype=torch.float64)


def null_pearson(a: ScoreSource, b: ScoreSource, n: int = 1000, seed: int = 0) -> torch.Tensor:
    """Pearson r after randomly permuting the heads of ``b``, ``n`` times (:func:`head_shuffle_null`
    with :func:`pearson`): the correlation of two models that share *no* heads but have the same
    score distributions. ``[n]``."""
    return head_shuffle_null(a, b, pearson, n, seed)


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(values, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 stat=None) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``stat`` (default the mean) of ``values`` (one per pair,
    first axis) and its percentile bootstrap interval over pairs resampled with ``seed``.

    >>> est, lo, hi = bootstrap_ci([0.0, 1.0, 1.0, 1.0])
    >>> est, lo <= est <= hi
    (0.75, True)
    """
    v = np.asarray(values, dtype=float)
    stat = stat or (lambda x: float(np.mean(x, axis=0)))
    if len(v) == 0:
        return (float("nan"),) * 3
    draws = bootstrap(lambda idx: stat(v[idx]), len(v), n_boot=n_boot, rng=seed)
    return (float(stat(v)), *percentile_interval(draws, level))


def map_correlation(maps: torch.Tensor, other: torch.Tensor, *, n_boot: int = 1000,
                    n_null: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman correlation of the mean of ``maps`` (``[n_pairs, L, H]``) with ``other``: a
    fixed ``[L, H]`` map (e.g. the scores) or per-pair maps ``[n_pairs, L, H]`` (e.g. DLA,
    resampled together with ``maps``).

    Returns ``spearman``, its percentile bootstrap interval over pairs (``lo``, ``hi``), and
    the head-shuffle null (the heads of ``other`` permuted at random, ``n_null`` times):
    ``null_hi`` (its ``level`` quantile) and ``p`` (share of shuffles at least as high).
    """
    paired = other.ndim == 3
    ref = other.mean(0) if paired else other
    rho = spearman(maps.mean(0), ref)
    rng = np.random.default_rng(seed)  # one stream: the resamples, then the shuffles
    n = maps.shape[0]

    def resampled(idx: np.ndarray) -> float:
        at = torch.as_tensor(idx)
        return spearman(maps[at].mean(0), other[at].mean(0) if paired else other)

    lo, hi = percentile_interval(bootstrap(resampled, n, n_boot=n_boot, rng=rng), level)
    null = head_shuffle_null(maps.mean(0), ref, spearman, n_null, rng).numpy()
    return {"spearman": rho, "lo": lo, "hi": hi, "null_hi": float(np.quantile(null, level)),
            "p": float((np.sum(null >= rho) + 1) / (n_null + 1)), "pairs": n}
