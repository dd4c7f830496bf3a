"""Find retrieval heads: decode every NIAH sample of a grid and average the head scores.

This is the paper's detection run: needles x context lengths x depths, greedy decoding, a
retrieval score per query head per sample, and only samples whose answer has ROUGE-1 recall
above 50% kept (as the public code does).

By default it measures what the public code that made the seven published maps measures: the
score reads the needle's *answer span* (``score_span="answer"``, the code's ``real_needle``) and
the gate uses stemmed ROUGE-1 (``rouge_stemmer=True``). ``score_span="needle"`` reads the whole
needle sentence, as the paper's prose describes it; a model that restates the question then
earns score for copying the question's words out of the needle. ``score_mode="sum"`` adds the
code's summing arithmetic, for files that compare with the published ones.

A run is configured by a :class:`ScoreConfig` (the grid and how it is scored), validated when
it is made; :class:`ScoreSweep` is the resumable sweep (:mod:`rhlens.run.sweep`) that runs it,
and :func:`detect_retrieval_heads` the one call that does both. Beside its score file the run
keeps a map card of what made it (:mod:`rhlens.run.card`); :meth:`ScoreRun.summary` gives each
top head a bootstrap interval (:mod:`rhlens.score.uncertainty`), and ``until_stable`` stops the
run once its top-K set is stable (:mod:`rhlens.score.stopping`).

Example::

    >>> from rhlens.niah.grid import Grid
    >>> from rhlens.models.loading import load_model
    >>> from rhlens.score.detect import detect_retrieval_heads
    >>> model = load_model("smollm2-135m")                                 # doctest: +SKIP
    >>> grid = Grid(lengths=[500, 1000], depths=[0.1, 0.5, 0.9], needles=2)
    >>> run = detect_retrieval_heads(model, grid, out="scores.json")       # doctest: +SKIP
    >>> run.scores.shape                                                    # doctest: +SKIP
    torch.Size([30, 9])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import NoPassingSampleError, UsageError
from ..niah.answers import rouge1_recall
from ..niah.grid import Grid
from ..niah.prompts import SCORE_SPANS, Sample, ScoreSpan
from ..run.batch import greedy_decode_batch
from ..run.card import new_card, resume_card, with_samples, write_card
from ..run.decode import DecodeTrace, greedy_decode
from ..run.shard import Shard
from ..run.sweep import Sweep
from ..validate import BatchSize
from ..validate import batch_size as check_batch_size
from .bootstrap import LEVEL, N_BOOT
from .heads import summarize
from .scoring import SCORE_MODES, ScoreMode, retrieval_scores
from .stopping import UntilStable
from .uncertainty import SEED, HeadIntervals, head_intervals

__all__ = ["RECORD_FIELDS", "ScoreConfig", "ScoreRun", "ScoreSweep",
           "detect_retrieval_heads", "score_sample", "score_trace"]

#: Fields every logged sample of a score run has (a record lacking one is recomputed).
RECORD_FIELDS = ("key", "needle", "length", "depth", "answer", "rouge", "scores", "passed")


@dataclass(frozen=True)
class ScoreConfig:
    """What a detection run measures: the prompts and how they are scored.

    Attributes:
        grid: the needles, lengths, depths, haystack and token budget (:class:`Grid`).
        score_mode: ``"paper"`` or ``"sum"`` (see :mod:`rhlens.score.scoring`).
        score_span: ``"answer"`` (default: the needle's answer span, as the public code) or
            ``"needle"`` (the whole needle sentence).
        rouge_gate: keep samples whose answer's ROUGE-1 recall is *above* this (0.5 in the
            paper's code); a negative value keeps every sample.
        rouge_stemmer: stem words before ROUGE-1, as the public code (default); ``False`` for
            the unstemmed variant.
        until_stable: take the grid's prompts in a seeded order and stop once the top-K set
            is stable (:class:`~rhlens.score.stopping.UntilStable`); ``None``: every prompt.
        batch_size: decode up to this many prompts of one length at once
            (:func:`rhlens.run.batch.greedy_decode_batch`; 1: one at a time); ``"auto"``
            (default) chooses per length from the device
            (:func:`rhlens.run.batch.auto_batch_size`).

    All of it but the grid's prompts, ``until_stable`` and ``batch_size`` is the run's identity
    (:func:`rhlens.run.sweep.run_identity`), under the names the sample log has always used
    (``mode``, ``span``): ``until_stable`` chooses which samples a run takes, not what any of
    them scores, so a run that stopped resumes under a stricter rule, or none; ``batch_size``
    changes how fast the samples come, not what they are, so a run resumes under any batch size.

    >>> ScoreConfig(Grid([160], [0.5], needles=1), rouge_gate=1.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rhlens.errors.UsageError: rouge_gate must be below 1 (a sample passes when ...), got 1.5; ...
    """

    grid: Grid
    score_mode: ScoreMode = field(default="paper", metadata={"identity": "mode"})
    score_span: ScoreSpan = field(default="answer", metadata={"identity": "span"})
    rouge_gate: float = 0.5
    rouge_stemmer: bool = True
    until_stable: UntilStable | None = field(default=None, metadata={"identity": False})
    # Not identity: each batched trace is the one its prompt gets alone (tests/run/test_batch.py),
    # so the records, the log and the score file are the same under every batch size.
    batch_size: BatchSize = field(default="auto", metadata={"identity": False})

    def __post_init__(self):
        if not isinstance(self.grid, Grid):
            raise UsageError(f"grid must be a Grid, got {type(self.grid).__name__}.", arg="grid")
        if self.score_mode not in SCORE_MODES:
            raise UsageError(f"score_mode must be one of {SCORE_MODES}, got "
                             f"{self.score_mode!r}.", arg="score_mode")
        if self.score_span not in SCORE_SPANS:
            raise UsageError(f"score_span must be one of {SCORE_SPANS}, got "
                             f"{self.score_span!r}.", arg="score_span")
        gate = self.rouge_gate
        if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not math.isfinite(gate):
            raise UsageError(f"rouge_gate must be a finite number, got {gate!r}.",
                             arg="rouge_gate")
        if gate >= 1:
            raise UsageError(f"rouge_gate must be below 1 (a sample passes when its ROUGE-1 "
                             f"recall is above it), got {gate}; -1 keeps every sample.",
                             arg="rouge_gate")
        object.__setattr__(self, "rouge_gate", float(gate))
        object.__setattr__(self, "rouge_stemmer", bool(self.rouge_stemmer))
        if self.until_stable is not None and not isinstance(self.until_stable, UntilStable):
            raise UsageError("until_stable must be an UntilStable rule (e.g. UntilStable(k=10)) "
                             f"or None, got {type(self.until_stable).__name__}.",
                             arg="until_stable")
        check_batch_size(self.batch_size)


@dataclass
class ScoreRun:
    """The outcome of :func:`detect_retrieval_heads`.

    Attributes:
        scores: ``[n_layers, n_heads]`` mean score over the samples that passed the gate.
        per_sample: ``[n_passed, n_layers, n_heads]``.
        records: one dict per sample (``needle``, ``length``, ``depth``, ``answer``,
            ``rouge``, ``passed``...), also as ``records_frame()``.
        card: the run's map card (:mod:`rhlens.run.card`), as written beside ``out``.
        stopped: with ``until_stable``, where the run stopped and why
            (:meth:`rhlens.score.stopping.UntilStable.outcome`).
    """

    scores: torch.Tensor
    per_sample: torch.Tensor
    records: list[dict]
    card: dict | None = None
    stopped: dict | None = None

    def records_frame(self):
        """The sample records as a pandas DataFrame (without the score maps)."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "scores"} for r in self.records])

    def summary(self, top: int = 10, *, n_resamples: int = N_BOOT, seed: int = SEED,
                level: float = LEVEL) -> dict:
        """Top heads and the shares of heads above 0.1, above 0.5 and at 0; with passed
        samples also, from :meth:`intervals`, ``intervals`` (each top head's score, bootstrap
        interval ``low``-``high`` and share of resamples whose top ``top`` holds it), the top
        set's ``stability``, ``uncertain`` (heads whose interval crosses 0.1) and
        ``bootstrap`` (samples, resamples, seed, level)."""
        out = summarize(self.scores, top)
        if len(self.per_sample):
            iv = self.intervals(top, n_resamples=n_resamples, seed=seed, level=level)
            out.update(intervals=iv.top(), stability=iv.stability,
                       uncertain=int(iv.uncertain().sum()),
                       bootstrap={"n_samples": iv.n_samples, "n_resamples": iv.n_resamples,
                                  "seed": iv.seed, "level": iv.level})
        return out

    def intervals(self, k: int = 10, *, n_resamples: int = N_BOOT, seed: int = SEED,
                  level: float = LEVEL) -> HeadIntervals:
        """Bootstrap intervals of every head over the passed samples and the top-``k`` set's
        stability (:func:`rhlens.score.uncertainty.head_intervals`)."""
        return head_intervals(self.per_sample, k, n_resamples=n_resamples, seed=seed,
                              level=level)


def score_sample(
    model, sample: Sample, *, score_mode: ScoreMode = "paper", max_new_tokens: int = 32,
    mask=None, score_span: ScoreSpan = "answer", rouge_stemmer: bool = True,
) -> dict:
    """Decode one sample (with ``mask``, a :class:`rhlens.intervene.mask.Mask`, if given) and score
    every head over ``sample.span(score_span)``; returns a JSON-ready record whose ``rouge`` is
    the answer's ROUGE-1 recall (stemmed unless ``rouge_stemmer=False``)."""
    trace = greedy_decode(model, sample.input_ids, max_new_tokens, mask=mask)
    return score_trace(sample, trace, score_mode=score_mode, score_span=score_span,
                       rouge_stemmer=rouge_stemmer)


def score_trace(sample: Sample, trace: DecodeTrace, *, score_mode: ScoreMode = "paper",
                score_span: ScoreSpan = "answer", rouge_stemmer: bool = True) -> dict:
    """The record :func:`score_sample` makes of ``sample``'s decode ``trace`` (alone or from a
    batch, :func:`rhlens.run.batch.greedy_decode_batch`)."""
    span = sample.span(score_span)
    scores = retrieval_scores(trace.argmax, trace.tokens, sample.input_ids, span, score_mode)
    return {
        "key": sample.key,
        "needle": sample.needle.text,
        "length": sample.length,
        "depth": sample.depth,
        "answer": trace.text,
        "rouge": rouge1_recall(sample.needle.answer, trace.text, rouge_stemmer),
        "scores": scores.tolist(),
    }


class ScoreSweep(Sweep):
    """The detection run as a resumable sweep: each sample decoded, scored, and gated; with
    ``until_stable``, the prompts in its seeded order until the top-K set is stable. Beside its
    score file it keeps the map card (:mod:`rhlens.run.card`) in step."""

    kind = "score"
    required = RECORD_FIELDS
    label = "retrieval score"
    config: ScoreConfig

    def __init__(self, model, config: ScoreConfig, **kwargs: Any):
        super().__init__(model, config, **kwargs)
        self.batch_size = config.batch_size
        if self.shard is not None and config.until_stable is not None:
            raise UsageError("until_stable needs every sample of the run in one process; drop "
                             "the shard (or until_stable).", arg="until_stable")
        self.n_grid = 0
        #: where an ``until_stable`` run stands (:meth:`UntilStable.outcome`), after each sample
        self.stopped: dict | None = None
        self._card: dict | None = None

    def samples(self) -> list[Sample]:
        every = super().samples()
        self.n_grid = len(every)
        rule = self.config.until_stable
        return every if rule is None else rule.order(every)

    def done(self, records: Sequence[dict]) -> bool:
        rule = self.config.until_stable
        if rule is None:
            return False
        self.stopped = rule.outcome(records, self.n_grid)
        return self.stopped["reason"] == "stable"

    def card(self) -> dict:
        """The run's map card without its sample counts (made once, when the run has started:
        it needs the run's settings; a card already beside ``out`` of the same run lends it
        the versions its samples were made under)."""
        if self._card is None:
            rule = self.config.until_stable
            card = new_card(self.model, self.config.grid, self.settings, shard=self.part,
                            seed=rule.seed if rule is not None else None)
            self._card = resume_card(card, self.out) if self.out else card
        return {**self._card, "until_stable": self.stopped}

    def write(self, records: Sequence[dict], positions: Sequence[int]) -> None:
        super().write(records, positions)
        # a shard's card is written even before a sample passes: the merge reads it
        if self.out and (self.shard is not None or any(r["passed"] for r in records)):
            write_card(self.out, self.card(), records)

    def measure(self, sample: Sample) -> dict:
        c = self.config
        record = score_sample(self.model, sample, score_mode=c.score_mode,
                              max_new_tokens=c.grid.max_new_tokens, score_span=c.score_span,
                              rouge_stemmer=c.rouge_stemmer)
        record["passed"] = record["rouge"] > c.rouge_gate
        return record

    def measure_batch(self, samples: Sequence[Sample]) -> list[dict]:
        c = self.config
        traces = greedy_decode_batch(self.model, [s.input_ids for s in samples],
                                     c.grid.max_new_tokens)
        records = []
        for sample, trace in zip(samples, traces):
            record = score_trace(sample, trace, score_mode=c.score_mode,
                                 score_span=c.score_span, rouge_stemmer=c.rouge_stemmer)
            record["passed"] = record["rouge"] > c.rouge_gate
            records.append(record)
        return records

    def status(self, records: Sequence[dict]) -> dict[str, str]:
        passed = sum(bool(r["passed"]) for r in records)
        return {"passed": f"{passed}/{len(records)}", "last": f"{records[-1]['rouge']:.2f}"}


def detect_retrieval_heads(
    model,
    config: ScoreConfig | Grid,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    shard: Shard | None = None,
    **options: Any,
) -> ScoreRun:
    """Run the detection grid and return mean retrieval scores per head.

    Args:
        model: a ``TransformerBridge`` (see :func:`rhlens.models.loading.load_model`).
        config: a :class:`ScoreConfig`, or a :class:`Grid` and the config's other fields as
            keywords (``score_mode``, ``score_span``, ``rouge_gate``, ``rouge_stemmer``,
            ``until_stable``, ``batch_size``).
        out: score file to write (and ``<out>.samples.jsonl`` to resume from, and its map card
            ``<out>.card.json``, :mod:`rhlens.run.card`).
        shard: run only this shard's samples (:meth:`rhlens.run.shard.Shard.select`); ``out``
            is then the shard's own file (:meth:`~rhlens.run.shard.Shard.output`), and its log
            names the shard, for :func:`rhlens.run.merge.merge_shards`. Not with
            ``until_stable``.

    Raises:
        NoPassingSampleError: when no sample passes the gate (no empty score file is written).
            A shard without a passing sample raises nothing (its ``scores`` are NaN): the
            merge of all shards decides.
    """
    if isinstance(config, ScoreConfig):
        if options:
            raise UsageError(f"pass {', '.join(options)} in the ScoreConfig, not beside it.")
    else:
        config = ScoreConfig(config, **options)
    sweep = ScoreSweep(model, config, out=out, shard=shard, progress=progress)
    records = sweep.run()
    card = with_samples(sweep.card(), records)
    passed = [r for r in records if r["passed"]]
    if not passed and shard is not None:
        shape = (model.cfg.n_layers, model.cfg.n_heads)
        return ScoreRun(scores=torch.full(shape, float("nan")), per_sample=torch.zeros(0, *shape),
                        records=records, card=card)
    if not passed:
        answers = "\n".join(f"  {r['length']}/{r['depth']}: {r['answer']!r}" for r in records[:8])
        raise NoPassingSampleError(
            f"None of the {len(records)} samples passed the ROUGE-1 recall gate "
            f"(> {config.rouge_gate}), so no head can be scored. The model's answers:\n{answers}\n"
            "Try shorter `lengths`, a model that passes needle-in-a-haystack at these "
            "lengths, or a negative `rouge_gate` (e.g. -1) to score every sample anyway."
        )
    per_sample = torch.tensor([r["scores"] for r in passed])
    return ScoreRun(scores=per_sample.mean(0), per_sample=per_sample, records=records,
                    card=card, stopped=sweep.stopped)
