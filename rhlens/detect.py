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

Example::

    >>> from rhlens import Grid, load_model, detect_retrieval_heads
    >>> model = load_model("smollm2-135m")                                 # doctest: +SKIP
    >>> grid = Grid(lengths=[500, 1000], depths=[0.1, 0.5, 0.9], needles=2)
    >>> run = detect_retrieval_heads(model, grid, out="scores.json")       # doctest: +SKIP
    >>> run.scores.shape                                                    # doctest: +SKIP
    torch.Size([30, 9])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .answers import rouge1_recall
from .card import new_card, resume_card, with_samples, write_card
from .decode import greedy_decode
from .grid import Grid
from .prompts import SCORE_SPANS, Sample, ScoreSpan
from .heads import summarize
from .results import atomic_write_text, scores_to_json
from .samplelog import SampleLog, model_identity
from .scoring import ScoreMode, retrieval_scores
from .shard import Shard
from .stopping import UntilStable
from .uncertainty import LEVEL, N_RESAMPLES, SEED, HeadIntervals, head_intervals

#: Fields every logged sample of a score run has (a record lacking one is recomputed).
RECORD_FIELDS = ("key", "needle", "length", "depth", "answer", "rouge", "scores", "passed")


class NoPassingSampleError(RuntimeError):
    """No sample's answer passed the ROUGE gate, so there is nothing to average."""


@dataclass
class ScoreRun:
    """The outcome of :func:`detect_retrieval_heads`.

    Attributes:
        scores: ``[n_layers, n_heads]`` mean score over the samples that passed the gate.
        per_sample: ``[n_passed, n_layers, n_heads]``.
        records: one dict per sample (``needle``, ``length``, ``depth``, ``answer``,
            ``rouge``, ``passed``...), also as ``records_frame()``.
        card: the run's map card (:mod:`rhlens.card`), as written beside ``out``.
        stopped: with ``until_stable``, where the run stopped and why
            (:meth:`rhlens.stopping.UntilStable.outcome`).
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

    def summary(self, top: int = 10, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
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

    def intervals(self, k: int = 10, **options) -> HeadIntervals:
        """Bootstrap intervals of every head over the passed samples and the top-``k`` set's
        stability (:func:`rhlens.uncertainty.head_intervals`; ``n_resamples``, ``seed``,
        ``level``)."""
        return head_intervals(self.per_sample, k, **options)


def score_sample(
    model, sample: Sample, *, score_mode: ScoreMode = "paper", max_new_tokens: int = 32,
    mask=None, score_span: ScoreSpan = "answer", rouge_stemmer: bool = True,
) -> dict:
    """Decode one sample (with ``mask``, a :class:`rhlens.ablation.Mask`, if given) and score
    every head over ``sample.span(score_span)``; returns a JSON-ready record whose ``rouge`` is
    the answer's ROUGE-1 recall (stemmed unless ``rouge_stemmer=False``)."""
    span = sample.span(score_span)
    trace = greedy_decode(model, sample.input_ids, max_new_tokens, mask=mask)
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


