"""Per-head bootstrap intervals and top-K stability: against a plain bootstrap written here and
the one of :mod:`rhlens.analyze.statistics`, in ``ScoreRun.summary()``, the ``rhlens score``
printout and ``rhlens plot --mark-uncertain``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rhlens.analyze.statistics import bootstrap_ci
from rhlens.run.results import SCORE_DECIMALS, scores_to_json
from rhlens.score.bootstrap import resampled_means, resamples
from rhlens.score.detect import ScoreRun
from rhlens.score.uncertainty import format_intervals, head_intervals, top_k_frequency
from rhlens.viz.plots import plot_scores


def noisy_samples(n=12, seed=0) -> torch.Tensor:
    """``[n, 3, 4]``: two clear heads, one near 0.1, a noisy pair, the rest 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, 4, dtype=torch.float64)
    x[:, 2, 1] = 0.8 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)
    x[:, 1, 3] = 0.6 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)
    x[:, 0, 2] = torch.where(torch.rand(n, generator=g) < 0.3, 0.35, 0.0).double()
    x[:, 1, 0] = 0.3 * torch.rand(n, generator=g, dtype=torch.float64)
    x[:, 2, 3] = 0.3 * torch.rand(n, generator=g, dtype=torch.float64)
    return x


def test_resampled_means_are_the_means_of_index_resamples():
    x = noisy_samples()
    # the resamples drawn as indices with numpy's generator, averaged the plain way
    gen = np.random.default_rng(3)
    plain = torch.stack([x[torch.as_tensor(gen.integers(0, len(x), len(x)))].mean(0)
                         for _ in range(50)])
    assert torch.allclose(resampled_means(x, 50, rng=3), plain, atol=1e-12)
    assert resamples(len(x), 50, rng=3).shape == (50, len(x))


def test_a_head_interval_is_the_bootstrap_interval_of_its_scores():
    # one bootstrap: a head's interval over samples is what bootstrap_ci gives for that head's
    # per-sample scores with the same seed (the same resamples, the same percentile interval);
    # the scores at a score file's precision, which is what the intervals resample
    x = torch.round(noisy_samples(), decimals=SCORE_DECIMALS)
    iv = head_intervals(x, k=2, n_resamples=300, seed=5, level=0.9)
    for l, h in [(2, 1), (0, 2), (1, 0)]:
        est, lo, hi = bootstrap_ci(x[:, l, h].numpy(), n_boot=300, seed=5, level=0.9)
        assert float(iv.mean[l, h]) == pytest.approx(est, abs=1e-12)
        assert float(iv.low[l, h]) == pytest.approx(lo, abs=1e-11)
        assert float(iv.high[l, h]) == pytest.approx(hi, abs=1e-11)


def test_intervals_cover_the_mean_and_are_seeded():
    x = noisy_samples()
    iv = head_intervals(x, k=2, n_resamples=500, seed=1)
    assert torch.all(iv.low <= iv.mean + 1e-12) and torch.all(iv.mean <= iv.high + 1e-12)
    assert float(iv.low[2, 1]) >= 0.8 and float(iv.high[2, 1]) <= 0.9
    # a head at exactly 0 on every sample has the interval [0, 0]
    assert float(iv.low[0, 0]) == float(iv.high[0, 0]) == 0.0
    again = head_intervals(x, k=2, n_resamples=500, seed=1)
    assert torch.equal(iv.low, again.low) and torch.equal(iv.frequency, again.frequency)
    other = head_intervals(x, k=2, n_resamples=500, seed=2)
    assert not torch.equal(iv.low, other.low) or not torch.equal(iv.high, other.high)
    # the 95% interval is wider than the 50% one
    narrow = head_intervals(x, k=2, n_resamples=500, seed=1, level=0.5)
    assert torch.all(narrow.high - narrow.low <= iv.high - iv.low + 1e-12)


