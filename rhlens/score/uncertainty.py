"""How sure is a score map? Bootstrap intervals per head and the stability of the top-K set.

A score map is a mean over the samples that passed the ROUGE gate, and a detection run has few
of them (9 in the README's demo, a few hundred in the paper's). Resampling those samples with
replacement, ``n_resamples`` times with a fixed ``seed``, gives for every head

* a percentile **interval** of its mean score (``level``, 95% by default): a head whose
  interval crosses 0.1, the paper's threshold, could be a retrieval head or not on another draw
  of prompts (:meth:`HeadIntervals.uncertain`);
* its **top-K frequency**: the share of resamples whose top-K set holds it (with a score above
  0 there: heads tied at 0 fill a top set by position, which is no finding).

The **stability of the top-K set** is the mean top-K frequency of the map's own top-K heads,
which equals the mean overlap of a resample's top-K with the map's (1: every resample picks
the same K heads). ``rhlens score --until-stable K`` adds samples until it passes a level
(:mod:`rhlens.score.stopping`).

Resampling is over samples (prompts), the unit the paper averages over, with the one bootstrap
of rhlens (:mod:`rhlens.score.bootstrap`, which :mod:`rhlens.analyze.statistics` uses too); ties between heads
(most heads score exactly 0) are broken by position, as :func:`rhlens.score.heads.top_heads` breaks
them. With very few samples the bootstrap is optimistic (one sample: every resample is that
sample, stability 1), so the stopping rule waits for a minimum number of samples. Scores are
resampled at the precision a score file keeps (6 decimals), so a run's printout, its
``--until-stable`` check and any later reader of its file report the same intervals.

Example::

    >>> per_sample = torch.tensor([[[0.9, 0.0, 0.2]], [[0.7, 0.1, 0.0]], [[0.8, 0.0, 0.3]]],
    ...                           dtype=torch.float64)
    >>> iv = head_intervals(per_sample, k=1, n_resamples=200)
    >>> [round(v, 4) for v in iv.mean[0].tolist()], iv.frequency[0].tolist()
    ([0.8, 0.0333, 0.1667], [1.0, 0.0, 0.0])
    >>> iv.low[0].tolist(), iv.high[0].tolist()
    ([0.7, 0.0, 0.0], [0.9, 0.1, 0.3])
    >>> iv.stability
    1.0
    >>> iv.uncertain().tolist()       # L0H2's interval [0, 0.3] crosses 0.1
    [[False, False, True]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..run.results import SCORE_DECIMALS
from .bootstrap import LEVEL, N_BOOT, percentile_bounds, resampled_means
from .heads import head_name, top_heads

#: Default seed of the resamples (the same seed always draws the same resamples).
SEED = 0


def top_k_frequency(maps: torch.Tensor, k: int) -> torch.Tensor:
    """``[n_layers, n_heads]``: share of the maps (``[B, n_layers, n_heads]``) whose top-``k``
    heads include each head (ties broken by position, as :func:`rhlens.score.heads.top_heads`).

    A head counts only where it scores above 0: which of many heads at exactly 0 fill a
    top set is no finding, so a map with fewer than ``k`` scoring heads is not stable.

    >>> top_k_frequency(torch.tensor([[[0.5, 0.0, 0.0]], [[0.0, 0.2, 0.0]]]), 2).tolist()
    [[0.5, 0.5, 0.0]]
    """
    flat = maps.reshape(maps.shape[0], -1)
    if not 0 <= k <= flat.shape[1]:
        raise ValueError(f"k must lie in [0, {flat.shape[1]}], got {k}.")
    order = torch.argsort(-flat, dim=1, stable=True)[:, :k]
    scoring = (flat.gather(1, order) > 0).to(flat.dtype)
    hits = torch.zeros_like(flat).scatter_(1, order, scoring)
    return hits.mean(0).reshape(maps.shape[1:])


@dataclass(frozen=True)
class HeadIntervals:
    """Bootstrap uncertainty of a score map (:func:`head_intervals`).

    Attributes:
        mean: ``[n_layers, n_heads]`` the map (mean over samples).
        low, high: ``[n_layers, n_heads]`` the percentile interval of each head's mean.
        frequency: ``[n_layers, n_heads]`` share of resamples whose top-``k`` holds the head.
        k: the top-K set's size.
        stability: mean ``frequency`` of the map's own top-``k`` heads (the mean overlap of a
            resample's top-``k`` with the map's), in ``[0, 1]``.
        n_samples, n_resamples, seed, level: what the intervals rest on.
    """

    mean: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    frequency: torch.Tensor
    k: int
    stability: float
    n_samples: int
    n_resamples: int
    seed: int
    level: float

    def uncertain(self, threshold: float = 0.1) -> torch.Tensor:
        """``[n_layers, n_heads]`` bool: heads whose interval crosses ``threshold`` (it holds
        scores both at or below it and above it), so whether they are retrieval heads
        (score > 0.1) depends on the draw of prompts."""
        return (self.low <= threshold) & (self.high > threshold)

    def top(self, n: int | None = None) -> list[dict]:
        """The ``n`` best heads (default ``k``), best first: ``name``, ``layer``, ``head``,
        ``score``, ``low``, ``high``, ``frequency`` (share of resamples in the top ``k``)."""
        rows = []
        for l, h in top_heads(self.mean, self.k if n is None else n):
            rows.append({"name": head_name(l, h), "layer": l, "head": h,
                         "score": float(self.mean[l, h]), "low": float(self.low[l, h]),
                         "high": float(self.high[l, h]),
                         "frequency": float(self.frequency[l, h])})
        return rows

    def frame(self):
        """Every head as a pandas table sorted by score: ``name``, ``layer``, ``head``,
        ``score``, ``low``, ``high``, ``frequency``, ``uncertain`` (crosses 0.1)."""
        import pandas as pd

        rows = self.top(self.mean.numel())
        crosses = self.uncertain()
        for r in rows:
            r["uncertain"] = bool(crosses[r["layer"], r["head"]])
        return pd.DataFrame(rows)


def head_intervals(per_sample: torch.Tensor, k: int = 10, *, n_resamples: int = N_BOOT,
                   seed: int = SEED, level: float = LEVEL) -> HeadIntervals:
    """Bootstrap intervals of every head's mean score and the top-``k`` stability.

    Args:
        per_sample: ``[n_samples, n_layers, n_heads]`` scores of the samples that passed the
            gate (:attr:`rhlens.score.detect.ScoreRun.per_sample`, or
            :func:`rhlens.run.results.per_sample_scores` of a score file).
        k: size of the top set whose stability is measured (at most the number of heads).
        n_resamples: bootstrap resamples (default 1000), drawn by
            :func:`rhlens.score.bootstrap.resamples`.
        seed: seed of the resamples.
        level: coverage of the percentile intervals (default 0.95).
    """
    if per_sample.ndim != 3 or per_sample.shape[0] < 1:
        raise ValueError("per_sample must be [n_samples >= 1, n_layers, n_heads], got shape "
                         f"{tuple(per_sample.shape)}.")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}.")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
    # at the precision the score file keeps: a run's printout (float32 maps), its stopping rule
    # (the log's float64) and a later reader of its file then resample the very same values;
    # a last-digit difference would otherwise reorder heads tied in a resample's top k
    x = torch.round(per_sample.detach().double().cpu(), decimals=SCORE_DECIMALS)
    k = min(int(k), x[0].numel())
    mean = x.mean(0)
    boot = resampled_means(x, n_resamples, seed)
    low, high = (torch.from_numpy(b).reshape(mean.shape)
                 for b in percentile_bounds(boot.reshape(n_resamples, -1), level))
    freq = top_k_frequency(boot, k)
    chosen = top_heads(mean, k)
    stability = float(sum(freq[l, h] for l, h in chosen) / k) if k else 1.0
    # to 1e-12: a mean of three 0.1s is 0.10000000000000002, which must not "cross" 0.1
    return HeadIntervals(mean=mean, low=torch.round(low, decimals=12),
                         high=torch.round(high, decimals=12), frequency=freq, k=k,
                         stability=round(stability, 12), n_samples=int(x.shape[0]),
                         n_resamples=int(n_resamples), seed=int(seed), level=float(level))


def top_k_stability(per_sample: torch.Tensor, k: int, *, n_resamples: int = N_BOOT,
                    seed: int = SEED) -> float:
    """The top-``k`` set's stability alone (see :class:`HeadIntervals`)."""
    return head_intervals(per_sample, k, n_resamples=n_resamples, seed=seed).stability


def format_intervals(iv: HeadIntervals, n: int | None = None) -> str:
    """The ``n`` best heads (default ``k``) with their intervals and top-``k`` frequencies, and
    the top set's stability, as ``rhlens score`` prints them."""
    rows = iv.top(n)
    lines = [f"top heads with {iv.level:.0%} bootstrap intervals ({iv.n_resamples} resamples "
             f"of the {iv.n_samples} passed samples, seed {iv.seed}) and the share of "
             f"resamples whose top {iv.k} holds them:"]
    lines += [f"  {r['name']:<8s} {r['score']:.2f}  [{r['low']:.2f}, {r['high']:.2f}]  "
              f"{r['frequency']:6.1%}" for r in rows]
    lines.append(f"top-{iv.k} stability {iv.stability:.3f} (mean overlap of a resample's top "
                 f"{iv.k} with this map's); {int(iv.uncertain().sum())} heads' intervals cross "
                 "0.1")
    return "\n".join(lines)
