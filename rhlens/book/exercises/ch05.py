"""Checks for chapter 5 (activation patching, direct logit attribution and failure modes)."""

from __future__ import annotations

from ...niah.answers import classify_answer
from .check import checker, expect, passed


@checker
def check_restored_fraction(fn) -> None:
    """``fn(ld_patched, ld_clean, ld_cf) -> float``: share of the logit difference restored."""
    cases = [((3.0, 3.0, -1.0), 1.0), ((-1.0, 3.0, -1.0), 0.0), ((1.0, 3.0, -1.0), 0.5),
             ((5.0, 3.0, -1.0), 1.5), ((-2.0, 2.0, 0.0), -1.0)]
    for args, want in cases:
        got = float(fn(*args))
        expect(abs(got - want) < 1e-9, "restored fraction", f"fn{args} = {got}, expected {want}",
               "0 means no better than the counterfactual run, 1 means as good as the clean run")
    passed("restored fraction")


@checker
def check_classify(fn) -> None:
    """``fn(answer, output) -> 'complete' | 'incomplete' | 'hallucinated'``."""
    cases = [
        ("purple walrus seventeen", "The password is purple walrus seventeen.", "complete"),
        ("purple walrus seventeen", "purple walrus", "incomplete"),
        ("purple walrus seventeen", "green door", "hallucinated"),
        ("the Amber Heron", "the Silver Swan", "hallucinated"),
        ("Saffron Thunder", "it was SAFFRON thunder!", "complete"),
    ]
    for answer, output, want in cases:
        assert classify_answer(answer, output) == want  # the reference agrees with the cases
        got = fn(answer, output)
        expect(got == want, "classify", f"{answer!r} vs {output!r}: got {got!r}, expected {want!r}",
               "ignore case, punctuation and function words like 'the'")
    passed("classify")


@checker
def check_head_dla(fn) -> None:
    """``fn(z, w_o, scale, direction) -> [n_heads]``: each head's direct logit attribution
    (:func:`rhlens.score.logit.head_dla` is the reference)."""
    import torch

    from ...score.logit import head_dla

    g = torch.Generator().manual_seed(5)
    for m, n_heads, d_head, d_model in [(1, 1, 2, 2), (3, 4, 5, 6), (2, 9, 8, 16)]:
        z = torch.randn(m, n_heads, d_head, generator=g, dtype=torch.float64)
        w_o = torch.randn(n_heads, d_head, d_model, generator=g, dtype=torch.float64)
        scale = torch.rand(m, generator=g, dtype=torch.float64) * 3 + 0.5
        direction = torch.randn(m, d_model, generator=g, dtype=torch.float64)
        want = head_dla(z, w_o, scale, direction)
        got = torch.as_tensor(fn(z, w_o, scale, direction), dtype=torch.float64)
        expect(tuple(got.shape) == (n_heads,), "head DLA",
               f"got shape {tuple(got.shape)}, expected ({n_heads},): one number per head",
               "average over the answer positions, keep the head axis")
        no_scale = head_dla(z, w_o, torch.ones_like(scale), direction)
        expect(not torch.allclose(got, no_scale, atol=1e-9) or torch.allclose(want, no_scale),
               "head DLA", "the values ignore the final norm's scale",
               "the final norm divides the residual stream by its scale at each position; "
               "divide each head's write by it before projecting on the logit direction")
        expect(torch.allclose(got, want, atol=1e-8), "head DLA",
               f"got {got.tolist()[:3]}..., expected {want.tolist()[:3]}...",
               "write = z @ W_O per head; divide by the scale at each position; dot with that "
               "position's direction; then mean over positions")
    passed("head DLA")
