"""Splitting one grid across processes: which prompts this process runs.

A long detection or NIAH sweep splits into ``count`` shards; shard ``index`` takes every
``count``-th prompt of :meth:`rhlens.grid.Grid.samples` starting at ``index`` (round robin, so
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
(:meth:`Shard.part`); :func:`merge_shards` checks the shards against each other (same run,
same grid, every shard once, each finished) and writes the score file (or NIAH CSV) and the
sample log that one process running the whole grid writes, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence, TypeVar

from .errors import UsageError

T = TypeVar("T")

#: The runs that split into shards: a detection (score file) or a NIAH run (CSV).
ShardKind = Literal["score", "niah"]


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
            index, count = int(left), int(right)
        except ValueError:
            raise UsageError(f"shard {text!r} is not i/n: write e.g. 0/2 for the first of two "
                             "shards.", arg="shard") from None
        return cls(index, count)

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
                "n_samples": len(keys), "grid": _keys_digest(keys),
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


def _keys_digest(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode("utf-8", "surrogatepass")).hexdigest()[:16]


# --------------------------------------------------------------------------- merging

_LOG = ".samples.jsonl"


def _log_path(path: str | Path) -> tuple[str, str]:
    """``(output, its sample log)`` of a shard file given as either."""
    text = str(path)
    if text.endswith(_LOG):
        return text[: -len(_LOG)], text
    return text, text + _LOG


def merge_shards(paths: Sequence[str | Path], out: str | Path, *, force: bool = False) -> dict:
    """Join the shards of one run into the files a single process writes for it.

    Args:
        paths: each shard's output (``scores.shard0of2.json``...) or its sample log; every
            shard of the split once, each finished.
        out: the merged score file (or NIAH CSV); its sample log ``<out>.samples.jsonl`` is
            written too, so a later unsharded run with the same settings resumes from it, and
            a score file's map card ``<out>.card.json`` (:func:`rhlens.card.merged_card`).
        force: replace ``out`` (and its log) when they exist.

    Returns:
        ``{"kind", "n_samples", "n_shards", "out", "log"}`` (and ``"n_passed"`` for a score run).

    Raises:
        UsageError: shards of different runs (settings, model identity) or grids, a shard
            given twice or missing, an unfinished shard, a file that is no shard, or an
            existing ``out`` without ``force``. Nothing is written then.
        rhlens.detect.NoPassingSampleError: a score run of which no sample passed the gate.
    """
    from .samplelog import read_log, write_log
    from .validate import output_file, same_file

    if not paths:
        raise UsageError("name the shards' files to merge (e.g. scores.shard*.json).")
    shards = []
    for path in paths:
        output, log = _log_path(path)
        if not Path(log).is_file():
            raise UsageError(f"{path}: its sample log {log} does not exist; pass the files a "
                             "run with --shard i/n wrote (e.g. scores.shard0of2.json).")
        header, records = read_log(log)
        part = header.get("shard")
        if not isinstance(part, dict) or not isinstance(part.get("keys"), list):
            raise UsageError(f"{path} is not a shard's output (its sample log names no "
                             "shard); merge the files of a run with --shard i/n.")
        shards.append((str(path), output, log, header["settings"], part, records))
    first_path, _, _, settings, first, _ = shards[0]
    seen: dict[int, str] = {}
    for path, _, _, theirs, part, _ in shards:
        where = f"{path} (shard {part.get('index')}/{part.get('count')})"
        if part.get("kind") != first.get("kind"):
            raise UsageError(f"{where} is a {part.get('kind')} run but {first_path} a "
                             f"{first.get('kind')} run: shards of different runs.")
        if theirs != settings:
            diffs = "; ".join(f"{k} {settings.get(k)!r} in {first_path}, {theirs.get(k)!r} here"
                              for k in sorted(set(settings) | set(theirs))
                              if settings.get(k) != theirs.get(k))
            raise UsageError(f"{where} comes from another run than {first_path} ({diffs}).")
        if (part.get("count"), part.get("grid"), part.get("n_samples")) != (
                first.get("count"), first.get("grid"), first.get("n_samples")):
            raise UsageError(f"{where} splits another grid, or the same one into other shards, "
                             f"than {first_path} (shard {first.get('index')}/"
                             f"{first.get('count')}): shards of different runs.")
        if part["index"] in seen:
            raise UsageError(f"{where} is given twice (also as {seen[part['index']]}); pass "
                             "each shard once.")
        seen[part["index"]] = path
    count, n_samples = first["count"], first["n_samples"]
    missing = [i for i in range(count) if i not in seen]
    if missing:
        names = ", ".join(f"{i}/{count}" for i in missing)
        raise UsageError(f"shard {names} of {count} missing: pass every shard's file (each "
                         f"ran with --shard i/{count}).")
    order: list[str | None] = [None] * n_samples
    by_key: dict[str, dict] = {}
    for path, _, _, _, part, records in shards:
        keys, index = part["keys"], part["index"]
        if len(keys) != len(range(index, n_samples, count)):
            raise UsageError(f"{path}: its log lists {len(keys)} samples, not those of shard "
                             f"{index}/{count} of a {n_samples}-sample grid; was it edited?")
        unfinished = [k for k in keys if k not in records]
        if unfinished:
            raise UsageError(f"{path} (shard {index}/{count}) has finished "
                             f"{len(keys) - len(unfinished)} of its {len(keys)} samples: rerun "
                             "its command to finish it, then merge.")
        order[index::count] = keys
        by_key.update((k, records[k]) for k in keys)
    if _keys_digest(order) != first["grid"]:
        raise UsageError("the shards' samples do not make up the grid they name; were their "
                         "logs edited? Rerun the shards.")
    out_log = f"{out}{_LOG}"
    for path, output, log, *_ in shards:
        if same_file(out, output) or same_file(out, log) or same_file(out_log, log):
            raise UsageError(f"out {out} would overwrite the shard {path}; pass another --out.",
                             arg="out")
    output_file(out, "out", sidecars=(_LOG,))
    if not force:
        there = [p for p in (out, out_log) if Path(p).exists()]
        if there:
            raise UsageError(f"out {there[0]} exists; pass --force to replace it, or another "
                             "--out.", arg="out")
    records = [by_key[k] for k in order]
    summary = {"kind": first["kind"], "n_samples": n_samples, "n_shards": count,
               "out": str(out), "log": out_log}
    if first["kind"] == "score":
        from .detect import NoPassingSampleError, _write_scores

        passed = [r for r in records if r["passed"]]
        if not passed:
            raise NoPassingSampleError(
                f"None of the {n_samples} samples of the shards passed the ROUGE-1 recall gate "
                f"(> {settings.get('rouge_gate')}), so no head can be scored; see "
                "`rhlens score --help` for what to change.")
        write_log(out_log, settings, records)
        grid = passed[0]["scores"]
        _write_scores(out, passed, len(grid), len(grid[0]))
        from .card import merged_card, write_card

        by_index = sorted(shards, key=lambda s: s[4]["index"])
        write_card(out, merged_card([s[1] for s in by_index], settings, records), records)
        summary["n_passed"] = len(passed)
    else:
        from .niah_grid import _frame
        from .results import atomic_write_text

        write_log(out_log, settings, records)
        atomic_write_text(out, _frame(records).to_csv(index=False))
    return summary
