"""Failure modes: answer categories, attention mass on needle vs sink, sweep table."""

from __future__ import annotations

import pytest
import torch

from rhlens.intervene.failure import (
    attention_by_category,
    attention_mass,
    failure_sweep,
    failure_table,
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
