"""Checks for chapter 06 (intrinsic property and dynamic activation).

Correlating two score maps is chapter 3's :func:`rhlens.exercises.ch03.check_pearson`."""

from __future__ import annotations

import torch

from ..heads import head_name
from .check import expect, passed


def check_top_head_per_sample(fn) -> None:
    """``fn(per_sample [n, L, H]) -> list[str]``: each sample's best head as ``"L{l}H{h}"``."""
    per = torch.zeros(3, 2, 3)
    per[0, 1, 2] = 0.9
    per[1, 0, 1] = 0.5
    per[2, 1, 0] = 0.7
    want = [head_name(*divmod(int(p.flatten().argmax()), per.shape[2])) for p in per]
    got = list(fn(per))
    expect(got == want, "top head per sample", f"expected {want}, got {got}",
           "argmax over the flattened [L, H] map of each sample, then layer = i // H, head = i % H")
    passed("top head per sample")
