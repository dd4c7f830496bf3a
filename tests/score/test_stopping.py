"""``--until-stable``: grid points in a seeded order until the top-K set is stable, resumable.

The stopping loop runs on the tiny model's prompts with the per-sample scorer replaced by a
fixed function of the prompt (a random-weight model copies nothing, so its maps are all 0):
two clear heads, one head that scores on some prompts only, noise elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import rhlens.score.detect as detect
from rhlens.errors import UsageError
from rhlens.niah.grid import Grid
from rhlens.run.card import read_card
from rhlens.run.shard import Shard
from rhlens.run.sweep import run_identity
from rhlens.score.detect import ScoreConfig
from rhlens.score.stopping import MIN_PASSED, UntilStable, describe


def fake_record(sample) -> dict:
    """A record whose scores depend on the prompt alone (so a resume recomputes the same)."""
    u = [b / 255 for b in hashlib.sha256(sample.key.encode()).digest()[:8]]
    scores = torch.zeros(2, 4, dtype=torch.float64)
    scores[1, 1] = 0.7 + 0.2 * u[0]
    scores[0, 3] = 0.4 + 0.2 * u[1]
    scores[1, 2] = 0.5 if u[2] < 0.5 else 0.0        # a head that fires on half the prompts
    scores[0, 0] = 0.45 if u[3] < 0.5 else 0.0
    return {"key": sample.key, "needle": sample.needle.text, "length": sample.length,
            "depth": sample.depth, "answer": "x", "rouge": 0.0 if u[4] < 0.2 else 1.0,
            "scores": scores.tolist()}


@pytest.fixture
def fake(monkeypatch):
    calls = []

    def score_sample(model, sample, **kwargs):
        calls.append(sample.key)
        return fake_record(sample)

    monkeypatch.setattr(detect, "score_sample", score_sample)
    # the fake stands in for the one-prompt scorer, so every sample is measured alone
    monkeypatch.setattr(detect.ScoreSweep, "batch_for", lambda self, sample: 1)
    return calls


@pytest.fixture
def grid(hay):
    return Grid([160, 200, 240], [0.1, 0.3, 0.5, 0.7, 0.9], needles=2, haystack=hay,
                max_new_tokens=3)


def test_order_is_a_seeded_prefix_of_a_permutation():
    items = list(range(20))
    a = UntilStable(3).order(items)
    assert sorted(a) == items and a != items and a == UntilStable(3).order(items)
    assert UntilStable(3, seed=1).order(items) != a
    assert UntilStable(3, max_samples=5).order(items) == a[:5]


def test_rule_checks_its_arguments(grid):
    for bad in (dict(k=0), dict(k=2, level=0), dict(k=2, level=1.2), dict(k=2, max_samples=0)):
        with pytest.raises(UsageError):
            UntilStable(**bad)
    with pytest.raises(UsageError, match="until_stable must be an UntilStable"):
        ScoreConfig(grid, until_stable=10)


def test_the_rule_is_not_part_of_the_run_identity(grid):
    # it chooses which samples a run takes, not what any of them scores: a run that stopped
    # resumes under a stricter rule, or none, from the same sample log
    plain = run_identity(ScoreConfig(grid))
    assert run_identity(ScoreConfig(grid, until_stable=UntilStable(3, seed=4))) == plain
    assert "until_stable" not in plain and "seed" not in plain


def test_outcome_reasons():
    stable = [{"passed": True, "scores": [[0.9, 0.0]]}] * MIN_PASSED
    rule = UntilStable(1, max_samples=8)
    assert rule.outcome(stable, 10)["reason"] == "stable"
    noisy = [{"passed": True, "scores": [[0.5, 0.0]]}, {"passed": True, "scores": [[0.0, 0.5]]}]
    assert rule.outcome(noisy, 10)["stability"] is None          # fewer than MIN_PASSED
    assert rule.outcome(noisy, 10)["reason"] == "running"
    assert rule.outcome(noisy * 4, 10)["reason"] == "max-samples"
    assert UntilStable(1).outcome(noisy * 5, 10)["reason"] == "grid exhausted"
    assert "the grid ran out" in describe(UntilStable(1).outcome(noisy * 5, 10))


def test_stops_when_the_top_set_is_stable_and_resumes_where_it_stopped(tiny_llama, grid,
                                                                      fake, tmp_path):
    out = tmp_path / "s.json"
    rule = UntilStable(2, level=0.9)
    run = detect.detect_retrieval_heads(tiny_llama, grid, out=out, until_stable=rule,
                                        progress=False)
    assert run.stopped is not None
    n = len(fake)
    assert run.stopped["reason"] == "stable" and run.stopped["samples"] == n < len(grid)
    assert run.stopped["stability"] >= 0.9 and run.stopped["passed"] >= MIN_PASSED
    # it took the grid in the seeded order, and stopped at the first stable point
    order = [s.key for s in rule.order(grid.samples(tiny_llama.tokenizer))]
    assert fake == order[:n]
    records = run.records
    for m in range(1, n):
        assert rule.outcome(records[:m], len(grid))["reason"] != "stable"
    assert {name for name, _ in run.summary(2)["top"]} == {"L1H1", "L0H3"}
    # the score file holds the passed samples taken, the card the rule and where it stopped
    data = json.loads(out.read_text())
    assert len(data["1-1"]) == run.stopped["passed"] == int(sum(r["passed"] for r in records))
    card = read_card(out)
    assert card["until_stable"] == run.stopped and card["seed"] == 0
    assert card["samples"]["run"] == n
    # the same command again: nothing recomputed, the same files
    before = (out.read_bytes(), Path(f"{out}.card.json").read_bytes())
    fake.clear()
    again = detect.detect_retrieval_heads(tiny_llama, grid, out=out, until_stable=rule,
                                          progress=False)
    assert fake == [] and again.stopped == run.stopped
    assert (out.read_bytes(), Path(f"{out}.card.json").read_bytes()) == before
    # a stricter rule goes on from there, reusing the logged samples
    more = detect.detect_retrieval_heads(tiny_llama, grid, out=out, progress=False,
                                         until_stable=UntilStable(4, level=0.99))
    assert more.stopped is not None and more.stopped["samples"] > n
    assert fake == order[n:more.stopped["samples"]]
    # and a run without the rule takes the rest of the grid from the same log
    fake.clear()
    whole = detect.detect_retrieval_heads(tiny_llama, grid, out=out, progress=False)
    assert whole.stopped is None and len(whole.records) == len(grid)
    assert len(fake) == len(grid) - more.stopped["samples"]


def test_max_samples_caps_an_unstable_run(tiny_llama, grid, fake, tmp_path):
    rule = UntilStable(4, level=1.0, max_samples=7)
    run = detect.detect_retrieval_heads(tiny_llama, grid, out=tmp_path / "s.json",
                                        until_stable=rule, progress=False)
    assert run.stopped is not None
    assert len(fake) == 7 and run.stopped["reason"] == "max-samples"
    assert read_card(tmp_path / "s.json")["until_stable"]["reason"] == "max-samples"


def test_not_with_shards(tiny_llama, grid):
    with pytest.raises(UsageError, match="until_stable needs every sample"):
        detect.detect_retrieval_heads(tiny_llama, grid, until_stable=UntilStable(2),
                                      shard=Shard(0, 2), progress=False)


def test_cli_flags(files, cli, one_error, no_model, monkeypatch):
    base = ["score", "--model", "tiny-llama", "--lengths", "160", "--depths", "0.3,0.7",
            "--needles", "2", "--rouge-gate", "-1", "--max-new-tokens", "3",
            "--haystack", files / "hay.txt", "--out", files / "s.json"]
    for extra, words in ((["--max-samples", "3"], "--max-samples goes with --until-stable"),
                         (["--stability", "0.8"], "--stability goes with --until-stable"),
                         (["--until-stable", "2", "--shard", "0/2"], "drop --shard"),
                         (["--until-stable", "9"], "exceeds the model's 8 query heads"),
                         (["--until-stable", "2", "--stability", "1.5"], "--stability must lie"),
                         (["--until-stable", "2", "--max-samples", "0"], "--max-samples must")):
        assert words in one_error(*base, *extra), extra
    # a launcher's rank is a shard too, refused before the model loads
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "drop --shard" in one_error(*base, "--until-stable", "2")


def test_cli_reports_where_it_stopped(files, cli):
    # a random-weight model copies nothing: no top set ever forms, the cap stops it
    rc, text, _ = cli("score", "--model", "tiny-llama", "--lengths", "160", "--depths", "0.3,0.7",
                      "--needles", "2", "--rouge-gate", "-1", "--max-new-tokens", "3",
                      "--haystack", files / "hay.txt", "--out", files / "s.json",
                      "--until-stable", "2", "--max-samples", "3")
    assert rc == 0
    assert "until stable: --max-samples reached with top-2 stability not measured" in text
    assert "after 3 samples (3 passed; order seed 0" in text
