"""rhlens's statistics against scipy's: correlations exactly, the head-shuffle null and the
bootstrap interval within their Monte Carlo error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from rhlens.analyze.statistics import (
    bootstrap_ci,
    head_shuffle_null,
    map_correlation,
    null_pearson,
    pearson,
    ranks,
    spearman,
    top_k_overlap,
)


def _maps(seed: int, shape=(8, 6), zeros: float = 0.6):
    """Two related score maps with many heads at exactly 0 (ties), as real maps have."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    a[torch.rand(shape, generator=g) < zeros] = 0.0
    b = (0.5 * a + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)).round(decimals=1)
    return a, b


@pytest.mark.parametrize("seed", range(5))
def test_pearson_and_spearman_equal_scipy(seed):
    a, b = _maps(seed)
    assert pearson(a, b) == pytest.approx(stats.pearsonr(a.flatten(), b.flatten())[0], abs=1e-11)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.flatten(), b.flatten())[0],
                                           abs=1e-11)
    assert ranks(a).tolist() == stats.rankdata(a.flatten()).tolist()


def test_top_k_overlap_counts_shared_heads():
    a = torch.tensor([[0.9, 0.8, 0.0], [0.7, 0.0, 0.1]])
    b = torch.tensor([[0.9, 0.0, 0.8], [0.7, 0.0, 0.1]])
    assert top_k_overlap(a, b, 3) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 3])
def test_head_shuffle_p_value_matches_scipy_permutation_test(seed):
    a, b = _maps(seed, shape=(5, 4), zeros=0.3)
    n = 4000
    null = null_pearson(a, b, n=n, seed=seed)
    ours = float((null >= pearson(a, b) - 1e-12).double().mean())
    theirs = stats.permutation_test(
        (a.flatten().numpy(), b.flatten().numpy()),
        lambda x, y: stats.pearsonr(x, y)[0], permutation_type="pairings",
        alternative="greater", n_resamples=n, random_state=seed).pvalue
    # two Monte Carlo estimates of one p-value: within 4 standard errors of each other
    se = max(np.sqrt(theirs * (1 - theirs) / n), 1 / n)
    assert abs(ours - theirs) < 4 * np.sqrt(2) * se + 2 / n
    assert null.shape == (n,) and bool((null.abs() <= 1 + 1e-12).all())


def test_head_shuffle_null_takes_any_statistic_and_rng():
    a, b = _maps(1)
    by_seed = head_shuffle_null(a, b, spearman, 50, 7)
    assert torch.equal(by_seed, head_shuffle_null(a, b, spearman, 50, 7))
    by_numpy = head_shuffle_null(a, b, spearman, 50, np.random.default_rng(7))
    assert by_numpy.shape == (50,) and not torch.equal(by_seed, by_numpy)


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_interval_matches_scipy(seed):
    values = np.random.default_rng(seed).exponential(size=40)
    est, lo, hi = bootstrap_ci(values, n_boot=8000, seed=seed)
    ref = stats.bootstrap((values,), np.mean, n_resamples=8000, method="percentile",
                          random_state=seed).confidence_interval
    assert est == pytest.approx(values.mean())
    width = ref.high - ref.low
    assert lo == pytest.approx(ref.low, abs=0.05 * width)
    assert hi == pytest.approx(ref.high, abs=0.05 * width)


def test_map_correlation_resamples_pairs_and_shuffles_heads():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 5, generator=g, dtype=torch.float64)
    maps = truth[None] + 0.05 * torch.randn(12, 4, 5, generator=g, dtype=torch.float64)
    c = map_correlation(maps, truth, n_boot=300, n_null=300, seed=0)
    assert c["spearman"] == pytest.approx(stats.spearmanr(maps.mean(0).flatten(),
                                                          truth.flatten())[0], abs=1e-11)
    assert c["lo"] <= c["spearman"] <= c["hi"] and c["null_hi"] < c["lo"] and c["p"] < 0.01
    assert map_correlation(maps, truth, n_boot=300, n_null=300, seed=0) == c
