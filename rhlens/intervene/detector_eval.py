"""Hold the head detectors against the interventions, on held-out needles.

For each detector's map (:mod:`rhlens.score.detectors`) and each K, the top-K heads are

* **masked** (:class:`~rhlens.intervene.mask.Mask`, uniform attention at decode steps as the
  paper masks): the NIAH score (ROUGE-1 recall x 100) of every held-out prompt;
* **patched together** (:func:`~rhlens.intervene.patch_sweep.pair_rows`) between clean and
  counterfactual prompts: the fraction of the logit difference restored (clean -> counterfactual)
  and destroyed (counterfactual -> clean), with the per-head map and direct logit attribution;

against K **control** heads per seed, shared by every detector and by both interventions
(:func:`intervention_groups`): drawn as :meth:`Mask.random <rhlens.intervene.mask.Mask.random>`
draws them (seeded, in the retrieval heads' layers, scoring <= ``threshold`` on the copy-paste
map, i.e. never a retrieval head) and never among any detector's top max(K).

A run is configured by an :class:`EvalConfig` (the held-out grids by needle set,
:mod:`rhlens.niah.needle_sets`; the head groups; the mask mode; what patching measures),
validated when it is made, and run as two resumable sweeps (:mod:`rhlens.run.sweep`):
:class:`MaskingSweep` (``{out}.niah.csv``) and :class:`PatchingSweep` (``{out}.patch.csv``).
Masking decodes each prompt once for every condition together
(:func:`rhlens.run.decode.decode_conditions`: one prefill, one batch row per mask), which gives
what :func:`rhlens.intervene.niah.run_niah` gives mask by mask (a test checks it) at a fraction
of the cost. :mod:`rhlens.analyze.detectors` summarises both with bootstrap intervals.

Example::

    >>> groups = intervention_groups(run.maps, default_ks(270), seeds=[0, 1])        # doctest: +SKIP
    >>> config = EvalConfig({"literal": held_out}, groups)                          # doctest: +SKIP
    >>> niah = mask_grids(model, config, out="runs/det")                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..errors import UsageError
from ..niah.answers import niah_score
from ..niah.grid import Grid
from ..niah.prompts import Sample
from ..run.decode import decode_conditions
from ..run.outputs import PATCH_COLUMNS
from ..run.results import atomic_write_text
from ..run.sweep import Sweep
from ..score.heads import Head, as_heads, head_names, top_heads
from ..validate import count
from .mask import Mask, k_grid
from .pairs import NoAnswerError, make_pair
from .patch import run_pair
from .patch_sweep import pair_rows, patch_samples

#: The paper's K (of 1024 heads) that :func:`default_ks` scales to a model: about 2% and 5%.
PAPER_KS = (20, 50)
#: A head group: ``(kind, k, seed)``, kind a detector or ``"control"`` (seed -1: a top-K).
Group = tuple[str, int, int]
#: The unmasked condition of a masking run.
NONE = "none|0|-1"
#: Columns of ``{out}.niah.csv``, one row per (needle set, held-out prompt, condition).
NIAH_COLUMNS = ["set", "needle", "length", "depth", "kind", "k", "seed", "heads", "score", "answer"]
#: Columns of ``{out}.patch.csv``: the needle set, then those of a patching run.
PATCH_CSV_COLUMNS = ["set", *PATCH_COLUMNS]


def default_ks(n_heads_total: int) -> list[int]:
    """The paper's K = 20 and 50 of 1024 heads, scaled to the model.

    >>> default_ks(270), default_ks(1024)
    ([5, 13], [20, 50])
    """
    return k_grid(n_heads_total, PAPER_KS)


def group_name(group: Group) -> str:
    """``("copy_paste", 5, -1)`` -> ``"copy_paste|5|-1"`` (how runs and files name a group)."""
    return "|".join(map(str, group))


def parse_group(name: str) -> Group:
    """The inverse of :func:`group_name`.

    >>> parse_group("control|13|1")
    ('control', 13, 1)
    """
    kind, k, seed = name.split("|")
    return kind, int(k), int(seed)


def intervention_groups(maps: Mapping[str, torch.Tensor], ks: Sequence[int],
                        seeds: Sequence[int] = (0, 1, 2), *, reference: str = "copy_paste",
                        threshold: float = 0.1) -> dict[Group, tuple[Head, ...]]:
    """The head groups: ``(detector, k, -1)``, each detector's top ``k``, and
    ``("control", k, seed)``, ``k`` control heads shared by every detector.

    >>> m = {"a": torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.5, 0.0]]),
    ...      "b": torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.1, 0.7]])}
    >>> g = intervention_groups(m, [1], [0], reference="a")
    >>> g[("a", 1, -1)], g[("b", 1, -1)], g[("control", 1, 0)]
    (((0, 0),), ((1, 2),), ((1, 0),))
    """
    ks = sorted({int(k) for k in ks if int(k) > 0})
    if not ks:
        raise UsageError("ks has no group size above 0: nothing to mask or patch.", arg="ks")
    some = next(iter(maps.values()))
    ref = maps[reference] if reference in maps else torch.zeros_like(some)
    groups: dict[Group, tuple[Head, ...]] = {}
    tops = {d: top_heads(m.nan_to_num(float("-inf")), max(ks)) for d, m in maps.items()}
    taken = {h for t in tops.values() for h in t}
    for k in ks:
        for d in maps:
            groups[(d, k, -1)] = tuple(tops[d][:k])
        for seed in seeds:
            groups[("control", k, int(seed))] = Mask.random(
                ref.float(), k, int(seed), threshold=threshold if reference in maps else None,
                same_layers=True, exclude=taken).heads
    return groups


@dataclass(frozen=True)
class EvalConfig:
    """What the evaluation of the detectors measures.

    Attributes:
        held_out: ``{needle set: grid}``, prompts whose needles the maps were not made from.
        groups: ``{(kind, k, seed) or its name: heads}`` (:func:`intervention_groups`); kept as
            ``{name: heads}`` (:func:`group_name`).
        mask: how a group is masked (its mode and means; its heads are ignored). Masks act at
            decode steps only, as the paper masks.
        rouge_stemmer: score answers with stemmed ROUGE-1, as the public code (default).
        head_map: also patch each head alone (the per-head map the rank correlations need).
        force_answer: teacher-force the needle's answer (random-weight models).
        pairs: patch this many prompts per needle set (all when ``None``), drawn with
            ``pair_seed``; which prompts is not part of the identity (their keys are).

    The identity (:func:`rhlens.run.sweep.run_identity`) is everything but the prompts, with
    ``max_new_tokens`` per needle set; both sweeps of a run log it.
    """

    held_out: Mapping[str, Grid] = field(metadata={"identity": False})
    groups: Mapping[Any, Sequence[Head]]
    mask: Mask = Mask()
    rouge_stemmer: bool = True
    head_map: bool = True
    force_answer: bool = False
    pairs: int | None = field(default=None, metadata={"identity": False})
    pair_seed: int = field(default=0, metadata={"identity": False})
    max_new_tokens: dict[str, int] = field(init=False)

    def __post_init__(self):
        if not self.held_out or not all(isinstance(g, Grid) for g in self.held_out.values()):
            raise UsageError("held_out must map each needle set's name to a Grid.", arg="held_out")
        object.__setattr__(self, "held_out", dict(self.held_out))
        groups = {k if isinstance(k, str) else group_name(k): as_heads(v)
                  for k, v in self.groups.items()}
        if not groups or any(len(h) == 0 for h in groups.values()):
            raise UsageError("groups must name at least one group, each of at least one head.",
                             arg="groups")
        object.__setattr__(self, "groups", groups)
        if self.mask.heads or self.mask.prefill:
            raise UsageError("mask gives the mode only: pass a Mask without heads and with "
                             "prefill=False (masks act at decode steps, as the paper masks).",
                             arg="mask")
        if self.pairs is not None:
            count(self.pairs, "pairs", minimum=1)
        for name in ("rouge_stemmer", "head_map", "force_answer"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        object.__setattr__(self, "max_new_tokens",
                           {s: g.max_new_tokens for s, g in self.held_out.items()})

    def conditions(self) -> dict[str, Mask]:
        """Every masking condition by name: the unmasked model (:data:`NONE`), then each
        group."""
        out = {NONE: self.mask}
        out.update({name: self.mask.with_heads(hs) for name, hs in self.groups.items()})
        return out


class _HeldOutSweep(Sweep):
    """A sweep over the held-out prompts of every needle set, in order; ``prefix`` names the
    files (``{prefix}.{stage}.csv`` and its log ``{prefix}.{stage}.samples.jsonl``).
    (Not split into shards.)"""

    stage: str
    config: EvalConfig

    def __init__(self, model, config: EvalConfig, *, prefix: str | Path | None = None,
                 progress: bool = True):
        super().__init__(model, config, out=None if prefix is None else f"{prefix}.{self.stage}",
                         progress=progress)
        self.where: dict[str, tuple[str, int, Sample]] = {}  # key -> (set, index in set, sample)

    def set_samples(self, grid: Grid) -> list[Sample]:
        return grid.samples(self.model.tokenizer, self.model.cfg.n_ctx)

    def samples(self) -> list[Sample]:
        out = []
        for name, grid in self.config.held_out.items():
            for i, s in enumerate(self.set_samples(grid)):
                self.where[s.key] = (name, i, s)
                out.append(s)
        return out

    def frame(self, records: Sequence[dict]) -> pd.DataFrame:
        """The output table of the records so far."""
        raise NotImplementedError

    def write(self, records: Sequence[dict], positions: Sequence[int]) -> None:
        assert self.out is not None
        atomic_write_text(f"{self.out}.csv", self.frame(records).to_csv(
            index=False, float_format="%.6g" if self.stage == "patch" else None))


class MaskingSweep(_HeldOutSweep):
    """Masking: each held-out prompt decoded under every condition at once; one record per
    prompt (each condition's answer and NIAH score)."""

    kind = "niah"
    stage = "niah"
    required = ("key", "answers", "scores")
    label = "masking"

    def __init__(self, model, config: EvalConfig, **options):
        super().__init__(model, config, **options)
        self.masks = config.conditions()
        self.hooks = {name: m.hooks(model) for name, m in self.masks.items()}

    def measure(self, sample: Sample) -> dict:
        grid = self.config.held_out[self.where[sample.key][0]]
        texts = decode_conditions(self.model, sample.input_ids, self.hooks, grid.max_new_tokens)
        return {"key": sample.key, "answers": texts,
                "scores": {c: niah_score(sample.needle.answer, t, self.config.rouge_stemmer)
                           for c, t in texts.items()}}

    def frame(self, records: Sequence[dict]) -> pd.DataFrame:
        rows = []
        for rec in records:
            name, _, sample = self.where[rec["key"]]
            for cond, score in rec["scores"].items():
                kind, k, seed = parse_group(cond)
                rows.append({"set": name, "needle": sample.needle.text, "length": sample.length,
                             "depth": sample.depth, "kind": kind, "k": k, "seed": seed,
                             "heads": head_names(self.masks[cond].heads), "score": score,
                             "answer": rec["answers"][cond]})
        return pd.DataFrame(rows, columns=NIAH_COLUMNS)


class PatchingSweep(_HeldOutSweep):
    """Group patching of every group (both directions), the per-head map and direct logit
    attribution, at the answer's decode positions, on the held-out prompts the model answers
    (up to ``pairs`` per needle set); one record per prompt (its rows, or why it was skipped)."""

    kind = "patch"
    stage = "patch"
    required = ("key", "rows", "skipped")
    label = "patching"

    def __init__(self, model, config: EvalConfig, *, batch_size: int = 8, **options):
        super().__init__(model, config, **options)
        # patched runs per forward; the pairs themselves are measured one at a time
        self.runs_per_forward = count(batch_size, "batch_size", minimum=1)
        self.groups = {parse_group(n): hs for n, hs in config.groups.items()}

    def set_samples(self, grid: Grid) -> list[Sample]:
        c = self.config
        return patch_samples(grid, self.model.tokenizer, c.pairs, seed=c.pair_seed,
                             n_ctx=self.model.cfg.n_ctx)

    def measure(self, sample: Sample) -> dict:
        c = self.config
        grid = c.held_out[self.where[sample.key][0]]
        rec: dict = {"key": sample.key, "rows": [], "skipped": ""}
        try:
            pair = make_pair(self.model, sample, max_new_tokens=grid.max_new_tokens,
                             force_answer=c.force_answer)
            run = run_pair(self.model, pair, positions="answer")
            rec["rows"] = pair_rows(self.model, run, self.groups, heads=c.head_map, dla=True,
                                    batch_size=self.runs_per_forward)
        except NoAnswerError as err:
            rec["skipped"] = str(err)
        return rec

    def frame(self, records: Sequence[dict]) -> pd.DataFrame:
        rows = []
        for rec in records:
            name, i, sample = self.where[rec["key"]]
            rows += [{"set": name, "pair": i, "answer": sample.needle.answer,
                      "length": sample.length, "depth": sample.depth, **r} for r in rec["rows"]]
        return pd.DataFrame(rows, columns=PATCH_CSV_COLUMNS)


def mask_grids(model, config: EvalConfig, *, out: str | Path | None = None,
               progress: bool = True) -> pd.DataFrame:
    """NIAH score of every held-out prompt unmasked and under each group's mask, all conditions
    of a prompt in one batch: a row per (needle set, prompt, condition), :data:`NIAH_COLUMNS`
    (``kind`` a detector, ``control`` or ``none``). With ``out`` (a prefix): ``{out}.niah.csv``
    and its resume log ``{out}.niah.samples.jsonl``."""
    sweep = MaskingSweep(model, config, prefix=out, progress=progress)
    return sweep.frame(sweep.run())


def patch_grids(model, config: EvalConfig, *, batch_size: int = 8, out: str | Path | None = None,
                progress: bool = True) -> pd.DataFrame:
    """Group patching of every group (the group's detector, or ``control``, is the ``kind``
    column), the per-head map and direct logit attribution on the held-out prompts the model
    answers: :data:`PATCH_CSV_COLUMNS`. With ``out`` (a prefix): ``{out}.patch.csv`` and its
    resume log ``{out}.patch.samples.jsonl``."""
    sweep = PatchingSweep(model, config, batch_size=batch_size, prefix=out, progress=progress)
    return sweep.frame(sweep.run())
