"""The bootstrap of rhlens: one way to resample samples (or pairs) and read an interval off the
resamples, for every interval the package reports.

A resample draws ``n`` of ``n`` items with replacement; :func:`resamples` draws ``n_boot`` of
them from one numpy generator (a seed gives the same resamples every time, one resample after
the other, so a caller that goes on drawing from the same generator gets one reproducible
stream). Everything else is built on those draws:

* :func:`bootstrap`: any statistic of the resampled items (the patching summaries and map
  correlations of :mod:`rhlens.analyze.statistics`, which re-exports these names);
* :func:`resampled_means`: the mean of many values per item at once (every head's mean
  score of a detection: :mod:`rhlens.score.uncertainty`), as counts @ items, so a 7B map over
  hundreds of samples needs no ``[n_boot, n, ...]`` copy;
* :func:`percentile_interval` / :func:`percentile_bounds`: the central ``level`` interval of
  the draws (the percentile method, as ``scipy.stats.bootstrap(method="percentile")``).

It lives here, below :mod:`rhlens.analyze`, because a detection run uses it while it runs
(``--until-stable``, :mod:`rhlens.score.stopping`).

>>> resamples(3, 2, rng=0).tolist()             # two resamples of three items
[[2, 1, 1], [0, 0, 0]]
>>> resampled_means(torch.tensor([[1.0], [2.0], [6.0]]), 2, rng=0).flatten().tolist()
[3.3333333333333335, 1.0]
>>> percentile_interval(bootstrap(lambda i: float(i.mean()), 3, n_boot=200), level=0.9)
(0.3333333333333333, 1.6666666666666667)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

#: Resamples drawn by default: the 95% interval's 2.5% tails then rest on 25 draws each.
N_BOOT = 1000
#: Default coverage of an interval.
LEVEL = 0.95

#: Where resamples come from: a seed or a numpy generator (drawn from in turn).
Rng = np.random.Generator | int


def generator(rng: Rng) -> np.random.Generator:
    """The numpy generator of ``rng`` (itself, or a new one seeded with it)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def resamples(n: int, n_boot: int = N_BOOT, rng: Rng = 0) -> np.ndarray:
    """``[n_boot, n]`` item indices: ``n_boot`` resamples of ``n`` items with replacement,
    drawn one after the other from ``rng``."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"resampling needs at least one item and one resample, got n={n}, "
                         f"n_boot={n_boot}.")
    gen = generator(rng)
    return np.stack([gen.integers(0, n, n) for _ in range(n_boot)])


def bootstrap(stat: Callable[[np.ndarray], float], n: int, *, n_boot: int = N_BOOT,
              rng: Rng = 0) -> np.ndarray:
    """``stat(indices)`` for each of :func:`resamples` of the indices of ``n`` items
    (samples, pairs): the statistic's bootstrap distribution. ``[n_boot]``."""
    return np.array([stat(idx) for idx in resamples(n, n_boot, rng)], dtype=float)


def resampled_means(values: torch.Tensor, n_boot: int = N_BOOT, rng: Rng = 0) -> torch.Tensor:
    """``[n_boot, ...]`` float64: the mean over its first axis of each of :func:`resamples` of
    ``values`` (``[n, ...]``), the same resamples :func:`bootstrap` draws with ``rng``."""
    x = values.detach().double().cpu()
    n = x.shape[0]
    idx = torch.as_tensor(resamples(n, n_boot, rng))
    counts = torch.zeros(n_boot, n, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return (counts @ x.reshape(n, -1) / n).reshape(n_boot, *x.shape[1:])


def percentile_bounds(draws: np.ndarray | torch.Tensor, level: float = LEVEL
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The central ``level`` interval of bootstrap ``draws`` along their first axis (the
    percentile method), one bound per remaining position: ``(low, high)``."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}.")
    a = (1 - level) / 2
    low, high = np.quantile(np.asarray(draws, dtype=float), [a, 1 - a], axis=0)
    return low, high


def percentile_interval(draws: Sequence[float] | np.ndarray, level: float = LEVEL
                        ) -> tuple[float, float]:
    """The central ``level`` interval of one statistic's bootstrap ``draws``."""
    low, high = percentile_bounds(np.asarray(draws, dtype=float).reshape(-1), level)
    return float(low), float(high)
