"""Which heads matter? The detectors' maps held against masking and patching, summarised.

* :func:`masking_summary`: per needle set, group kind and K, the masked NIAH score and its drop
  from the unmasked model, with bootstrap intervals over prompts (controls first averaged over
  their seeds within each prompt);
* :func:`patching_summary`: :func:`rhlens.analyze.patching.group_summary` per needle set;
* :func:`intervention_table`: both side by side, one row per (set, K, detector or control);
* :func:`map_correlations`: each map's Spearman correlation with the per-head patching map
  (:func:`rhlens.analyze.statistics.map_correlation`: a bootstrap interval over pairs and a
  head-shuffle null);
* :func:`compare_detectors`: the whole comparison in one call (what ``rhlens detectors`` runs):
  the maps (:func:`rhlens.score.detector_maps.detect_heads`), the head groups, masking and
  patching (:mod:`rhlens.intervene.detector_eval`).

Every interval is a percentile bootstrap of :mod:`rhlens.analyze.statistics`.

Example::

    >>> cmp = compare_detectors(model, grid, {"literal": held_out}, ks=[5, 13])   # doctest: +SKIP
    >>> cmp.table()                                                               # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..errors import UsageError
from ..intervene.detector_eval import (
    EvalConfig,
    Group,
    default_ks,
    group_name,
    intervention_groups,
    mask_grids,
    patch_grids,
)
from ..intervene.mask import Mask
from ..niah.grid import Grid
from ..run.results import atomic_write_text
from ..score.detector_maps import DetectorConfig, DetectorRun, detect_heads
from ..score.detectors import DETECTORS
from ..score.heads import Head, head_names
from .patching import group_summary, pair_maps
from .statistics import bootstrap_ci, map_correlation


def masking_summary(niah: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per needle set, group kind and K: the mean NIAH score and its drop from the unmasked
    model, each with a bootstrap interval over prompts (controls first averaged over seeds
    within each prompt)."""
    prompt = ["set", "needle", "length", "depth"]
    per = niah.groupby([*prompt, "kind", "k"], as_index=False)["score"].mean()
    base = per[per.kind == "none"].set_index(prompt)["score"].rename("base")
    per = per.join(base, on=prompt)
    out = []
    for (name, kind, k), part in per.groupby(["set", "kind", "k"]):
        s = bootstrap_ci(part.score, n_boot=n_boot, seed=seed)
        d = bootstrap_ci(part.base - part.score, n_boot=n_boot, seed=seed)
        out.append({"set": name, "kind": kind, "k": k, "prompts": len(part), "niah": s[0],
                    "niah_lo": s[1], "niah_hi": s[2], "drop": d[0], "drop_lo": d[1], "drop_hi": d[2]})
    return pd.DataFrame(out)


