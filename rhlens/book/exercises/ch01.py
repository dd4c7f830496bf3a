"""Checks for chapter 01 (toy models)."""

from __future__ import annotations

import torch

from .check import checker, expect, passed


@checker
def check_exact_value_accuracy(fn) -> None:
    """``fn(logits [n, m, vocab], values [n, m]) -> float``: share of rows whose every value
    token is the argmax."""
    logits = torch.zeros(3, 2, 5)
    values = torch.tensor([[1, 2], [3, 4], [0, 0]])
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            logits[i, j, v] = 1.0
    logits[2, 1, 3] = 5.0  # row 2 gets its second token wrong
    got = float(fn(logits, values))
    expect(abs(got - 2 / 3) < 1e-6, "exact-value accuracy",
           f"expected 2/3 (rows 0 and 1 fully right, row 2 has one wrong token), got {got}",
           "compare argmax(-1) with values, then require .all() along the value axis")
    passed("exact-value accuracy")


@checker
def check_uniform_row(fn) -> None:
    """``fn(n_keys: int) -> Tensor [n_keys]``: the uniform attention row a masked head gets."""
    for k in (1, 4, 9):
        row = torch.as_tensor(fn(k))
        expect(tuple(row.shape) == (k,), "uniform row", f"expected shape ({k},), got {tuple(row.shape)}")
        expect(torch.allclose(row.float(), torch.full((k,), 1.0 / k)), "uniform row",
               f"for {k} keys got {row.tolist()}", "every key gets 1 / n_keys")
    passed("uniform row")
