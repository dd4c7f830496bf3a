"""Checks for chapter 7 (downstream tasks).

Drawing random control heads is chapter 4's :func:`rhlens.exercises.ch04.check_random_heads`."""

from __future__ import annotations

from ..answers import token_f1
from ..downstream import eval_chain
from .check import expect, passed


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


def check_eval_chain(fn) -> None:
    """``fn(lines) -> dict[var, int]`` executes ``"b = a + 3"`` style assignments."""
    lines = ["a = 4", "k = 9", "b = a + 3", "c = b - 5", "z = k + c"]
    want = eval_chain(lines)
    got = dict(fn(lines))
    expect(got == want, "eval chain", f"expected {want}, got {got}",
           "run the lines in order; a name on the right is a variable defined earlier")
    passed("eval chain")
