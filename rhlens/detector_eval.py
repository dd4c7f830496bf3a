"""Hold the head detectors against the interventions, on held-out needles.

For each detector's map (:mod:`rhlens.detectors`) and each K, the top-K heads are

* **masked** (:class:`rhlens.ablation.Mask`, uniform attention at decode steps as the paper
  masks): the NIAH score (ROUGE-1 recall x 100) and its drop from the unmasked model;
* **patched together** (:func:`rhlens.patching.pair_rows`) between clean and counterfactual
  prompts: the fraction of the logit difference restored (clean -> counterfactual) and destroyed
  (counterfactual -> clean);

against K **control** heads per seed, shared by every detector and by both interventions: drawn as
:meth:`Mask.random <rhlens.ablation.Mask.random>` draws them (seeded, in the retrieval heads'
layers, scoring <= ``threshold`` on the copy-paste map, i.e. never a retrieval head) and never
among any detector's top max(K). Intervals are percentile bootstraps over prompts or pairs
(:func:`rhlens.patching.bootstrap_ci`); each map's Spearman correlation with the per-head
patching map gets a bootstrap interval and a head-shuffle null
(:func:`rhlens.patching.map_correlation`).

Needles come in two sets (:data:`NEEDLE_SETS`): ``literal``, the built-in needles, whose question
echoes the needle's words; and ``nonliteral``, invented facts whose question shares no content
word with the needle (NoLiMa-style: answering needs the meaning, not a word match), shipped as
``rhlens/data/nonliteral_needles.json`` (:func:`load_needle_set`, :func:`shared_words`).

Masking decodes each prompt once for every condition together
(:func:`rhlens.decode.decode_conditions`: one prefill, one batch row per mask), which gives what
:func:`rhlens.niah_grid.run_niah` gives mask by mask (a test checks it) at a fraction of the cost.

Example::

    >>> cmp = compare_detectors(model, detect_grid, {"literal": held_out}, ks=[5, 13])  # doctest: +SKIP
    >>> cmp.table()                                                                    # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from .ablation import Mask, k_grid
from .answers import niah_score
from .decode import decode_conditions
from .detector_maps import DetectorRun, detect_heads
from .detectors import DETECTORS
from .grid import Grid
from .haystack import Needle, load_needles
from .heads import Head, head_names, top_heads
from .patching import (NoAnswerError, bootstrap_ci, group_summary, make_pair, map_correlation,
                       pair_maps, pair_rows, patch_samples, run_pair)
from .results import atomic_write_text
from .samplelog import SampleLog, model_identity

#: The needle sets: the built-in (literal) needles and the invented non-literal ones.
NEEDLE_SETS = ("literal", "nonliteral")
#: The paper's K (of 1024 heads) that :func:`default_ks` scales to a model: about 2% and 5%.
PAPER_KS = (20, 50)
#: Words that carry no content (the question may share these with the needle).
FUNCTION_WORDS = frozenset(
    "a an the in on at of to with and or is was were be been by for from who whom whose which "
    "what when where why how that this these those it its his her their he she they did does do "
    "has have had not no as so than then there here into onto over under up down out about s".split())


# --------------------------------------------------------------------------- needles


def load_needle_set(name: str) -> list[Needle]:
    """The needles of a set of :data:`NEEDLE_SETS` (``nonliteral`` from the package's data)."""
    if name not in NEEDLE_SETS:
        raise ValueError(f"needle set must be one of {', '.join(NEEDLE_SETS)}, got {name!r}.")
    if name == "literal":
        return load_needles()
    from .data import path

    return load_needles(path("nonliteral_needles.json"))


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from rouge_score.tokenizers import DefaultTokenizer

    return DefaultTokenizer(use_stemmer=True)


def shared_words(needle: Needle) -> set[str]:
    """Content words that the question shares with the needle's text, as the stemmed ROUGE
    gate reads words (:data:`FUNCTION_WORDS` left out): empty for a non-literal needle.

    >>> sorted(shared_words(load_needle_set("literal")[0]))
    ['ingredi', 'marguerit', 'okonjo', 'prize', 'secret', 'soup', 'win']
    """
    def stems(text: str) -> set[str]:
        return {w for w in _tokenizer().tokenize(text) if w not in FUNCTION_WORDS}

    return stems(needle.question) & stems(needle.text)


# --------------------------------------------------------------------------- heads


def default_ks(n_heads_total: int) -> list[int]:
    """The paper's K = 20 and 50 of 1024 heads, scaled to the model.

    >>> default_ks(270), default_ks(1024)
    ([5, 13], [20, 50])
    """
    return k_grid(n_heads_total, PAPER_KS)


def intervention_groups(maps: Mapping[str, torch.Tensor], ks: Sequence[int],
                        seeds: Sequence[int] = (0, 1, 2), *, reference: str = "copy_paste",
                        threshold: float = 0.1) -> dict[tuple[str, int, int], tuple[Head, ...]]:
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
        raise ValueError("`ks` has no group size above 0.")
    some = next(iter(maps.values()))
    ref = maps[reference] if reference in maps else torch.zeros_like(some)
    groups: dict[tuple[str, int, int], tuple[Head, ...]] = {}
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


def _name(group: tuple[str, int, int]) -> str:
    return "|".join(map(str, group))


# --------------------------------------------------------------------------- interventions


def mask_grids(model, grids: Mapping[str, Grid], groups: Mapping[tuple[str, int, int], Sequence[Head]],
               *, mask: Mask = Mask(), out: str | Path | None = None, rouge_stemmer: bool = True,
               progress: bool = True) -> pd.DataFrame:
    """NIAH score of every prompt of ``grids`` (``{needle set: grid}``) unmasked and under each
    group's mask (``mask``: the mode and prefill; its heads are ignored), all conditions of a
    prompt in one batch. A row per (set, prompt, condition); ``{out}.niah.csv`` and its resume
    log ``{out}.niah.samples.jsonl``."""
    conditions = {"none|0|-1": Mask(mask_mode=mask.mask_mode, prefill=mask.prefill,
                                    means=mask.means)}
    conditions.update({_name(g): mask.with_heads(hs) for g, hs in groups.items()})
    if any(m.prefill for m in conditions.values()):
        raise ValueError("masks act at decode steps here (as the paper masks); use a `mask` with "
                         "prefill=False.")
    hooks = {name: m.hooks(model) for name, m in conditions.items()}
    settings = {**model_identity(model), "conditions": {n: [list(h) for h in m.heads]
                                                         for n, m in conditions.items()},
                "mode": mask.mask_mode, "rouge_stemmer": bool(rouge_stemmer),
                "max_new_tokens": {s: g.max_new_tokens for s, g in grids.items()}}
    log = SampleLog(f"{out}.niah.samples.jsonl", settings, required=("scores",)) if out else None
    rows: list[dict] = []
    for name, grid in grids.items():
        samples = grid.samples(model.tokenizer, model.cfg.n_ctx)
        if log is not None:
            log.check_keys(s.key for s in samples)
        for sample in tqdm(samples, desc=f"masking ({name})", disable=not progress):
            if log is not None and sample.key in log:
                rec = log.records[sample.key]
            else:
                texts = decode_conditions(model, sample.input_ids, hooks, grid.max_new_tokens)
                rec = {"key": sample.key, "answers": texts,
                       "scores": {c: niah_score(sample.needle.answer, t, rouge_stemmer)
                                  for c, t in texts.items()}}
                if log is not None:
                    log.add(rec)
            for cond, score in rec["scores"].items():
                kind, k, seed = cond.split("|")
                rows.append({"set": name, "needle": sample.needle.text, "length": sample.length,
                             "depth": sample.depth, "kind": kind, "k": int(k), "seed": int(seed),
                             "heads": head_names(conditions[cond].heads), "score": score,
                             "answer": rec["answers"][cond]})
            if out:
                atomic_write_text(f"{out}.niah.csv", pd.DataFrame(rows).to_csv(index=False))
    return pd.DataFrame(rows)


def patch_grids(model, grids: Mapping[str, Grid], groups: Mapping[tuple[str, int, int], Sequence[Head]],
                *, pairs: int | None = None, pair_seed: int = 0, heads: bool = True,
                force_answer: bool = False, batch_size: int = 8, out: str | Path | None = None,
                progress: bool = True) -> pd.DataFrame:
    """Group patching of every group (both directions), the per-head map (``heads``) and direct
    logit attribution on up to ``pairs`` prompts per needle set that the model answers
    (:func:`rhlens.patching.patch_samples`, patches at the answer's decode positions). Rows as
    :data:`rhlens.patching.COLUMNS` plus ``set``; the group's detector (or ``control``) is the
    ``kind`` column. ``{out}.patch.csv`` and its resume log ``{out}.patch.samples.jsonl``."""
    from .patching import COLUMNS

    settings = {**model_identity(model), "groups": {_name(g): [list(h) for h in hs]
                                                    for g, hs in groups.items()},
                "pairs": pairs, "pair_seed": pair_seed, "heads": heads,
                "force_answer": force_answer, "positions": "answer",
                "max_new_tokens": {s: g.max_new_tokens for s, g in grids.items()}}
    log = SampleLog(f"{out}.patch.samples.jsonl", settings, required=("rows",)) if out else None
    rows: list[dict] = []
    for name, grid in grids.items():
        samples = patch_samples(grid, model.tokenizer, pairs, seed=pair_seed, n_ctx=model.cfg.n_ctx)
        if log is not None:
            log.check_keys(s.key for s in samples)
        for i, sample in enumerate(tqdm(samples, desc=f"patching ({name})", disable=not progress)):
            if log is not None and sample.key in log:
                rec = log.records[sample.key]
            else:
                rec = {"key": sample.key, "rows": [], "skipped": ""}
                try:
                    pair = make_pair(model, sample, max_new_tokens=grid.max_new_tokens,
                                     force_answer=force_answer)
                    run = run_pair(model, pair, positions="answer")
                    rec["rows"] = pair_rows(model, run, groups, heads=heads, dla=True,
                                            batch_size=batch_size)
                except NoAnswerError as err:
                    rec["skipped"] = str(err)
                if log is not None:
                    log.add(rec)
            rows += [{"set": name, "pair": i, "answer": sample.needle.answer,
                      "length": sample.length, "depth": sample.depth, **r} for r in rec["rows"]]
            if out:
                atomic_write_text(f"{out}.patch.csv", pd.DataFrame(
                    rows, columns=["set", *COLUMNS]).to_csv(index=False, float_format="%.6g"))
    return pd.DataFrame(rows, columns=["set", *COLUMNS])


# --------------------------------------------------------------------------- summaries


def _ci(values, n_boot: int, seed: int) -> tuple[float, float, float]:
    return bootstrap_ci(list(values), n_boot=n_boot, seed=seed)


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
        s, d = _ci(part.score, n_boot, seed), _ci(part.base - part.score, n_boot, seed)
        out.append({"set": name, "kind": kind, "k": k, "prompts": len(part), "niah": s[0],
                    "niah_lo": s[1], "niah_hi": s[2], "drop": d[0], "drop_lo": d[1], "drop_hi": d[2]})
    return pd.DataFrame(out)


def patching_summary(patch: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:func:`rhlens.patching.group_summary` per needle set: per direction, kind (a detector,
    ``control`` or ``none``) and K, the fraction moved with its interval over pairs."""
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
                "fraction": col, "fraction_lo": f"{col}_lo", "fraction_hi": f"{col}_hi",
                "pairs": "pairs"})[["set", "kind", "k", "pairs", col, f"{col}_lo", f"{col}_hi"]]
            m = m.merge(part if col == "restored" else part.drop(columns="pairs"),
                        on=["set", "kind", "k"], how="left")
    order = {d: i for i, d in enumerate([*DETECTORS, "control"])}
    return m.sort_values(["set", "k", "kind"], key=lambda c: c.map(order) if c.name == "kind"
                         else c, ignore_index=True)


def map_correlations(maps: Mapping[str, torch.Tensor], patch: pd.DataFrame, *, n_boot: int = 1000,
                     n_null: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Spearman correlation of each detector's map with the per-head patching map of each
    needle set (:func:`rhlens.patching.map_correlation`: a bootstrap interval over pairs and a
    head-shuffle null)."""
    out = []
    for name, part in patch[patch.measure == "head"].groupby("set"):
        per_pair, _ = pair_maps(part, "head")
        for d, m in maps.items():
            c = map_correlation(per_pair, m.double().nan_to_num(0.0), n_boot=n_boot,
                                n_null=n_null, seed=seed)
            out.append({"set": name, "detector": d, **c})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- one call


@dataclass
class DetectorComparison:
    """What :func:`compare_detectors` measured: the detectors' run, the head groups, and one
    row per masked prompt (``niah``) and per patched measure (``patch``)."""

    run: DetectorRun
    groups: dict[tuple[str, int, int], tuple[Head, ...]]
    niah: pd.DataFrame
    patch: pd.DataFrame

    def table(self, **kwargs) -> pd.DataFrame:
        """:func:`intervention_table`."""
        return intervention_table(self.niah, self.patch, **kwargs)

    def correlations(self, **kwargs) -> pd.DataFrame:
        """:func:`map_correlations`."""
        return map_correlations(self.run.maps, self.patch, **kwargs)


def compare_detectors(model, grid: Grid, held_out: Mapping[str, Grid], *,
                      detectors: Sequence[str] = DETECTORS, ks: Sequence[int] | None = None,
                      seeds: Sequence[int] = (0, 1, 2), threshold: float = 0.1,
                      pairs: int | None = None, heads: bool = True, mask: Mask = Mask(),
                      force_answer: bool = False, rouge_gate: float = 0.5, batch_size: int = 8,
                      out: str | Path | None = None, progress: bool = True,
                      **detect_options) -> DetectorComparison:
    """The whole comparison in one call (what ``rhlens detectors`` runs): the detectors' maps
    on ``grid`` (:func:`rhlens.detector_maps.detect_heads`), then masking and group patching of
    their top-K against shared controls on the ``held_out`` grids (``{needle set: grid}``,
    needles that ``grid`` does not use). ``ks`` default: :func:`default_ks`. With ``out`` (a
    prefix) every stage writes its files and resumes from its log."""
    used = {n.text for n in grid.needles}
    for name, g in held_out.items():
        reused = [n.text for n in g.needles if n.text in used]
        if reused:
            raise ValueError(f"held-out set {name!r} reuses the detection needle {reused[0]!r}; "
                             "test on needles the maps were not made from.")
    run = detect_heads(model, grid, detectors=detectors, rouge_gate=rouge_gate, out=out,
                       progress=progress, **detect_options)
    ks = default_ks(model.cfg.n_layers * model.cfg.n_heads) if ks is None else ks
    groups = intervention_groups(run.maps, ks, seeds, threshold=threshold)
    if out:
        atomic_write_text(f"{out}.groups.json", json.dumps({_name(g): head_names(h)
                                                            for g, h in groups.items()}, indent=1))
    if not held_out:  # the maps only
        return DetectorComparison(run, groups, pd.DataFrame(), pd.DataFrame())
    niah = mask_grids(model, held_out, groups, mask=mask, out=out, progress=progress)
    patch = patch_grids(model, held_out, groups, pairs=pairs, heads=heads,
                        force_answer=force_answer, batch_size=batch_size, out=out,
                        progress=progress)
    return DetectorComparison(run, groups, niah, patch)
