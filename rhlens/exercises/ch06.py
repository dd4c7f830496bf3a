"""Checks for chapter 06 (intrinsic property and dynamic activation)."""

from __future__ import annotations

import torch


def check_pearson(fn) -> None:
    """``fn(a [L, H], b [L, H]) -> float``: Pearson correlation of two flattened score maps."""
    from rhlens.toy import score_correlation

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 8, generator=gen), torch.rand(4, 8, generator=gen)
    for x, y in ((a, b), (a, 3 * a + 1), (a, -a)):
        want, got = score_correlation(x, y), float(fn(x, y))
        assert abs(want - got) < 1e-5, (
            f"Expected {want:.4f}, got {got:.4f}. Hint: flatten both maps, subtract their means, "
            "divide the dot product by the product of the norms (or use torch.corrcoef).")
    print("✓ Pearson correlation is correct")


def check_top_head_per_sample(fn) -> None:
    """``fn(per_sample [n, L, H]) -> list[str]``: each sample's best head as ``"L{l}H{h}"``."""
    per = torch.zeros(3, 2, 3)
    per[0, 1, 2] = 0.9
    per[1, 0, 1] = 0.5
    per[2, 1, 0] = 0.7
    got = list(fn(per))
    assert got == ["L1H2", "L0H1", "L1H0"], f"Expected ['L1H2', 'L0H1', 'L1H0'], got {got}."
    print("✓ top head per sample is correct")
