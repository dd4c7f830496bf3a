"""What every exercise checker shares: one message format, one error type.

A checker calls the learner's function on fixed cases and compares it with the package's own
function for the same concept (the reference), so a checker and the library can never
disagree. It prints ``✓ <exercise> passed`` or raises :class:`ExerciseFailed`::

    ✗ <exercise>: <what went wrong>
      hint: <what to look at>
"""

from __future__ import annotations


class ExerciseFailed(AssertionError):
    """An exercise's answer is wrong; the message says where and gives a hint."""


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


def passed(exercise: str, note: str = "") -> None:
    """Print the one success line."""
    print(f"✓ {exercise} passed" + (f": {note}" if note else ""))
