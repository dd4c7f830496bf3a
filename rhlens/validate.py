"""Checks of plain values and paths, shared by the library's configs and the command line, so
that a bad input fails in a second, before any model loads.

Each check raises :class:`rhlens.errors.UsageError` naming the argument (``needles must be
at least 1``); the command line turns the name into its flag (``--needles``). Whether a model
can be loaded is checked by :mod:`rhlens.models.available`; what only a command knows (its
output files against each other) by :mod:`rhlens.cli.checks`.

>>> count(3, "needles", minimum=1)
3
>>> count(-3, "mask_random")
Traceback (most recent call last):
...
rhlens.errors.UsageError: mask_random must be at least 0, got -3.
>>> int_list("0, 1,2", "seeds")
[0, 1, 2]
>>> check_grid([500, 1000], [0.5], max_new_tokens=48, n_ctx=1024)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
rhlens.errors.UsageError: lengths: a 1000-token prompt plus 48 new tokens exceeds ...; use lengths of at most 976.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .errors import UsageError
from .files import kind_of

# --------------------------------------------------------------------------- plain values


def count(value: int, arg: str, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{arg} must be a whole number, got {value!r}.", arg=arg)
    value = int(value)
    if value < minimum:
        raise UsageError(f"{arg} must be at least {minimum}, got {value}.", arg=arg)
    if maximum is not None and value > maximum:
        raise UsageError(f"{arg} must be at most {maximum}, got {value}.", arg=arg)
    return value


def seed(value: int, arg: str = "seed") -> int:
    """A seed torch takes: a whole number in ``[-2**63, 2**64 - 1]`` (a larger one would fail
    only after the model loaded, in torch's words)."""
    return count(value, arg, minimum=-(2**63), maximum=2**64 - 1)


def seed_list(text: str, arg: str = "seeds") -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``, each a :func:`seed`."""
    return [seed(s, arg) for s in int_list(text, arg)]


#: A sweep's batch size: a number of prompts, or ``"auto"``
#: (:func:`rhlens.run.batch.auto_batch_size` chooses per length from the device).
BatchSize = int | Literal["auto"]


def batch_size(value, arg: str = "batch_size") -> BatchSize:
    """``value`` if it is a batch size (a whole number of at least 1, or ``"auto"``).

    >>> batch_size("auto"), batch_size(4)
    ('auto', 4)
    >>> batch_size(0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rhlens.errors.UsageError: batch_size must be a whole number of at least 1 or 'auto', got 0; ...
    """
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UsageError(f"{arg} must be a whole number of at least 1 or 'auto', got {value!r}; "
                         "1 decodes one prompt at a time.", arg=arg)
    return int(value)


def finite(value: float, arg: str) -> float:
    """``value`` when it is a finite number."""
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UsageError(f"{arg} must be a finite number, got {value!r}.", arg=arg)
    return float(value)


def number_list(value, arg: str, what: str) -> list:
    """``value`` as a list, when it is a list-like of numbers (a range, a tuple, an array),
    not one number or a string: ``Grid(lengths=160)`` is told to write ``[160]``.

    >>> number_list((500, 1000), "lengths", "prompt lengths in tokens")
    [500, 1000]
    >>> number_list("0.5", "depths", "needle depths in [0, 1]")
    Traceback (most recent call last):
    ...
    rhlens.errors.UsageError: depths must be a list of needle depths in [0, 1], e.g. [0.5]; got '0.5'.
    """
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        example = value if isinstance(value, numbers.Real) else 0.5
        raise UsageError(f"{arg} must be a list of {what}, e.g. [{example}]; got {value!r}.",
                         arg=arg)
    items = list(value)
    for x in items:
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise UsageError(f"{arg} must be a list of {what}; {x!r} is not a number.", arg=arg)
    return items


def int_list(text: str, arg: str, minimum: int | None = None) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; each at least ``minimum`` when given."""
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{arg} must be a comma-separated list of whole numbers, got "
                         f"{text!r}.", arg=arg) from None
    if not values:
        raise UsageError(f"{arg} is an empty list.", arg=arg)
    if minimum is not None and min(values) < minimum:
        raise UsageError(f"{arg} must be at least {minimum}, got {min(values)}.", arg=arg)
    return values


def k_list(text: str, arg: str = "sweep_k") -> str | list[int]:
    """``"auto"`` or a list of head counts ``>= 0``."""
    if str(text).strip() == "auto":
        return "auto"
    try:
        return int_list(text, arg, minimum=0)
    except UsageError:
        raise UsageError(f"{arg} must be 'auto' or a comma-separated list of head counts "
                         f">= 0, got {text!r}.", arg=arg) from None


def check_grid(lengths: Sequence[int], depths: Sequence[float], max_new_tokens: int,
               n_ctx: int | None = None) -> None:
    """Lengths ``>= 1``, depths in ``[0, 1]``, ``max_new_tokens >= 1``, and the longest prompt
    plus the new tokens within ``n_ctx`` (when known)."""
    if not list(lengths):
        raise UsageError("lengths is an empty list.", arg="lengths")
    if not list(depths):
        raise UsageError("depths is an empty list.", arg="depths")
    for n in lengths:
        count(n, "lengths", minimum=1)
    for d in depths:
        if not (isinstance(d, numbers.Real) and math.isfinite(d) and 0 <= d <= 1):
            raise UsageError(f"depths must lie in [0, 1], got {d!r}.", arg="depths")
    count(max_new_tokens, "max_new_tokens", minimum=1)
    longest = max(lengths)
    if n_ctx and max_new_tokens >= n_ctx:  # no prompt length would do: the fault is here
        raise UsageError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the "
                         f"model's context of {n_ctx} tokens; decode far fewer tokens (the "
                         "answer takes a few dozen).", arg="max_new_tokens")
    if n_ctx and longest + max_new_tokens > n_ctx:
        raise UsageError(
            f"lengths: a {longest}-token prompt plus {max_new_tokens} new tokens exceeds the "
            f"model's context of {n_ctx} tokens; use lengths of at most "
            f"{max(n_ctx - max_new_tokens, 0)}.", arg="lengths")


