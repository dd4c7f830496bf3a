"""What every exercise checker shares: one message format, one error type.

A checker calls the learner's function on fixed cases and compares it with the package's own
function for the same concept (the reference), so a checker and the library can never
disagree. It prints ``✓ <exercise> passed`` or raises :class:`ExerciseFailed`::

    ✗ <exercise>: <what went wrong>
      hint: <what to look at>
"""

from __future__ import annotations

import functools

import torch

#: The hint of every exercise not attempted yet (its stub still raises NotImplementedError).
NOT_ATTEMPTED_HINT = ("replace the `raise NotImplementedError(...)` line of the exercise cell "
                      "with your code, run that cell, then this one")


class ExerciseFailed(AssertionError):
    """An exercise's answer is wrong; the message says where and gives a hint."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback: the message and its hint, nothing else."""
        return str(self).splitlines()


def fail(exercise: str, message: str, hint: str | None = None) -> None:
    """Raise :class:`ExerciseFailed` in the one format every checker uses."""
    text = f"✗ {exercise}: {message}"
    if hint:
        text += f"\n  hint: {hint}"
    raise ExerciseFailed(text)


def expect(ok: bool, exercise: str, message: str, hint: str | None = None) -> None:
    """:func:`fail` unless ``ok``."""
    if not ok:
        fail(exercise, message, hint)


def checker(check):
    """Decorate a ``check_*`` function so that an unsolved stub fails like a wrong answer.

    A stub raises ``NotImplementedError("Exercise C.N: Title")``; the checker turns it into
    one :class:`ExerciseFailed` line, ``✗ <exercise>: not attempted yet (Exercise C.N: Title)``
    with :data:`NOT_ATTEMPTED_HINT`, instead of a traceback through the checker.
    """
    name = check.__name__.removeprefix("check_").replace("_", " ")

    @functools.wraps(check)
    def run(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except NotImplementedError as err:  # failed outside the handler: no chained traceback
            missing = str(err) or "the stub raises NotImplementedError"
        fail(name, f"not attempted yet ({missing})", NOT_ATTEMPTED_HINT)

    return run


def passed(exercise: str, note: str = "") -> None:
    """Print the one success line."""
    print(f"✓ {exercise} passed" + (f": {note}" if note else ""))


@functools.cache
def tiny(arch: str = "llama", **options):
    """A tiny random-weight model (:func:`rhlens.models.tiny.tiny_model`), built once per checker
    session: checkers that need a model run the learner's code on it in a second."""
    from ...models.tiny import tiny_model

    return tiny_model(arch, **options)


#: A small prompt and needle span (positions 1..4) that the scoring checkers of chapters 2 and 6
#: build their cases on.
COPY_PROMPT = torch.tensor([50, 10, 11, 12, 13, 60, 11])
COPY_SPAN = (1, 5)