def patching_summary(patch: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:func:`rhlens.analyze.patching.group_summary` per needle set: per direction, kind (a
    detector, ``control`` or ``none``) and K, the fraction moved with its interval over pairs."""
    parts = [group_summary(p, n_boot=n_boot, seed=seed).assign(set=name)
             for name, p in patch.groupby("set") if (p.measure == "group").any()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def intervention_table(niah: pd.DataFrame, patch: pd.DataFrame, *, n_boot: int = 1000,
                       seed: int = 0) -> pd.DataFrame:
    """One row per (needle set, K, detector or control): masked NIAH score, its drop, and the
    fractions restored and destroyed by group patching, each ``[lo, hi]`` beside it."""
    m = masking_summary(niah, n_boot=n_boot, seed=seed)
    m = m[m.kind != "none"]
    p = patching_summary(patch, n_boot=n_boot, seed=seed) if len(patch) else pd.DataFrame()
    if len(p):
        p = p[p.kind != "none"]
        for direction, col in (("clean->cf", "restored"), ("cf->clean", "destroyed")):
            part = p[p.direction == direction].rename(columns={
                "fraction": col, "fraction_lo": f"{col}_lo", "fraction_hi": f"{col}_hi"})[
                ["set", "kind", "k", "pairs", col, f"{col}_lo", f"{col}_hi"]]
            m = m.merge(part if col == "restored" else part.drop(columns="pairs"),
                        on=["set", "kind", "k"], how="left")
    order = {d: i for i, d in enumerate([*DETECTORS, "control"])}
    return m.sort_values(["set", "k", "kind"], key=lambda c: c.map(order) if c.name == "kind"
                         else c, ignore_index=True)


def map_correlations(maps: Mapping[str, torch.Tensor], patch: pd.DataFrame, *, n_boot: int = 1000,
                     n_null: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Spearman correlation of each detector's map with the per-head patching map of each
    needle set (:func:`rhlens.analyze.statistics.map_correlation`: a bootstrap interval over
    pairs and a head-shuffle null)."""
    out = []
    for name, part in patch[patch.measure == "head"].groupby("set"):
        per_pair, _ = pair_maps(part, "head")
        for d, m in maps.items():
            c = map_correlation(per_pair, m.double().nan_to_num(0.0), n_boot=n_boot,
                                n_null=n_null, seed=seed)
            out.append({"set": name, "detector": d, **c})
    return pd.DataFrame(out)


@dataclass
class DetectorComparison:
    """What :func:`compare_detectors` measured: the detectors' run, the head groups, and one
    row per masked prompt and condition (``niah``) and per patched measure (``patch``)."""

    run: DetectorRun
    groups: dict[Group, tuple[Head, ...]]
    niah: pd.DataFrame
    patch: pd.DataFrame

    def table(self, **kwargs: Any) -> pd.DataFrame:
        """:func:`intervention_table` of the run."""
        return intervention_table(self.niah, self.patch, **kwargs)

    def correlations(self, **kwargs: Any) -> pd.DataFrame:
        """:func:`map_correlations` of the run."""
        return map_correlations(self.run.maps, self.patch, **kwargs)


def compare_detectors(model, grid: Grid | DetectorConfig, held_out: Mapping[str, Grid], *,
                      ks: Sequence[int] | None = None, seeds: Sequence[int] = (0, 1, 2),
                      threshold: float = 0.1, pairs: int | None = None, head_map: bool = True,
                      mask: Mask = Mask(), force_answer: bool = False, batch_size: int = 8,
                      out: str | Path | None = None, progress: bool = True,
                      **detect_options: Any) -> DetectorComparison:
    """The whole comparison in one call (what ``rhlens detectors`` runs): the detectors' maps
    on ``grid`` (a :class:`~rhlens.score.detector_maps.DetectorConfig`, or a grid and its
    fields as ``detect_options``), then masking and group patching of their top-K against
    shared controls on the ``held_out`` grids (``{needle set: grid}``, needles that ``grid``
    does not use). ``ks`` default: :func:`~rhlens.intervene.detector_eval.default_ks`. With
    ``out`` (a prefix) every stage writes its files and resumes from its log; the groups go to
    ``{out}.groups.json``."""
    config = grid if isinstance(grid, DetectorConfig) else DetectorConfig(grid, **detect_options)
    used = {n.text for n in config.grid.needle_list}
    for name, g in held_out.items():
        reused = [n.text for n in g.needle_list if n.text in used]
        if reused:
            raise UsageError(f"held-out set {name!r} reuses the detection needle {reused[0]!r}; "
                             "test on needles the maps were not made from.", arg="held_out")
    run = detect_heads(model, config, out=out, progress=progress)
    ks = default_ks(model.cfg.n_layers * model.cfg.n_heads) if ks is None else ks
    groups = intervention_groups(run.maps, ks, seeds, threshold=threshold)
    if out:
        atomic_write_text(f"{out}.groups.json", json.dumps(
            {group_name(g): head_names(h) for g, h in groups.items()}, indent=1))
    if not held_out:  # the maps only
        return DetectorComparison(run, groups, pd.DataFrame(), pd.DataFrame())
    evaluation = EvalConfig(held_out, groups, mask=mask, rouge_stemmer=config.rouge_stemmer,
                            head_map=head_map, force_answer=force_answer, pairs=pairs)
    niah = mask_grids(model, evaluation, out=out, progress=progress)
    patch = patch_grids(model, evaluation, batch_size=batch_size, out=out, progress=progress)
    return DetectorComparison(run, groups, niah, patch)
