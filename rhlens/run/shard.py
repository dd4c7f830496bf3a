"""Splitting one grid across processes: which prompts this process runs.

A long detection, NIAH or patching run splits into ``count`` shards; shard ``index`` takes every
``count``-th prompt of :meth:`rhlens.niah.grid.Grid.samples` starting at ``index`` (round robin, so
every shard gets each length about equally often and finishes in about the same time). Each
shard writes its own resume log; ``rhlens merge`` joins the shards into the file a single
process would have written.

The shard comes from ``--shard i/n`` or, under a launcher that starts one process per GPU
(``accelerate launch``, ``torchrun``), from its ``RANK`` and ``WORLD_SIZE`` variables.

Example::

    >>> Shard.parse("2/2")
    Traceback (most recent call last):
    ...
    rhlens.errors.UsageError: shard 2/2 does not exist: write i/n with 0 <= i < n, e.g. 0/2 and 1/2 for two shards.
    >>> shard = Shard.parse("1/3")
    >>> shard.select(list("abcdefg"))
    ['b', 'e']
    >>> Shard.resolve(None, env={"RANK": "2", "WORLD_SIZE": "4"})
    Shard(index=2, count=4)
    >>> Shard.resolve(None, env={}) is None
    True
    >>> shard.output("runs/scores.json")
    'runs/scores.shard1of3.json'

A shard's sample log (``<shard output>.samples.jsonl``) keeps the run's settings, exactly as a
single process's log, and beside them which part of the grid the shard holds
(:meth:`Shard.part`); :func:`~rhlens.run.merge.merge_shards` checks the shards against each other (same run,
same grid, every shard once, each finished) and writes the score file (or CSV) and the
sample log that one process running the whole grid writes, byte for byte
(:mod:`rhlens.run.merge`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from ..errors import UsageError

T = TypeVar("T")

#: The runs that split into shards: a detection (score file), a NIAH run or a patching run (CSV).
ShardKind = Literal["score", "niah", "patch"]


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
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` (0-based index ``i`` of ``n`` shards)."""
        left, sep, right = str(text).partition("/")
        try:
            if not sep:
                raise ValueError
            index, count = int(left), int(right)
        except ValueError:
            raise UsageError(f"shard {text!r} is not i/n: write e.g. 0/2 for the first of two "
                             "shards.", arg="shard") from None
        return cls(index, count)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Shard | None:
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
    def resolve(cls, text: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
        """``--shard`` when given, else the launcher's shard, else ``None`` (one process)."""
        if text:
            return cls.parse(text)
        return cls.from_env(env)

    def select(self, items: Sequence[T]) -> list[T]:
        """The items of this shard: every ``count``-th one, starting at ``index``."""
        return list(items[self.index::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """File-name part of this shard's outputs, e.g. ``.shard0of2``."""
        return f".shard{self.index}of{self.count}"

    def output(self, path: str | Path) -> str:
        """This shard's file for a run's output ``path``: the suffix before the extension, so
        shards never share a file (nor their sample logs).

        >>> Shard(0, 2).output("niah.csv"), Shard(1, 2).output("out/run")
        ('niah.shard0of2.csv', 'out/run.shard1of2')
        """
        p = Path(path)
        name = f"{p.stem}{self.suffix}{p.suffix}" if p.suffix else f"{p.name}{self.suffix}"
        return str(p.with_name(name))

    def part(self, keys: Sequence[str], kind: ShardKind) -> dict:
        """What a shard's sample log records beside the run's settings: the kind of run, this
        shard, the grid's size and fingerprint (of every sample key in order), and the keys
        of this shard's samples (:meth:`select` of ``keys``)."""
        return {"kind": kind, "index": self.index, "count": self.count,
                "n_samples": len(keys), "grid": keys_digest(keys),
                "keys": self.select(list(keys))}



def launcher_device(env: Mapping[str, str] | None = None) -> str | None:
    """``cuda:LOCAL_RANK`` when a launcher started this process (``LOCAL_RANK`` is set) and a
    GPU is visible, so each process of ``accelerate launch`` / ``torchrun`` takes its own GPU;
    else ``None`` (the usual default device).

    >>> launcher_device({})
    """
    env = os.environ if env is None else env
    if "LOCAL_RANK" not in env:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    except ValueError:
        raise UsageError(f"LOCAL_RANK must be an integer (as accelerate launch and torchrun "
                         f"set it), got {env['LOCAL_RANK']!r}.", arg="shard") from None


def keys_digest(keys: Sequence[str]) -> str:
    """A short digest of a grid's sample keys in order: how a shard's log names its grid."""
    return hashlib.sha256("\n".join(keys).encode("utf-8", "surrogatepass")).hexdigest()[:16]
