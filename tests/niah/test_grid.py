"""A :class:`~rhlens.niah.grid.Grid` built from Python with the wrong kind of value is refused
in a ``UsageError`` (a ``ValueError``) that names the argument and what it takes, never in
Python's or torch's own words, and never quietly rounded into another grid."""

from __future__ import annotations

import pytest

from rhlens.errors import UsageError
from rhlens.niah.grid import Grid


@pytest.mark.parametrize("lengths, message", [
    (160, r"lengths must be a list of prompt lengths in tokens, e.g. \[160\]; got 160"),
    ("160", "lengths must be a list of prompt lengths in tokens"),
    ([160.7], "lengths must be a whole number, got 160.7"),
    ([160, "200"], "'200' is not a number"),
    ([True], "True is not a number"),
    ([0], "lengths must be at least 1"),
])
def test_lengths_of_the_wrong_kind(hay, lengths, message):
    with pytest.raises(UsageError, match=message) as err:
        Grid(lengths, [0.5], 1, hay, 8)
    assert err.value.arg == "lengths"


@pytest.mark.parametrize("depths, message", [
    ("0.5", r"depths must be a list of needle depths in \[0, 1\], e.g. \[0.5\]; got '0.5'"),
    (0.5, r"e.g. \[0.5\]; got 0.5"),
    ([None], "None is not a number"),
    ([float("nan")], "depths must lie in"),
])
def test_depths_of_the_wrong_kind(hay, depths, message):
    with pytest.raises(UsageError, match=message) as err:
        Grid([160], depths, 1, hay, 8)
    assert err.value.arg == "depths"


def test_whole_numbers_of_other_types_are_kept(hay):
    import numpy as np

    grid = Grid(range(160, 161), np.array([0.25, 0.5]), 1, hay, 8)
    assert grid.lengths == (160,) and grid.depths == (0.25, 0.5)
    assert Grid([160.0], [1], 1, hay, 8).lengths == (160,)
    assert isinstance(Grid([np.int64(160)], [0], 1, hay, 8).lengths[0], int)