def test_top_k_stability_and_frequency():
    x = noisy_samples()
    iv = head_intervals(x, k=2, n_resamples=400)
    # the two clear heads are in every resample's top 2
    assert iv.stability == 1.0
    assert float(iv.frequency[2, 1]) == float(iv.frequency[1, 3]) == 1.0
    assert float(iv.frequency.sum()) == pytest.approx(2.0)
    # the top 4 takes noisy heads: less stable
    wide = head_intervals(x, k=4, n_resamples=400)
    assert 0.5 < wide.stability < 1.0
    # stability is the mean overlap of a resample's top-k with the map's top-k
    boot = resampled_means(x, 400, rng=0)
    top = [(r["layer"], r["head"]) for r in wide.top()]
    overlaps = []
    for m in boot:
        order = torch.argsort(-m.flatten(), stable=True)[:4].tolist()
        chosen = {(i // 4, i % 4) for i in order if float(m.flatten()[i]) > 0}
        overlaps.append(len(chosen & set(top)) / 4)
    assert wide.stability == pytest.approx(sum(overlaps) / len(overlaps), abs=1e-12)


def test_intervals_do_not_depend_on_digits_the_score_file_drops():
    # heads 1 and 2 score the same on every sample and compete for the top 2: the last digits
    # of a float32 map (a run's printout) or of the log's float64 (its stopping rule) must not
    # decide which of them a resample ranks first, or printout, card and file disagree
    base = torch.tensor([[0.9, 0.4, 0.4, 0.0], [0.8, 0.1, 0.1, 0.3], [0.7, 0.6, 0.6, 0.2],
                         [0.9, 0.2, 0.2, 0.5]], dtype=torch.float64).reshape(4, 1, 4)
    jitter = base + torch.tensor([0.0, 0.0, 1e-9, 0.0], dtype=torch.float64)
    ref = head_intervals(base, k=2, n_resamples=300)
    for x in (jitter, base.float()):
        iv = head_intervals(x, k=2, n_resamples=300)
        assert torch.equal(iv.frequency, ref.frequency)
        assert iv.stability == ref.stability
    assert ref.frequency[0, 1] > ref.frequency[0, 2]   # ties go to the first head, by position


def test_heads_tied_at_zero_are_not_a_stable_top_set():
    x = torch.zeros(10, 2, 3, dtype=torch.float64)
    x[:, 0, 1] = 0.5
    assert head_intervals(x, k=1).stability == 1.0
    assert head_intervals(x, k=3).stability == pytest.approx(1 / 3)
    assert top_k_frequency(torch.zeros(4, 1, 3), 2).sum() == 0


def test_uncertain_marks_intervals_that_cross_point_one():
    x = noisy_samples()
    iv = head_intervals(x, k=2)
    crosses = iv.uncertain()
    assert bool(crosses[0, 2]) and not bool(crosses[2, 1]) and not bool(crosses[0, 0])
    assert torch.equal(crosses, (iv.low <= 0.1) & (iv.high > 0.1))
    # a head at exactly 0.1 on every sample does not cross (its interval is [0.1, 0.1])
    y = torch.full((5, 1, 1), 0.1, dtype=torch.float64)
    assert not bool(head_intervals(y, k=1).uncertain()[0, 0])
    frame = iv.frame()
    assert list(frame.name[:2]) == ["L2H1", "L1H3"] and frame.uncertain.sum() == crosses.sum()


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_samples >= 1"):
        head_intervals(torch.zeros(0, 2, 2))
    with pytest.raises(ValueError, match="level"):
        head_intervals(torch.zeros(3, 2, 2), level=1.5)


def test_summary_holds_the_intervals():
    x = noisy_samples()
    run = ScoreRun(scores=x.mean(0), per_sample=x, records=[])
    s = run.summary(top=2)
    assert [r["name"] for r in s["intervals"]] == [n for n, _ in s["top"]] == ["L2H1", "L1H3"]
    assert s["stability"] == 1.0 and s["uncertain"] >= 1
    assert s["bootstrap"] == {"n_samples": 12, "n_resamples": 1000, "seed": 0, "level": 0.95}
    r = s["intervals"][0]
    assert r["low"] <= r["score"] <= r["high"] and r["frequency"] == 1.0
    text = format_intervals(run.intervals(2))
    assert "L2H1" in text and "top-2 stability 1.000" in text
    empty = ScoreRun(scores=torch.zeros(3, 4), per_sample=torch.zeros(0, 3, 4), records=[])
    assert "intervals" not in empty.summary()


def test_score_prints_intervals(files, cli):
    rc, text, _ = cli("score", "--model", "tiny-llama", "--lengths", "160", "--depths", "0.3,0.7",
                      "--needles", "1", "--rouge-gate", "-1", "--max-new-tokens", "3",
                      "--haystack", files / "hay.txt", "--out", files / "s.json")
    assert rc == 0
    assert "95% bootstrap intervals (1000 resamples of the 2 passed samples, seed 0)" in text
    assert "top-8 stability" in text and "[0.00, 0.00]" in text


def test_plot_marks_uncertain_heads(tmp_path, cli, one_error):
    x = noisy_samples().float()
    path, png = tmp_path / "s.json", tmp_path / "h.png"
    path.write_text(json.dumps(scores_to_json(list(x), 3, 4)))
    assert cli("plot", path, "--out", png, "--mark-uncertain")[0] == 0
    assert png.stat().st_size > 10_000
    uncertain = head_intervals(x.double()).uncertain()
    fig = plot_scores(x.double().mean(0), uncertain=uncertain)
    heat = fig.axes[0]
    assert len(heat.patches) == int(uncertain.sum()) > 0
    assert f"{int(uncertain.sum())} heads whose interval crosses 0.1" in heat.get_xlabel()
    assert "--mark-uncertain needs each sample's scores" in \
        one_error("plot", "mixtral-8x7b", "--out", png, "--mark-uncertain")
    # a file of one mean per head cannot be resampled
    path.write_text(json.dumps({"0-0": 0.5, "0-1": 0.25}))
    assert "cannot be resampled" in one_error("plot", path, "--out", png, "--mark-uncertain")
