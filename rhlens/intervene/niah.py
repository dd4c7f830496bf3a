"""Needle-in-a-haystack grids with heads masked, and the sweep over the number of masked heads.

A NIAH run is configured by a :class:`NiahConfig` (a :class:`~rhlens.niah.grid.Grid` and a
:class:`~rhlens.intervene.mask.Mask`, empty for the unmasked model), validated when it is made,
and run by :class:`NiahSweep` (:mod:`rhlens.run.sweep`): every prompt decoded with the mask, the
answer scored as the paper does (ROUGE-1 recall x 100 of the needle's answer span), the rows
written to a CSV (rewritten atomically after every sample) and to a resumable sample log.
:func:`run_niah` does both; :func:`rhlens.viz.runs.niah_heatmap` draws the classic depth x length
figure.

:func:`k_sweep` masks the top-K heads and K random *non-retrieval* heads (several seeds) on the
same prompts, for each K; :func:`k_curve` summarises it (random: mean and spread over seeds)
and :func:`rhlens.viz.runs.plot_k_curve` draws it.

Masking runs should use needles that were not used to compute the scores
(:func:`rhlens.niah.grid.masking_needles`).

Example::

    >>> grid = Grid([600], [0.2, 0.5, 0.8], needles=held_out)                       # doctest: +SKIP
    >>> df = run_niah(model, grid, Mask.top(scores, 13))                              # doctest: +SKIP
    >>> df[["needle", "length", "depth", "score", "answer"]]                         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..niah.answers import niah_score
from ..niah.grid import Grid
from ..niah.prompts import Sample
from ..run.batch import greedy_decode_batch
from ..run.decode import greedy_decode
from ..run.names import k_sweep_part
from ..run.outputs import NIAH_COLUMNS, niah_frame, write_niah
from ..run.results import atomic_write_text
from ..run.shard import Shard
from ..run.sweep import Sweep
from ..score.heads import head_names
from ..validate import BatchSize
from ..validate import batch_size as check_batch_size
from .mask import Mask

COLUMNS = NIAH_COLUMNS

#: Fields every logged NIAH sample has (a record lacking one is recomputed).
ROW_FIELDS = ("key", "needle", "length", "depth", "score", "answer", "expected")


@dataclass(frozen=True)
class NiahConfig:
    """What a NIAH run measures: the prompts, the heads masked and how, and how answers score.

    Attributes:
        grid: needles x lengths x depths, haystack and token budget.
        mask: the heads to mask and how (default: none; the paper masks decode steps only).
            Its mean outputs count only in ``"mean"`` mode (they are dropped otherwise).
        rouge_stemmer: score answers with stemmed ROUGE-1, as the public code (default).
        batch_size: decode up to this many prompts of one length at once
            (:func:`rhlens.run.batch.greedy_decode_batch`, with the mask; 1: one at a time);
            ``"auto"`` (default) chooses per length from the device
            (:func:`rhlens.run.batch.auto_batch_size`). Not part of the run's identity: the
            rows and the log are the same under every batch size, and a run resumes under any.
    """

    grid: Grid
    mask: Mask = Mask()
    rouge_stemmer: bool = True
    batch_size: BatchSize = field(default="auto", metadata={"identity": False})

    def __post_init__(self):
        if not isinstance(self.grid, Grid):
            raise UsageError(f"grid must be a Grid, got {type(self.grid).__name__}.", arg="grid")
        if not isinstance(self.mask, Mask):
            raise UsageError(f"mask must be a Mask, got {type(self.mask).__name__}.", arg="mask")
        if self.mask.mask_mode != "mean" and self.mask.means is not None:
            object.__setattr__(self, "mask", dataclasses.replace(self.mask, means=None))
        object.__setattr__(self, "rouge_stemmer", bool(self.rouge_stemmer))
        check_batch_size(self.batch_size)


class NiahSweep(Sweep):
    """A NIAH run as a resumable sweep; ``extra`` columns (a K sweep's ``k``, ``kind``...) are
    added to every row of the output, not to the log."""

    kind = "niah"
    required = ROW_FIELDS
    config: NiahConfig

    def __init__(self, model, config: NiahConfig, *, extra: dict | None = None, **options):
        super().__init__(model, config, **options)
        self.extra = dict(extra or {})
        self.label = f"NIAH ({len(config.mask.heads)} masked)"
        self.batch_size = config.batch_size
        self.eager_prefill = config.mask.prefill

    def samples(self) -> list[Sample]:
        self.config.mask.hooks(self.model)  # check the heads (and the means) before any sample
        return super().samples()

    def measure(self, sample: Sample) -> dict:
        c = self.config
        trace = greedy_decode(self.model, sample.input_ids, c.grid.max_new_tokens, mask=c.mask)
        return self.record(sample, trace.text)

    def measure_batch(self, samples: Sequence[Sample]) -> list[dict]:
        c = self.config
        traces = greedy_decode_batch(self.model, [s.input_ids for s in samples],
                                     c.grid.max_new_tokens, mask=c.mask)
        return [self.record(s, t.text) for s, t in zip(samples, traces)]

    def record(self, sample: Sample, answer: str) -> dict:
        """The logged row of ``sample`` answered with ``answer``."""
        return {"key": sample.key, "needle": sample.needle.text, "length": sample.length,
                "depth": sample.depth,
                "score": niah_score(sample.needle.answer, answer, self.config.rouge_stemmer),
                "answer": answer, "expected": sample.needle.answer}

    def rows(self, records: Sequence[dict]) -> list[dict]:
        return [{**r, **self.extra} for r in records]

    def write(self, records: Sequence[dict], positions: Sequence[int]) -> None:
        assert self.out is not None
        write_niah(self.out, self.rows(records))


def _config(grid: Grid | NiahConfig, mask: Mask | None, options: dict[str, Any]) -> NiahConfig:
    if isinstance(grid, NiahConfig):
        if mask is not None or options:
            raise UsageError("pass the mask and options in the NiahConfig, not beside it.")
        return grid
    return NiahConfig(grid, Mask() if mask is None else mask, **options)


def run_niah(
    model,
    grid: Grid | NiahConfig,
    mask: Mask | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    extra: dict | None = None,
    shard: Shard | None = None,
    **options: Any,
) -> pd.DataFrame:
    """NIAH over a grid with a mask applied.

    Args:
        grid: a :class:`NiahConfig`, or a :class:`Grid`, the ``mask`` and the config's other
            fields as keywords (``rouge_stemmer``, ``batch_size``).
        out: CSV path; ``<out>.samples.jsonl`` lets a rerun resume.
        extra: constant columns added to every row (e.g. ``{"k": 5, "kind": "top"}``).
        shard: run only this shard's prompts (:meth:`rhlens.run.shard.Shard.select`); ``out`` is
            the shard's own CSV, whose log names the shard for :func:`rhlens.run.merge.merge_shards`.

    Returns:
        a DataFrame with a row per (needle, length, depth): ``needle``, ``length``,
        ``depth``, ``score`` (ROUGE-1 recall x 100), ``answer`` and the ``extra`` columns.
    """
    sweep = NiahSweep(model, _config(grid, mask, options), extra=extra, out=out, shard=shard,
                      progress=progress)
    return niah_frame(sweep.rows(sweep.run()))


def k_sweep(
    model,
    grid: Grid | NiahConfig,
    scores: torch.Tensor,
    ks: Sequence[int],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    threshold: float = 0.1,
    mask: Mask | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """NIAH with the top-K heads masked and with K random non-retrieval heads (each seed),
    for each K, on the same prompts.

    Args:
        grid: a :class:`NiahConfig` (its mask gives the mode, prefill and means every run uses;
            its heads are ignored), or a :class:`Grid`, ``mask`` and options as for
            :func:`run_niah`.
        scores: ``[n_layers, n_heads]`` map that ranks the heads.
        ks: the K grid (e.g. :func:`rhlens.intervene.mask.k_grid`).
        seeds: one random draw per seed, among heads scoring ``<= threshold``.

    Returns:
        every row of every run, with columns ``k``, ``kind`` (``"top"``/``"random"``),
        ``seed`` (-1 for top) and ``heads`` besides those of :func:`run_niah`. With ``out``,
        each run logs to ``<out>.k{K}.top.csv`` or ``<out>.k{K}.random{seed}.csv`` (each with
        its resumable ``.samples.jsonl``) and the whole table to ``out``. A K or seed given
        twice runs once.
    """
    config = _config(grid, mask, options)
    runs = []
    for k in dict.fromkeys(ks):
        runs.append((k, "top", -1, Mask.top(scores, k).heads))
        if k > 0:
            runs += [(k, "random", s, Mask.random(scores, k, s, threshold=threshold).heads)
                     for s in dict.fromkeys(seeds)]
    frames = []
    for k, kind, seed, heads in tqdm(runs, desc="K sweep", disable=not progress):
        part = None if out is None else k_sweep_part(out, k, kind, seed)
        run = dataclasses.replace(config, mask=config.mask.with_heads(heads))
        frames.append(run_niah(model, run, out=part, progress=False,
                               extra={"k": k, "kind": kind, "seed": seed,
                                      "heads": head_names(heads)}))
    df = pd.concat(frames, ignore_index=True)
    if out:
        atomic_write_text(out, df.to_csv(index=False))
    return df


def k_curve(df: pd.DataFrame) -> pd.DataFrame:
    """Per K: ``top`` (mean NIAH score), ``random`` (mean over seeds of each seed's mean),
    ``random_std`` (spread over seeds), ``random_min``/``random_max``.

    K = 0 (nothing masked) fills both columns.
    """
    per_run = df.groupby(["k", "kind", "seed"], as_index=False)["score"].mean()
    top = per_run[per_run.kind == "top"].set_index("k")["score"]
    rnd = per_run[per_run.kind == "random"].groupby("k")["score"]
    out = pd.DataFrame({"top": top})
    out["random"] = rnd.mean()
    out["random_std"] = rnd.std(ddof=0)
    out["random_min"] = rnd.min()
    out["random_max"] = rnd.max()
    if 0 in out.index:
        out.loc[0, ["random", "random_min", "random_max"]] = out.loc[0, "top"]
        out.loc[0, "random_std"] = 0.0
    out.index.name = "k"
    return out.reset_index()