def detect_retrieval_heads(
    model,
    grid: Grid,
    *,
    score_mode: ScoreMode = "paper",
    rouge_gate: float = 0.5,
    out: str | Path | None = None,
    progress: bool = True,
    shard: Shard | None = None,
    score_span: ScoreSpan = "answer",
    rouge_stemmer: bool = True,
    until_stable: UntilStable | None = None,
) -> ScoreRun:
    """Run the detection grid and return mean retrieval scores per head.

    Args:
        model: a ``TransformerBridge`` (see :func:`rhlens.models.load_model`).
        grid: the needles, lengths, depths, haystack and token budget (:class:`Grid`).
        score_mode: ``"paper"`` or ``"sum"`` (see :mod:`rhlens.scoring`).
        score_span: ``"answer"`` (default: the needle's answer span, as the public code) or
            ``"needle"`` (the whole needle sentence).
        rouge_gate: keep samples whose answer's ROUGE-1 recall is *above* this (0.5 in the
            paper's code); pass a negative value to keep every sample.
        rouge_stemmer: stem words before ROUGE-1, as the public code (default); ``False`` for
            the unstemmed variant.
        out: score file to write (and ``<out>.samples.jsonl`` to resume from).
        shard: run only this shard's samples (:meth:`rhlens.shard.Shard.select`); ``out`` is
            then the shard's own file (:meth:`~rhlens.shard.Shard.output`), and its log names
            the shard, for :func:`rhlens.shard.merge_shards`.
        until_stable: take the grid's prompts in a seeded order and stop once the top-K set
            is stable (:class:`rhlens.stopping.UntilStable`); not with ``shard``.

    With ``out``, the map card ``<out>.card.json`` (:mod:`rhlens.card`) is written beside the
    score file, and rewritten with it.

    Raises:
        NoPassingSampleError: when no sample passes the gate (no empty score file is written).
            A shard without a passing sample raises nothing (its ``scores`` are NaN): the
            merge of all shards decides.
    """
    if score_span not in SCORE_SPANS:
        raise ValueError(f"score_span must be one of {SCORE_SPANS}, got {score_span!r}.")
    samples = grid.samples(model.tokenizer, model.cfg.n_ctx)
    n_grid = len(samples)
    part = None
    if shard is not None and until_stable is not None:
        raise ValueError("`until_stable` needs every sample in one process; drop `shard`.")
    if shard is not None:
        part = shard.part([s.key for s in samples], "score")
        samples = shard.select(samples)
    if until_stable is not None:
        samples = until_stable.order(samples)
    settings = {
        **model_identity(model),
        "mode": score_mode,
        "span": score_span,
        "rouge_gate": rouge_gate,
        "rouge_stemmer": bool(rouge_stemmer),
        "max_new_tokens": grid.max_new_tokens,
        "prompt": grid.prompt_style,
    }
    log = (SampleLog(f"{out}.samples.jsonl", settings, required=RECORD_FIELDS, part=part)
           if out else None)
    if log is not None:
        log.check_keys(s.key for s in samples)
    card = new_card(model, grid, settings, shard=part,
                    seed=until_stable.seed if until_stable is not None else None)
    if out:
        card = resume_card(card, out)
    records: list[dict] = []
    bar = tqdm(samples, desc="retrieval score", unit="sample", disable=not progress)
    for sample in bar:
        if log is not None and sample.key in log:
            record = log.records[sample.key]
        else:
            record = score_sample(model, sample, score_mode=score_mode,
                                  max_new_tokens=grid.max_new_tokens, score_span=score_span,
                                  rouge_stemmer=rouge_stemmer)
            record["passed"] = record["rouge"] > rouge_gate
            if log is not None:
                log.add(record)
        records.append(record)
        passed = [r for r in records if r["passed"]]
        bar.set_postfix(passed=f"{len(passed)}/{len(records)}", last=f"{record['rouge']:.2f}")
        if out and passed:
            _write_scores(out, passed, model.cfg.n_layers, model.cfg.n_heads)
        if until_stable is not None:
            card["until_stable"] = until_stable.outcome(records, n_grid)
        stop = until_stable is not None and card["until_stable"]["reason"] == "stable"
        if out and (passed or shard is not None):
            write_card(out, card, records)
        if stop:
            bar.update(1)  # the bar counts a sample when the next one is asked for
            break
    bar.close()
    card = with_samples(card, records)
    stopped = card["until_stable"]
    passed = [r for r in records if r["passed"]]
    if not passed and shard is not None:
        shape = (model.cfg.n_layers, model.cfg.n_heads)
        return ScoreRun(scores=torch.full(shape, float("nan")), per_sample=torch.zeros(0, *shape),
                        records=records, card=card)
    if not passed:
        answers = "\n".join(f"  {r['length']}/{r['depth']}: {r['answer']!r}" for r in records[:8])
        raise NoPassingSampleError(
            f"None of the {len(records)} samples passed the ROUGE-1 recall gate "
            f"(> {rouge_gate}), so no head can be scored. The model's answers:\n{answers}\n"
            "Try shorter `lengths`, a model that passes needle-in-a-haystack at these "
            "lengths, or a negative `rouge_gate` (e.g. -1) to score every sample anyway."
        )
    per_sample = torch.tensor([r["scores"] for r in passed])
    return ScoreRun(scores=per_sample.mean(0), per_sample=per_sample, records=records,
                    card=card, stopped=stopped)


def _write_scores(out, passed: list[dict], n_layers: int, n_heads: int) -> None:
    maps = [torch.tensor(r["scores"]) for r in passed]
    atomic_write_text(out, json.dumps(scores_to_json(maps, n_layers, n_heads)))
