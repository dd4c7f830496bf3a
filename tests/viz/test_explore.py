"""The explorers, driven programmatically (no browser): set widget values, check what they show."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
import torch

from rhlens import NEEDLES, build_sample, default_haystack
from rhlens.niah.answers import classify_answer, classify_score
from rhlens.run.decode import DecodeTrace
from rhlens.score.heads import share_above
from rhlens.viz.explore import (
    head_data,
    head_explorer,
    masking_explorer,
    masking_row,
    score_map_explorer,
    step_view,
    use_static,
)

pytest.importorskip("ipywidgets")
matplotlib.use("Agg")


@pytest.fixture(scope="module")
def sample(tiny_llama):
    return build_sample(tiny_llama.tokenizer, NEEDLES[0], default_haystack(), 150, 0.5)


@pytest.fixture()
def copying_trace(sample):
    """A synthetic trace in which head (1, 2) copies the first 3 needle tokens, one per step,
    and head (0, 0) attends to the first token (the sink) throughout."""
    start, _ = sample.needle_span
    n, steps = sample.input_ids.numel(), 3
    tokens = sample.input_ids[start : start + steps].clone()
    copy_rows = torch.zeros(steps, n + steps)
    sink_rows = torch.zeros(steps, n + steps)
    for t in range(steps):
        copy_rows[t, : n + t] = 0.1 / (n + t)
        copy_rows[t, start + t] += 0.9
        sink_rows[t, 0] = 1.0
    return DecodeTrace(prompt_ids=sample.input_ids, tokens=tokens,
                       argmax=torch.zeros(steps, 2, 4, dtype=torch.long), text="",
                       rows={(1, 2): copy_rows, (0, 0): sink_rows})


@pytest.fixture()
def masking_frame():
    rows = [dict(k=0, kind="top", seed=0, answer="eat a sandwich", score=100.0)]
    for k, (top, top_score) in {2: ("eat a", 66.7), 5: ("go surfing", 0.0)}.items():
        rows.append(dict(k=k, kind="top", seed=0, answer=top, score=top_score))
        for seed in (0, 1):
            rows.append(dict(k=k, kind="random", seed=seed, answer=f"eat a sandwich {seed}",
                             score=100.0))
    frame = pd.DataFrame(rows)
    frame["class"] = [classify_score(s) for s in frame["score"]]
    return frame


def test_classify_answer_uses_rouge_recall():
    assert classify_answer("eat a sandwich", "They eat a sandwich.") == "complete"
    assert classify_answer("eat a sandwich", "eat a pizza") == "incomplete"
    assert classify_answer("eat a sandwich", "nothing here") == "hallucinated"


def test_static_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv("RHLENS_STATIC", "1")
    assert use_static() is True
    assert use_static(False) is False
    monkeypatch.setenv("RHLENS_STATIC", "0")
    assert use_static() is False


def test_step_view_finds_copy_paste(tiny_llama, sample, copying_trace):
    data, heads = head_data(tiny_llama, sample, copying_trace, heads=[(1, 2), (0, 0)])
    start, _ = sample.needle_span
    view = step_view(data, 0, 1, 2, step=2)
    assert view.top == start + 2 and view.copy and view.in_needle
    assert view.attention.shape == (sample.input_ids.numel() + 2,)
    sink = step_view(data, 0, 0, 0, step=1)
    assert sink.top == 0 and not sink.copy and sink.sink_mass == pytest.approx(1.0)


def test_head_explorer_follows_steps_and_heads(tiny_llama, sample, copying_trace):
    ui = head_explorer(tiny_llama, sample, copying_trace, heads=[(1, 2), (0, 0)], static=False)
    c, v = ui.controls, ui.views
    tok = tiny_llama.tokenizer
    start, _ = sample.needle_span
    assert "copy-paste from the needle" in v["info"].value
    assert f"position {start}" in v["info"].value
    c["step"].value = 2
    assert ui.state["view"].top == start + 2
    assert f"position {start + 2}" in v["info"].value
    marked = tok.decode([int(copying_trace.tokens[2])])
    assert f"<b>{marked}</b></mark>" in v["answer"].value.replace("&#x27;", "'")
    line = ui.state["figure"].axes[0].lines[0]
    want = copying_trace.rows[(1, 2)][2, : sample.input_ids.numel() + 2]
    assert line.get_ydata().tolist() == pytest.approx(want.tolist())
    c["menu"].value = (0, 0)  # switch to the sink head
    assert (c["layer"].value, c["head"].value) == (0, 0)
    assert ui.state["view"].top == 0
    assert "looks outside the needle" in v["info"].value
    ui.select_head(1, 2)
    assert ui.state["view"].copy


def test_head_explorer_records_missing_heads_on_demand(tiny_llama, sample):
    ui = head_explorer(tiny_llama, sample, heads=[(1, 0)], max_new_tokens=4, static=False)
    trace = ui.data.traces[0]
    assert set(trace.rows) == {(1, 0)}  # only the rows it needs
    ui.select_head(0, 3)
    assert (0, 3) in trace.rows
    assert trace.rows[(0, 3)].shape == trace.rows[(1, 0)].shape
    row = trace.rows[(0, 3)][0, : sample.input_ids.numel()]
    assert ui.state["view"].top == int(row.argmax())


def test_head_explorer_without_model_needs_the_rows(tiny_llama, sample, copying_trace):
    ui = head_explorer(None, sample, copying_trace, heads=[(1, 2)], tokenizer=tiny_llama.tokenizer,
                       static=False)
    ui.select_head(1, 3)
    assert "was not recorded" in ui.views["info"].value


def test_head_explorer_static_figure(tiny_llama, sample, copying_trace):
    fig = head_explorer(tiny_llama, sample, copying_trace, heads=[(1, 2)], static=True)
    heat = fig.axes[0].images[0].get_array()
    assert heat.shape[0] == 3 and heat.max() == pytest.approx(0.9, abs=0.01)
    assert "3/3 copy-paste" in fig.axes[0].get_title()


def test_masking_explorer_looks_runs_up(masking_frame):
    ui = masking_explorer(masking_frame, static=False)
    c, v = ui.controls, ui.views
    assert "complete" in v["result"].value and "100" in v["result"].value
    c["k"].value = 5
    assert "hallucinated" in v["result"].value and "go surfing" in v["result"].value
    c["kind"].value = "random"
    c["seed"].value = 1
    assert "eat a sandwich 1" in v["result"].value and "seed 1" in v["result"].value
    c["k"].value = 2
    c["kind"].value = "top"
    assert "incomplete" in v["result"].value and ui.state["row"]["score"] == pytest.approx(66.7)
    assert c["seed"].disabled


def test_masking_frame_errors_and_lookup(masking_frame):
    assert masking_row(masking_frame, 0, "random", 1)["answer"] == "eat a sandwich"
    with pytest.raises(ValueError, match="lack columns"):
        masking_explorer(masking_frame.drop(columns=["answer"]), static=False)
    fig = masking_explorer(masking_frame.drop(columns=["class"]), static=True)
    assert len(fig.axes[0].lines) == 2  # top and random curves


def test_score_map_threshold_and_click(tiny_llama, sample, copying_trace):
    scores = torch.zeros(2, 4)
    scores[1, 2], scores[0, 0], scores[1, 1] = 0.8, 0.3, 0.05
    hx = head_explorer(tiny_llama, sample, copying_trace, heads=[(0, 0), (1, 2)], static=False)
    ui = score_map_explorer(scores, on_select=hx, static=False)
    assert "25.0%" in ui.views["share"].value  # 2 of 8 heads above 0.1
    assert ui.cells[(1, 2)].description == "•" and ui.cells[(1, 1)].description == ""
    ui.controls["threshold"].value = 0.5
    assert "12.5%" in ui.views["share"].value
    assert ui.cells[(0, 0)].description == ""
    ui.cells[(1, 2)].click()
    assert ui.state["selected"] == (1, 2)
    assert (hx.controls["layer"].value, hx.controls["head"].value) == (1, 2)
    assert hx.state["view"].copy
    picked = []
    ui2 = score_map_explorer(scores, on_select=lambda l, h: picked.append((l, h)), static=False)
    ui2.controls["menu"].value = (0, 0)
    assert picked == [(0, 0)]
    assert share_above(scores, 0.1) == pytest.approx(0.25)


def test_score_map_static_marks_heads():
    scores = torch.zeros(3, 3)
    scores[2, 1] = 0.9
    fig = score_map_explorer(scores, static=True)
    assert "> 0.1: 11.1%" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="n_layers, n_heads"):
        score_map_explorer(torch.zeros(3), static=True)
