"""``rhlens patch`` as a library call: group patching, the per-head map and direct logit
attribution over many clean/counterfactual pairs, as one resumable sweep.

A run is configured by a :class:`PatchConfig` (the grid its pairs are drawn from, the score map
that ranks the heads, the group sizes and control draws, what to measure), validated when it is
made, and run by :class:`PatchSweep` (:mod:`rhlens.run.sweep`): each pair the model answers
gives the rows of :func:`pair_rows`, logged so that a rerun resumes, and written to a CSV of
:data:`COLUMNS` (:mod:`rhlens.run.outputs`), whose shards ``rhlens merge`` joins.
:mod:`rhlens.analyze.patching` summarises the CSV (bootstrap intervals over pairs).

Example::

    >>> config = PatchConfig(grid, scores, ks=[1, 2], pairs=8)            # doctest: +SKIP
    >>> df = patch_sweep(model, config, out="patch.csv")                  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..niah.grid import Grid
from ..niah.prompts import Sample
from ..run.outputs import PATCH_COLUMNS, patch_frame
from ..run.shard import Shard
from ..run.sweep import Sweep
from ..score.heads import Head, control_pool, head_name, head_names, top_heads
from ..validate import count
from .attribution import direct_logit_attribution
from .mask import k_grid
from .pairs import NoAnswerError, make_pair
from .patch import (
    DIRECTIONS,
    PairRun,
    Positions,
    control_groups,
    patch_groups,
    patch_heads,
    run_pair,
)

#: Columns of a patching run's CSV, one row per (pair, measure, group or head). Rows of several
#: shards' CSVs concatenate (sort by ``pair`` to get the single run's order).
COLUMNS = PATCH_COLUMNS

#: What a row measures: ``"group"`` (heads patched together; ``value`` is the fraction moved),
#: ``"head"`` (one head patched clean->cf; ``value`` is its restored fraction), ``"dla"``
#: (``value`` is the head's direct logit attribution, in logits) and ``"none"`` (the unpatched
#: runs: ``greedy_clean`` of the counterfactual run for ``clean->cf``, of the clean run for
#: ``cf->clean``).
MEASURES = ("none", "group", "head", "dla")

#: Fields every logged pair of a patching run has (a record lacking one is recomputed).
RECORD_FIELDS = ("key", "needle", "length", "depth", "expected", "rows", "skipped")


@dataclass(frozen=True)
class PatchConfig:
    """What a patching run measures.

    Attributes:
        grid: the prompts the pairs are drawn from (:func:`patch_samples`).
        scores: ``[n_layers, n_heads]`` score map that ranks the heads.
        ks: group sizes (top-K against K controls); ``"auto"`` is the paper's K grid scaled to
            the map (:func:`rhlens.intervene.mask.k_grid`). 0 (the unpatched reference, always
            written) is dropped.
        seeds: control draws per K (:func:`~rhlens.intervene.patch.control_groups`).
        threshold: retrieval-head threshold; controls score at most this.
        heads: also patch each head alone (the per-head map).
        dla: also write each head's direct logit attribution.
        force_answer: teacher-force the needle's answer right after the prompt
            (:func:`~rhlens.intervene.pairs.make_pair`), for random-weight models.
        positions: where the patches act (:data:`~rhlens.intervene.patch.Positions`).
        pairs: how many prompts of the grid to draw (all when ``None``), with ``pair_seed``.
            Which prompts are drawn is not part of the run's identity (their keys are): a run
            resumed with more pairs keeps the ones it has.
    """

    grid: Grid
    scores: torch.Tensor
    ks: Sequence[int] | str = "auto"
    seeds: Sequence[int] = (0, 1, 2)
    threshold: float = 0.1
    heads: bool = True
    dla: bool = True
    force_answer: bool = False
    positions: Positions = "decode"
    pairs: int | None = field(default=None, metadata={"identity": False})
    pair_seed: int = field(default=0, metadata={"identity": False})

    def __post_init__(self):
        if not isinstance(self.grid, Grid):
            raise UsageError(f"grid must be a Grid, got {type(self.grid).__name__}.", arg="grid")
        scores = torch.as_tensor(self.scores).detach().float().cpu()
        if scores.ndim != 2:
            raise UsageError(f"scores must be a [n_layers, n_heads] map, got shape "
                             f"{tuple(scores.shape)}.", arg="scores")
        object.__setattr__(self, "scores", scores)
        ks = k_grid(scores.numel()) if self.ks == "auto" else self.ks
        if isinstance(ks, str):
            raise UsageError(f"ks must be 'auto' or a list of group sizes, got {ks!r}.", arg="ks")
        ks = tuple(sorted({count(k, "ks") for k in ks} - {0}))
        if not ks:
            raise UsageError("ks has no group size above 0: nothing to patch.", arg="ks")
        object.__setattr__(self, "ks", ks)
        object.__setattr__(self, "seeds", tuple(count(s, "seeds", minimum=-(2**63))
                                                for s in self.seeds))
        if not self.seeds:
            raise UsageError("seeds is an empty list.", arg="seeds")
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise UsageError(f"threshold must be a finite number, got {self.threshold!r}.",
                             arg="threshold")
        if self.positions not in ("decode", "answer"):
            raise UsageError(f"positions must be 'decode' or 'answer', got {self.positions!r}.",
                             arg="positions")
        if self.pairs is not None:
            count(self.pairs, "pairs", minimum=1)
        count(self.pair_seed, "pair_seed", minimum=-(2**63))
        n_total, k = scores.numel(), max(ks)
        if k > n_total:
            raise UsageError(f"ks: cannot patch {k} heads of a model with {n_total}.", arg="ks")
        top = set(top_heads(scores, k))
        pool = [h for h in control_pool(scores, self.threshold, same_layers=True) if h not in top]
        if k > len(pool):
            raise UsageError(f"ks: only {len(pool)} control heads (in the retrieval heads' "
                             f"layers, scoring <= {self.threshold}, not in the top {k}) can be "
                             f"drawn, so K = {k} has no control; ask for smaller K.", arg="ks")


def patch_samples(grid, tokenizer, n_pairs: int | None = None, *, seed: int = 0,
                  n_ctx: int | None = None) -> list[Sample]:
    """``n_pairs`` prompts of ``grid`` drawn at random (``seed``), so that even a few pairs
    spread over its needles, lengths and depths; all of them (shuffled) when ``n_pairs`` is
    ``None``."""
    samples = grid.samples(tokenizer, n_ctx)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [samples[i] for i in order[: len(samples) if n_pairs is None else n_pairs]]


def pair_rows(model, run: PairRun, groups: Mapping[tuple[str, int, int], Sequence[Head]], *,
              heads: bool = True, dla: bool = True, batch_size: int = 8) -> list[dict]:
    """Every measure of one pair as CSV rows (without the pair's columns)."""
    base = {"ld_clean": run.ld["clean"], "ld_cf": run.ld["cf"]}
    rows = [{**base, "measure": "none", "direction": "clean->cf", "kind": "none", "seed": -1,
             "k": 0, "heads": "", "ld": run.ld["cf"], "value": 0.0,
             "greedy_clean": run.greedy["cf"]},
            {**base, "measure": "none", "direction": "cf->clean", "kind": "none", "seed": -1,
             "k": 0, "heads": "", "ld": run.ld["clean"], "value": 0.0,
             "greedy_clean": run.greedy["clean"]}]
    named = {f"{kind}|{k}|{seed}": hs for (kind, k, seed), hs in groups.items()}
    for direction in DIRECTIONS:
        res = patch_groups(model, run, named, direction, batch_size=batch_size)
        for name, r in res.items():
            kind, k, seed = name.split("|")
            rows.append({**base, "measure": "group", "direction": direction, "kind": kind,
                         "seed": int(seed), "k": int(k), "heads": head_names(named[name]),
                         "ld": r.ld, "value": r.fraction, "greedy_clean": r.greedy_clean})
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = [head_name(l, h) for l in range(n_layers) for h in range(n_heads)]
    if heads:
        restored = patch_heads(model, run, batch_size=max(batch_size, n_heads)).restored
        rows += [{**base, "measure": "head", "direction": "clean->cf", "kind": "head",
                  "seed": -1, "k": 1, "heads": n, "ld": None, "value": float(v),
                  "greedy_clean": None} for n, v in zip(names, restored.flatten().tolist())]
    if dla:
        d = direct_logit_attribution(model, run)
        rows += [{**base, "measure": "dla", "direction": "", "kind": "head", "seed": -1, "k": 1,
                  "heads": n, "ld": None, "value": float(v), "greedy_clean": None}
                 for n, v in zip(names, d.flatten().tolist())]
    return rows


class PatchSweep(Sweep):
    """A patching run as a resumable sweep: one record per pair (its CSV rows, or why it was
    skipped)."""

    kind = "patch"
    required = RECORD_FIELDS
    label = "patching"
    config: PatchConfig

    def __init__(self, model, config: PatchConfig, *, batch_size: int = 8, **options):
        super().__init__(model, config, **options)
        # patched runs per forward; the pairs themselves are measured one at a time
        self.runs_per_forward = count(batch_size, "batch_size", minimum=1)
        c = config
        assert not isinstance(c.ks, str)  # "auto" became the K grid when the config was made
        self.groups = control_groups(c.scores, c.ks, c.seeds, threshold=c.threshold)

    def samples(self) -> list[Sample]:
        c = self.config
        return patch_samples(c.grid, self.model.tokenizer, c.pairs, seed=c.pair_seed,
                             n_ctx=self.model.cfg.n_ctx)

    def measure(self, sample: Sample) -> dict:
        c = self.config
        record = {"key": sample.key, "needle": sample.needle.text, "length": sample.length,
                  "depth": sample.depth, "expected": sample.needle.answer, "rows": [],
                  "skipped": ""}
        try:
            pair = make_pair(self.model, sample, max_new_tokens=c.grid.max_new_tokens,
                             force_answer=c.force_answer)
            run = run_pair(self.model, pair, positions=c.positions)
            record["rows"] = pair_rows(self.model, run, self.groups, heads=c.heads, dla=c.dla,
                                       batch_size=self.runs_per_forward)
        except NoAnswerError as err:
            record["skipped"] = str(err)
        return record


def patch_sweep(model, config: PatchConfig, *, out: str | Path | None = None,
                shard: Shard | None = None, batch_size: int = 8,
                progress: bool = True) -> pd.DataFrame:
    """Group patching over the K grid (top-K against controls, both directions), the per-head
    map and direct logit attribution, on every pair of ``config`` the model answers.

    Args:
        config: the run (:class:`PatchConfig`).
        out: CSV path, rewritten atomically after every pair; ``<out>.samples.jsonl`` lets a
            rerun resume.
        shard: run only this shard's pairs (``out`` is then the shard's own CSV; the ``pair``
            column keeps each pair's number in the whole run).
        batch_size: patched runs per forward.

    Returns:
        a DataFrame with :data:`COLUMNS` (the run's skipped samples in ``.attrs["skipped"]``).
    """
    sweep = PatchSweep(model, config, batch_size=batch_size, out=out, shard=shard,
                       progress=progress)
    records = sweep.run()
    df = patch_frame(records, sweep.positions)
    df.attrs["skipped"] = [r["skipped"] for r in records if r["skipped"]]
    return df


# --------------------------------------------------------------------------- one map, no file


@dataclass
class PatchingRun:
    """:func:`patching_map` over several pairs: ``restored`` ``[n_layers, n_heads]`` (mean),
    ``per_pair`` ``[n_pairs, n_layers, n_heads]`` and one record per sample (``ld_clean``,
    ``ld_cf``, ``answer``, or ``skipped``)."""

    restored: torch.Tensor
    per_pair: torch.Tensor
    records: list[dict]


def patching_map(model, samples: Sequence[Sample], seed: int = 0, max_new_tokens: int = 32,
                 progress: bool = True) -> PatchingRun:
    """Patch every head on each sample the model answers; average the restored fractions.

    Samples whose clean answer lacks the needle's answer are skipped (and recorded).
    """
    maps, records = [], []
    for sample in tqdm(samples, desc="patching", disable=not progress):
        try:
            pair = make_pair(model, sample, seed, max_new_tokens)
        except NoAnswerError as err:
            records.append({"key": sample.key, "skipped": str(err)})
            continue
        res = patch_heads(model, pair)
        maps.append(res.restored)
        records.append({"key": sample.key, "ld_clean": res.ld_clean, "ld_cf": res.ld_cf,
                        "clean": model.tokenizer.decode(pair.clean_tokens),
                        "counterfactual": model.tokenizer.decode(pair.cf_tokens),
                        "skipped": ""})
    if not maps:
        raise NoAnswerError("The model answered none of the samples; nothing to patch. "
                            "Use shorter prompts or other needles.")
    per_pair = torch.stack(maps)
    return PatchingRun(per_pair.mean(0), per_pair, records)