# --------------------------------------------------------------------------- paths


def output_file(path: str | Path, arg: str, sidecars: Sequence[str] = ()) -> Path:
    """Check that ``path`` can be written as a file (its missing folders created): not a
    folder, not inside a file, in a writable folder; ``sidecars`` are suffixes of files
    written beside it (e.g. ``".samples.jsonl"``), which must not be folders either."""
    if not str(path).strip():
        raise UsageError(f"{arg} is an empty path.", arg=arg)
    if str(path).endswith(("/", os.sep)):  # Path() drops the slash; the run would not
        raise UsageError(f"{arg} {path} names a folder (it ends in /); name a file in it.",
                         arg=arg)
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{arg} {path} is a folder; name a file in it.", arg=arg)
    if p.exists() and not p.is_file():
        raise UsageError(f"{arg} {path} exists and is not a regular file.", arg=arg)
    for suffix in sidecars:
        side = Path(f"{p}{suffix}")
        if side.exists() and not side.is_file():  # a folder, or a FIFO that would block a resume
            raise UsageError(f"{arg} {path}: {side}, written beside it, is "
                             f"{kind_of(side.stat().st_mode)}; remove it or choose another "
                             f"--{arg.replace('_', '-')}.", arg=arg)
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{arg} {path}: {folder} is a file, not a folder.", arg=arg)
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{arg} {path}: permission denied (cannot write in {folder}).",
                         arg=arg)
    return p


def same_file(a: str | Path | None, b: str | Path | None) -> bool:
    """Whether two paths name the same file (neither need exist): the same name, one reached
    through ``..`` or a symlink (also one that points to a file not yet written), or two hard
    links of one file.

    >>> same_file("a/../b.json", "b.json")
    True
    """
    if not a or not b:
        return False
    try:
        return os.path.samefile(a, b)  # both exist: compares the files themselves (hard links)
    except OSError:
        return Path(os.path.realpath(a)) == Path(os.path.realpath(b))


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` (through symlinks) lies inside ``folder``."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


