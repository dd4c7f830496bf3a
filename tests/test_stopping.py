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

import rhlens.detect as detect
from rhlens.card import read_card
from rhlens.cli import main
from rhlens.errors import UsageError
from rhlens.grid import Grid
from rhlens.stopping import MIN_PASSED, UntilStable, describe

HAY = "The river runs past the mill. The baker sells bread at dawn. " * 40


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
    return calls


@pytest.fixture
def grid():
    return Grid([160, 200, 240], [0.1, 0.3, 0.5, 0.7, 0.9], needles=2, haystack=HAY,
                max_new_tokens=3)


def test_order_is_a_seeded_prefix_of_a_permutation():
    items = list(range(20))
    a = UntilStable(3).order(items)
    assert sorted(a) == items and a != items and a == UntilStable(3).order(items)
    assert UntilStable(3, seed=1).order(items) != a
    assert UntilStable(3, max_samples=5).order(items) == a[:5]


def test_rule_checks_its_arguments():
    for bad in (dict(k=0), dict(k=2, level=0), dict(k=2, level=1.2), dict(k=2, max_samples=0)):
        with pytest.raises(UsageError):
            UntilStable(**bad)


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
    assert fake == order[n:more.stopped["samples"]]
    assert more.stopped["samples"] > n


def test_max_samples_caps_an_unstable_run(tiny_llama, grid, fake, tmp_path):
    rule = UntilStable(4, level=1.0, max_samples=7)
    run = detect.detect_retrieval_heads(tiny_llama, grid, out=tmp_path / "s.json",
                                        until_stable=rule, progress=False)
    assert len(fake) == 7 and run.stopped["reason"] == "max-samples"
    assert read_card(tmp_path / "s.json")["until_stable"]["reason"] == "max-samples"


def test_not_with_shards(tiny_llama, grid):
    from rhlens.shard import Shard

    with pytest.raises(ValueError, match="until_stable"):
        detect.detect_retrieval_heads(tiny_llama, grid, until_stable=UntilStable(2),
                                      shard=Shard(0, 2), progress=False)


def test_cli_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = ["score", "--model", "tiny-llama", "--lengths", "160", "--depths", "0.3,0.7",
            "--needles", "2", "--rouge-gate", "-1", "--max-new-tokens", "3",
            "--out", str(tmp_path / "s.json")]
    for extra, words in ((["--max-samples", "3"], "--max-samples goes with --until-stable"),
                         (["--stability", "0.8"], "--stability goes with --until-stable"),
                         (["--until-stable", "2", "--shard", "0/2"], "drop --shard"),
                         (["--until-stable", "9"], "exceeds the model's 8 query heads"),
                         (["--until-stable", "2", "--stability", "1.5"], "--stability must lie"),
                         (["--until-stable", "2", "--max-samples", "0"], "--max-samples must")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (extra, err)
    # a random-weight model copies nothing: no top set ever forms, the cap stops it
    assert main(base + ["--until-stable", "2", "--max-samples", "3"]) == 0
    text = capsys.readouterr().out
    assert "until stable: --max-samples reached with top-2 stability not measured" in text
    assert "after 3 samples (3 passed; order seed 0" in text
