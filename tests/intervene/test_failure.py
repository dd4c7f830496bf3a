"""Failure modes: answer categories, attention mass on needle vs sink, sweep table."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from rhlens.intervene.failure import (
    attention_by_category,
    attention_mass,
    classify_sweep,
    failure_sweep,
    failure_table,
    heads_above,
    onset,
)
from rhlens.niah.answers import classify_answer, content_recall
from rhlens.niah.grid import Grid
from rhlens.niah.haystack import NEEDLES
from rhlens.viz.runs import plot_failure_modes


def test_classify_answer():
    assert classify_answer("smoked cardamom", " smoked cardamom.") == "complete"
    assert classify_answer("smoked cardamom", "Smoked paprika") == "incomplete"
    assert classify_answer("the Amber Heron", "the ship") == "hallucinated"  # 'the' ignored
    assert content_recall("the", "the end") == 1.0
    with pytest.raises(ValueError):
        content_recall("...", "x")


def test_attention_mass():
    rows = torch.zeros(2, 10)
    rows[0, 0], rows[0, 5] = 0.7, 0.3
    rows[1, 6] = 1.0
    m = attention_mass(rows, (5, 7), sink=2)
    assert m == pytest.approx({"needle": 0.65, "sink": 0.35})
    assert attention_mass(torch.zeros(0, 10), (5, 7)) == {"needle": 0.0, "sink": 0.0}


def test_failure_sweep(tiny_llama, hay):
    scores = torch.tensor([[0.1, 0.0, 0.5, 0.0], [0.9, 0.0, 0.0, 0.3]])
    grid = Grid([160], [0.5], NEEDLES[:1], hay, max_new_tokens=3)
    df = failure_sweep(tiny_llama, grid, scores, [0, 2], watch=2, progress=False)
    assert list(df["k"]) == [0, 2]
    assert df["watched"].tolist() == ["L1H0 L0H2", "L1H3 L0H0"]  # the next unmasked heads
    assert df["category"].isin(["complete", "incomplete", "hallucinated"]).all()
    assert ((df["needle_mass"] >= 0) & (df["needle_mass"] + df["sink_mass"] <= 1 + 1e-5)).all()
    t = failure_table(df)
    assert list(t.columns) == ["complete", "incomplete", "hallucinated"]
    assert t.sum(axis=1).tolist() == pytest.approx([1.0, 1.0])
    assert "n" in attention_by_category(df)
    assert len(plot_failure_modes(df).axes) == 2
    # a random-weight model answers nothing, so keeping only answered prompts keeps none
    kept = failure_sweep(tiny_llama, grid, scores, [0, 2], watch=2, progress=False,
                         answered_only=True)
    assert kept.empty and kept.attrs["unanswered"] == 1
    assert list(kept.columns) == list(df.columns)


def test_heads_above_matches_the_top_k_mask():
    scores = torch.tensor([[0.95, 0.41, 0.4], [0.0, 0.72, 0.1]])
    ks = heads_above(scores, [0.9, 0.7, 0.4, 0.1, 0.0])
    assert ks == {0.9: 1, 0.7: 2, 0.4: 3, 0.1: 4, 0.0: 5}  # strictly above: 0.4 and 0.1 excluded
    from rhlens.score.heads import top_heads

    for t, k in ks.items():
        assert {hd for hd in top_heads(scores, k)} == {(l, h) for l in range(2) for h in range(3)
                                                        if scores[l, h] > t}


def _sweep(rows):
    return pd.DataFrame(rows, columns=["needle", "length", "depth", "k", "kind", "answer",
                                       "expected"])


def test_classify_sweep_keeps_answered_prompts_and_finds_the_onset():
    a, b, c = "purple walrus seventeen", "smoked cardamom", "a hollow wooden owl"
    sweep = _sweep([
        ("n1", 500, 0.5, 0, "top", "It is purple walrus seventeen.", a),
        ("n2", 500, 0.5, 0, "top", "smoked cardamom", b),
        ("n3", 500, 0.5, 0, "top", "a box", c),                       # not answered unmasked
        ("n1", 500, 0.5, 4, "top", "purple walrus", a),               # incomplete
        ("n2", 500, 0.5, 4, "top", "smoked cardamom", b),
        ("n3", 500, 0.5, 4, "top", "a hollow wooden owl", c),         # dropped with its prompt
        ("n1", 500, 0.5, 9, "top", "a green door", a),                # hallucinated
        ("n2", 500, 0.5, 9, "top", "smoked", b),
        ("n1", 500, 0.5, 4, "random", float("nan"), a),               # an empty answer
    ])
    df = classify_sweep(sweep)
    assert df.attrs == {"unanswered": 1, "prompts": 2}
    assert set(df["needle"]) == {"n1", "n2"}
    assert df.loc[df["kind"] == "random", "category"].tolist() == ["hallucinated"]
    table = failure_table(df[df["kind"] == "top"])
    assert table.loc[4].tolist() == [0.5, 0.5, 0.0] and table.loc[9].tolist() == [0.0, 0.5, 0.5]
    assert onset(table) == 4 and onset(table, "hallucinated") == 9
    assert onset(table, "incomplete", min_share=0.5) is None
    by_t = table.rename(index={0: 1.0, 4: 0.4, 9: 0.1})
    assert onset(by_t) == 0.4
    assert classify_sweep(sweep, answered_only=False).attrs["prompts"] == 3
    with pytest.raises(ValueError, match="include 0"):
        classify_sweep(sweep[sweep["k"] > 0])
    with pytest.raises(ValueError, match="category"):
        onset(table, "partial")
