"""The detectors' maps over a NIAH grid: the run and its score files.

A detection run is configured by a :class:`DetectorConfig` (the grid, which detectors, which
spans and steps they read, the ROUGE gate), validated when it is made, and run by
:class:`DetectorSweep`, the resumable sweep of :mod:`rhlens.run.sweep`: every prompt goes
through :func:`rhlens.score.detectors.detect_sample` (one decode, plus query focus's own
prefill), is logged (``{out}.detect.samples.jsonl``), and each detector's map, pooled over the
samples whose answer passes the ROUGE gate, is rewritten after each sample as a score file in
the public format (``{out}.{detector}.json``; a signed detector's values may be negative) with
the detectors' cards (``{out}.cards.json``). :func:`detect_heads` does both;
:func:`load_maps` reads the maps back, :func:`rhlens.viz.detectors.plot_maps` draws them.

Example::

    >>> config = DetectorConfig(Grid([500], [0.2, 0.5, 0.8], needles=2))          # doctest: +SKIP
    >>> run = detect_heads(model, config, out="runs/det")                          # doctest: +SKIP
    >>> run.top_table(10)                                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import NoPassingSampleError, UsageError
from ..niah.grid import Grid
from ..niah.prompts import SCORE_SPANS, Sample, ScoreSpan
from ..run.results import atomic_write_text, load_scores, scores_to_json
from ..run.sweep import Sweep
from .detectors import CARDS, DETECTORS, STEPS, Card, Steps, check_detectors, detect_sample
from .heads import head_table
from .scoring import SCORE_MODES, ScoreMode

#: Fields every logged sample of a detection run has (a record lacking one is recomputed).
RECORD_FIELDS = ("key", "needle", "length", "depth", "answer", "rouge", "steps", "maps", "passed")


@dataclass(frozen=True)
class DetectorConfig:
    """What a detection run measures.

    Attributes:
        grid: the prompts (needles, lengths, depths, haystack, token budget).
        detectors: some of :data:`~rhlens.score.detectors.DETECTORS` (all by default).
        score_mode: how ``copy_paste`` counts copies (:mod:`rhlens.score.scoring`).
        score_span: the span ``copy_paste`` reads (the answer, as ``rhlens score``).
        read_span: the span the other three read (the needle sentence: QRHead's relevant
            span and LOCOS's needle positions).
        steps: the decode steps ``logit_contribution`` and ``needle_attention`` average over.
        rouge_gate: maps pool the samples whose ROUGE-1 recall is above this; negative keeps
            every sample.
        rouge_stemmer: stemmed ROUGE-1, as the public code (default).

    All of it but the grid's prompts is the run's identity (:func:`rhlens.run.sweep.run_identity`).
    """

    grid: Grid
    detectors: tuple[str, ...] = DETECTORS
    score_mode: ScoreMode = field(default="paper", metadata={"identity": "mode"})
    score_span: ScoreSpan = "answer"
    read_span: ScoreSpan = "needle"
    steps: Steps = "answer"
    rouge_gate: float = 0.5
    rouge_stemmer: bool = True

    def __post_init__(self):
        if not isinstance(self.grid, Grid):
            raise UsageError(f"grid must be a Grid, got {type(self.grid).__name__}.", arg="grid")
        object.__setattr__(self, "detectors", check_detectors(self.detectors))
        if self.score_mode not in SCORE_MODES:
            raise UsageError(f"score_mode must be one of {SCORE_MODES}, got "
                             f"{self.score_mode!r}.", arg="score_mode")
        for name in ("score_span", "read_span"):
            if getattr(self, name) not in SCORE_SPANS:
                raise UsageError(f"{name} must be one of {SCORE_SPANS}, got "
                                 f"{getattr(self, name)!r}.", arg=name)
        if self.steps not in STEPS:
            raise UsageError(f"steps must be one of {STEPS}, got {self.steps!r}.", arg="steps")
        gate = self.rouge_gate
        if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not math.isfinite(gate):
            raise UsageError(f"rouge_gate must be a finite number, got {gate!r}.", arg="rouge_gate")
        if gate >= 1:
            raise UsageError(f"rouge_gate must be below 1, got {gate}; -1 keeps every sample.",
                             arg="rouge_gate")
        object.__setattr__(self, "rouge_gate", float(gate))
        object.__setattr__(self, "rouge_stemmer", bool(self.rouge_stemmer))


@dataclass
class DetectorRun:
    """The outcome of :func:`detect_heads`: per detector, ``maps[d]`` ``[n_layers, n_heads]``
    (mean over the pooled samples) and ``per_sample[d]`` ``[n_pooled, n_layers, n_heads]``;
    ``records`` (one per sample)."""

    maps: dict[str, torch.Tensor]
    per_sample: dict[str, torch.Tensor]
    records: list[dict]

    @property
    def cards(self) -> dict[str, Card]:
        """The detectors' :data:`~rhlens.score.detectors.CARDS`."""
        return {d: CARDS[d] for d in self.maps}

    def top_table(self, top: int = 10):
        """Each detector's top heads side by side (``{detector}`` name, ``{detector}_value``)."""
        import pandas as pd

        cols = {}
        for d, m in self.maps.items():
            t = head_table(m).head(top)
            cols[d], cols[f"{d}_value"] = list(t.name), list(t.score.round(4))
        return pd.DataFrame(cols, index=pd.RangeIndex(1, top + 1, name="rank"))


def pool(records: Sequence[dict], detectors: Sequence[str], n_layers: int, n_heads: int
         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(maps, per_sample)`` of the records that passed the gate (a detector's map is NaN
    while none of them has it)."""
    per_sample, maps = {}, {}
    for d in detectors:
        got = [r["maps"][d] for r in records if r["passed"] and r["maps"].get(d) is not None]
        per_sample[d] = (torch.tensor(got, dtype=torch.float64) if got
                         else torch.zeros(0, n_layers, n_heads, dtype=torch.float64))
        maps[d] = per_sample[d].mean(0) if got else torch.full((n_layers, n_heads), float("nan"))
    return maps, per_sample


class DetectorSweep(Sweep):
    """A detection run as a resumable sweep: one record per prompt (every detector's map,
    the answer, its ROUGE-1 recall and whether it passed the gate). ``prefix`` names every
    file; the sample log is ``{prefix}.detect.samples.jsonl``. (Not split into shards.)"""

    kind = "score"
    required = RECORD_FIELDS
    label = "detectors"
    config: DetectorConfig

    def __init__(self, model, config: DetectorConfig, *, prefix: str | Path | None = None,
                 progress: bool = True):
        super().__init__(model, config, out=None if prefix is None else f"{prefix}.detect",
                         progress=progress)
        self.prefix = prefix

    def measure(self, sample: Sample) -> dict:
        c = self.config
        record = detect_sample(self.model, sample, detectors=c.detectors, score_span=c.score_span,
                               read_span=c.read_span, score_mode=c.score_mode, steps=c.steps,
                               max_new_tokens=c.grid.max_new_tokens, rouge_stemmer=c.rouge_stemmer)
        record["passed"] = record["rouge"] > c.rouge_gate
        return record

    def status(self, records: Sequence[dict]) -> dict[str, str]:
        return {"passed": f"{sum(bool(r['passed']) for r in records)}/{len(records)}"}

    def write(self, records: Sequence[dict], positions: Sequence[int]) -> None:
        if self.prefix is None or not any(r["passed"] for r in records):
            return
        shape = (self.model.cfg.n_layers, self.model.cfg.n_heads)
        # the identity taken when the run began: it hashes every weight, too costly per sample
        write_maps(self.prefix, pool(records, self.config.detectors, *shape)[1], self.settings,
                   prompts=len(records), passed=sum(bool(r["passed"]) for r in records))


def detect_heads(model, config: DetectorConfig | Grid, *, out: str | Path | None = None,
                 progress: bool = True, **options: Any) -> DetectorRun:
    """Every detector's map over the grid, pooled over the samples whose answer passes the
    ROUGE gate (as the retrieval score and LOCOS pool; QRHead itself does not gate, here every
    map pools the same samples so that they compare).

    Args:
        config: a :class:`DetectorConfig`, or a :class:`Grid` and the config's other fields as
            keywords.
        out: prefix of the files: ``{out}.{detector}.json`` (score files, rewritten atomically
            after each sample), ``{out}.cards.json`` and the resume log
            ``{out}.detect.samples.jsonl``, which refuses a run with other settings.

    Raises:
        NoPassingSampleError: no sample passed the gate.
    """
    if isinstance(config, DetectorConfig):
        if options:
            raise UsageError(f"pass {', '.join(options)} in the DetectorConfig, not beside it.")
    else:
        config = DetectorConfig(config, **options)
    records = DetectorSweep(model, config, prefix=out, progress=progress).run()
    if not any(r["passed"] for r in records):
        raise NoPassingSampleError(
            f"None of the {len(records)} samples passed the ROUGE-1 recall gate "
            f"(> {config.rouge_gate}); no head can be scored. Try shorter `lengths`, or a "
            "negative `rouge_gate`.")
    maps, per_sample = pool(records, config.detectors, model.cfg.n_layers, model.cfg.n_heads)
    return DetectorRun(maps, per_sample, records)


def write_maps(out: str | Path, per_sample: dict[str, torch.Tensor], settings: dict, *,
               prompts: int, passed: int) -> None:
    """``{out}.{detector}.json`` score files and ``{out}.cards.json`` (cards, the run's
    settings, how many prompts were decoded and passed the gate, and how many samples each map
    pools)."""
    for d, maps in per_sample.items():
        n_layers, n_heads = maps.shape[1:]
        atomic_write_text(f"{out}.{d}.json", json.dumps(scores_to_json(maps, n_layers, n_heads)))
    cards = {d: {**asdict(CARDS[d]), "samples": int(m.shape[0])} for d, m in per_sample.items()}
    atomic_write_text(f"{out}.cards.json", json.dumps(
        {"cards": cards, "prompts": prompts, "passed": passed, "settings": settings}, indent=1))


def load_maps(out: str | Path, detectors: Sequence[str] = DETECTORS) -> dict[str, torch.Tensor]:
    """The maps :func:`detect_heads` wrote under the prefix ``out`` (those that exist)."""
    found = {d: Path(f"{out}.{d}.json") for d in check_detectors(detectors)}
    found = {d: p for d, p in found.items() if p.exists()}
    if not found:
        raise FileNotFoundError(f"No detector maps {out}.<detector>.json; make them with "
                                "`rhlens detectors`.")
    return {d: load_scores(p, signed=CARDS[d].signed).double() for d, p in found.items()}
