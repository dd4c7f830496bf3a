"""Detection that knows when to stop: add grid points until the top-K set is stable.

How many samples does a detection run need? The paper averages over a few hundred; a CPU run
takes a dozen. :class:`UntilStable` answers it for the run at hand: the grid's prompts are
taken in a fixed order, a permutation of :meth:`rhlens.niah.grid.Grid.samples` drawn with
``seed``, and after each sample that passes the ROUGE gate the top-``k`` set's bootstrap
stability (:mod:`rhlens.score.uncertainty`: the mean share of ``n_resamples`` resamples of the
passed samples whose top-``k`` holds each of the map's top-``k`` heads) is measured. The run
stops when it reaches ``level`` with at least ``min_passed`` passed samples, after
``max_samples`` prompts, or when the grid runs out, and says which.

The order depends only on the grid and the seed, and the stability check only on the samples
taken and the seed, so a rerun of the same command resumes from the sample log and stops
exactly where it stopped (or goes on, with a higher ``level`` or ``max_samples``). The score
file then holds the samples taken, in that order.

``rhlens score --until-stable K [--stability 0.9] [--max-samples N] [--seed 0]``::

    >>> rule = UntilStable(k=10, level=0.9, max_samples=5)
    >>> rule.order(list("abcdefgh"))
    ['e', 'a', 'h', 'd', 'c']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import torch

from ..errors import UsageError
from .bootstrap import N_BOOT
from .uncertainty import head_intervals

T = TypeVar("T")

#: The default stability level: on average 9 of a resample's top 10 are the map's top 10.
LEVEL = 0.9
#: Passed samples needed before stability counts: with one or two samples every resample looks
#: alike, so the bootstrap would call any map stable.
MIN_PASSED = 5


@dataclass(frozen=True)
class UntilStable:
    """Stop a detection run once its top-``k`` set is stable (see the module docstring).

    Attributes:
        k: size of the top set (``--until-stable K``).
        level: stability to reach, in ``(0, 1]`` (``--stability``, default 0.9).
        max_samples: prompts to take at most (``--max-samples``; ``None``: the whole grid).
        seed: seed of the order of the grid points and of the resamples (``--seed``).
        n_resamples: bootstrap resamples per check (default 1000).
        min_passed: passed samples needed before the stability counts (default 5).
    """

    k: int
    level: float = LEVEL
    max_samples: int | None = None
    seed: int = 0
    n_resamples: int = N_BOOT
    min_passed: int = MIN_PASSED

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise UsageError(f"until_stable must be a head count of at least 1, got {self.k!r}.",
                             arg="until_stable")
        if not 0 < self.level <= 1:
            raise UsageError(f"stability must lie in (0, 1], got {self.level}.", arg="stability")
        if self.max_samples is not None and self.max_samples < 1:
            raise UsageError(f"max_samples must be at least 1, got {self.max_samples}.",
                             arg="max_samples")
        if self.n_resamples < 1 or self.min_passed < 1:
            raise UsageError("n_resamples and min_passed must be at least 1.")

    def order(self, samples: Sequence[T]) -> list[T]:
        """The prompts to take, in the seeded order, at most ``max_samples`` of them."""
        g = torch.Generator().manual_seed(int(self.seed))
        perm = torch.randperm(len(samples), generator=g).tolist()
        return [samples[i] for i in perm][: self.max_samples]

    def stability(self, passed: Sequence[dict]) -> float | None:
        """The top-``k`` stability over the ``passed`` records' maps (``None`` before
        ``min_passed`` of them)."""
        if len(passed) < self.min_passed:
            return None
        per_sample = torch.tensor([r["scores"] for r in passed], dtype=torch.float64)
        return head_intervals(per_sample, self.k, n_resamples=self.n_resamples,
                              seed=self.seed).stability

    def outcome(self, records: Sequence[dict], n_grid: int) -> dict:
        """Where a run that took ``records`` (in order) of a grid of ``n_grid`` prompts stands:
        the rule, the ``stability`` reached (``None`` before ``min_passed`` passed samples),
        ``samples`` taken and ``passed``, and ``reason``: ``"stable"`` (the run stops),
        ``"max-samples"`` (the cap was hit first), ``"grid exhausted"`` (every prompt taken)
        or ``"running"``."""
        passed = [r for r in records if r["passed"]]
        value = self.stability(passed)
        capped = self.max_samples is not None and self.max_samples < n_grid
        if value is not None and value >= self.level:
            reason = "stable"
        elif len(records) < min(n_grid, self.max_samples or n_grid):
            reason = "running"
        else:
            reason = "max-samples" if capped else "grid exhausted"
        return {**asdict(self), "stability": value, "samples": len(records),
                "passed": len(passed), "reason": reason}


def describe(outcome: dict) -> str:
    """One line on where an ``--until-stable`` run stopped (:meth:`UntilStable.outcome`).

    >>> line = describe({"k": 10, "level": 0.9, "stability": 0.93, "samples": 24,
    ...                  "passed": 19, "reason": "stable", "seed": 0, "n_resamples": 1000})
    >>> line[:65]
    'until stable: the top-10 set reached stability 0.930 (level 0.9) '
    >>> line[65:]
    'after 24 samples (19 passed; order seed 0, 1000 resamples)'
    """
    value = outcome["stability"]
    measured = "not measured" if value is None else f"{value:.3f}"
    head = {"stable": f"the top-{outcome['k']} set reached stability {measured}",
            "max-samples": f"--max-samples reached with top-{outcome['k']} stability {measured}",
            "grid exhausted": f"the grid ran out with top-{outcome['k']} stability {measured}",
            "running": f"top-{outcome['k']} stability so far {measured}"}[outcome["reason"]]
    return (f"until stable: {head} (level {outcome['level']}) after {outcome['samples']} "
            f"samples ({outcome['passed']} passed; order seed {outcome['seed']}, "
            f"{outcome['n_resamples']} resamples)")
