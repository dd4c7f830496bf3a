"""Checks for chapter 7 (downstream tasks)."""

from __future__ import annotations

import torch

from ...apps.downstream import summarize_conditions
from ...apps.tasks import eval_chain
from ...niah.answers import token_f1
from .check import checker, expect, passed


@checker
def check_token_f1(fn) -> None:
    """``fn(prediction, truth) -> float`` must be SQuAD's token F1 (normalised bag of tokens)."""
    cases = [
        ("The Amber Heron.", "amber heron", 1.0),
        ("purple walrus", "purple walrus seventeen", 0.8),
        ("a blue giraffe on a bicycle", "blue giraffe", 2 / 3),
        ("nothing", "smoked cardamom", 0.0),
        ("walrus walrus", "walrus", 2 * 0.5 * 1 / 1.5),
    ]
    for pred, truth, want in cases:
        assert abs(token_f1(pred, truth) - want) < 1e-9  # the reference agrees with the cases
        got = float(fn(pred, truth))
        expect(abs(got - want) < 1e-6, "token F1",
               f"F1({pred!r}, {truth!r}) should be {want:.3f}, got {got:.3f}",
               "lower-case, strip punctuation and the articles a/an/the, then count shared "
               "tokens with a Counter intersection (a repeated word counts only as often as in "
               "both)")
    passed("token F1")


@checker
def check_eval_chain(fn) -> None:
    """``fn(lines) -> dict[var, int]`` executes ``"b = a + 3"`` style assignments."""
    lines = ["a = 4", "k = 9", "b = a + 3", "c = b - 5", "z = k + c"]
    want = eval_chain(lines)
    got = dict(fn(lines))
    expect(got == want, "eval chain", f"expected {want}, got {got}",
           "run the lines in order; a name on the right is a variable defined earlier")
    passed("eval chain")


def _frame():
    import pandas as pd

    g = torch.Generator().manual_seed(5)
    rows = []
    for cond, level in [("none", 0.8), ("top-10", 0.4), ("random-10-s0", 0.75),
                        ("random-10-s1", 0.6), ("random-10-s2", 0.7)]:
        for item in range(4):
            rows.append({"item": item, "condition": cond,
                         "f1": float((level + 0.2 * torch.rand(1, generator=g)).clamp(0, 1))})
    return pd.DataFrame(rows)


@checker
def check_summarize(fn) -> None:
    """``fn(frame, metric) -> DataFrame`` with ``condition``, ``mean``, ``spread`` and
    ``change``: per condition the mean metric, the random seeds pooled into one row
    (``random-10``) whose mean is the mean of the seeds' means and whose spread is their standard
    deviation, and the change relative to ``none`` in percent. The reference is
    :func:`rhlens.apps.downstream.summarize_conditions`."""
    frame = _frame()
    want = summarize_conditions(frame, "f1").set_index("condition")
    got = fn(frame.copy(), "f1")
    got = got.set_index("condition") if "condition" in got.columns else got
    expect(sorted(got.index) == sorted(want.index), "summarize",
           f"conditions {sorted(got.index)}, expected {sorted(want.index)}",
           "pool the seeds: 'random-10-s0', 'random-10-s1', ... form one row 'random-10' "
           "(strip the '-sN' suffix)")
    for cond in want.index:
        for col, hint in [("mean", "the mean of each seed's mean over items"),
                          ("spread", "the standard deviation OVER SEEDS of each seed's mean "
                                     "(pandas' std, ddof=1), not over items; 0 for one seed"),
                          ("change", "100 * (mean - mean of 'none') / mean of 'none'")]:
            expect(col in got.columns, "summarize", f"missing column {col!r}")
            a, b = float(got.loc[cond, col]), float(want.loc[cond, col])
            expect(abs(a - b) < 1e-6, "summarize", f"{cond}: {col} = {a:.4f}, expected {b:.4f}",
                   hint)
    passed("summarize", "seeds pooled as the paper's controls")
