"""The one bootstrap: its resamples are numpy's stream, drawn one resample after another (the
stream the patching intervals have always drawn), and every interval reads them the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rhlens.analyze import statistics
from rhlens.score.bootstrap import bootstrap, percentile_bounds, percentile_interval, resampled_means, resamples


def test_resamples_are_the_generators_stream():
    gen = np.random.default_rng(7)
    expected = [gen.integers(0, 5, 5) for _ in range(20)]
    assert np.array_equal(resamples(5, 20, rng=7), np.stack(expected))
    # a generator passed in is drawn from in turn: two calls continue one stream
    gen = np.random.default_rng(7)
    assert np.array_equal(np.concatenate([resamples(5, 10, gen), resamples(5, 10, gen)]),
                          np.stack(expected))
    with pytest.raises(ValueError, match="at least one item"):
        resamples(0)


def test_statistics_uses_this_bootstrap():
    assert statistics.bootstrap is bootstrap
    assert statistics.percentile_interval is percentile_interval
    values = np.arange(9.0)
    draws = bootstrap(lambda idx: float(values[idx].mean()), 9, n_boot=300, rng=2)
    means = resampled_means(torch.as_tensor(values)[:, None], 300, rng=2)[:, 0].numpy()
    assert np.allclose(draws, means, atol=1e-12)
    est, lo, hi = statistics.bootstrap_ci(values, n_boot=300, seed=2)
    assert (est, lo, hi) == (4.0, *percentile_interval(draws))


def test_percentile_bounds_per_position():
    draws = np.stack([np.arange(101.0), 2 * np.arange(101.0)], axis=1)       # [101, 2]
    low, high = percentile_bounds(draws, level=0.9)
    assert np.allclose(low, [5.0, 10.0]) and np.allclose(high, [95.0, 190.0])
    assert percentile_interval(draws[:, 0], level=0.9) == (float(low[0]), float(high[0]))
    with pytest.raises(ValueError, match="level"):
        percentile_bounds(draws, level=1.0)
