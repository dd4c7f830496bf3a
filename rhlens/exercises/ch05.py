"""Checks for chapter 5 (activation patching and failure modes)."""

from __future__ import annotations

from ..answers import classify_answer
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
