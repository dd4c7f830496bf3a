"""Splitting one grid across processes: which prompts this process runs.

A long detection or NIAH sweep splits into ``count`` shards; shard ``index`` takes every
``count``-th prompt of :meth:`rhlens.grid.Grid.samples` starting at ``index`` (round robin, so
every shard gets each length about equally often and finishes in about the same time). Each
shard writes its own resume log; ``rhlens merge`` joins the shards into the file a single
process would have written.

The shard comes from ``--shard i/n`` or, under a launcher that starts one process per GPU
(``accelerate launch``, ``torchrun``), from its ``RANK`` and ``WORLD_SIZE`` variables.

Example::

    >>> shard = Shard.parse("1/3")
    >>> shard.select(list("abcdefg"))
    ['b', 'e']
    >>> Shard.resolve(None, env={"RANK": "2", "WORLD_SIZE": "4"})
    Shard(index=2, count=4)
    >>> Shard.resolve(None, env={}) is None
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

from .errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based), e.g. ``Shard(0, 2)`` and ``Shard(1, 2)``."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(
                f"shard {self.index}/{self.count} does not exist: write i/n with 0 <= i < n, "
                "e.g. 0/2 and 1/2 for two shards.", arg="shard")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"i/n"`` (0-based index ``i`` of ``n`` shards)."""
        left, sep, right = str(text).partition("/")
        try:
            if not sep:
                raise ValueError
            return cls(int(left), int(right))
        except ValueError:
            raise UsageError(f"shard {text!r} is not i/n: write e.g. 0/2 for the first of two "
                             "shards.", arg="shard") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Shard | None":
        """The launcher's shard: ``RANK`` of ``WORLD_SIZE`` when ``WORLD_SIZE`` > 1, else
        ``None`` (``accelerate launch`` and ``torchrun`` both set them)."""
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
        except ValueError:
            raise UsageError("RANK and WORLD_SIZE must be integers (as accelerate launch and "
                             "torchrun set them).", arg="shard") from None
        return cls(rank, world) if world > 1 else None

    @classmethod
    def resolve(cls, text: str | None, env: Mapping[str, str] | None = None) -> "Shard | None":
        """``--shard`` when given, else the launcher's shard, else ``None`` (one process)."""
        if text:
            return cls.parse(text)
        return cls.from_env(env)

    @property
    def local_rank(self) -> int:
        """Index of the GPU this shard uses on its machine (``LOCAL_RANK`` under a launcher)."""
        return int(os.environ.get("LOCAL_RANK", self.index))

    def select(self, items: Sequence[T]) -> list[T]:
        """The items of this shard: every ``count``-th one, starting at ``index``."""
        return list(items[self.index::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """File-name part of this shard's outputs, e.g. ``.shard0of2``."""
        return f".shard{self.index}of{self.count}"
