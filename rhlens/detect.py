"""Find retrieval heads: decode every NIAH sample of a grid and average the head scores.

This is the paper's detection run: needles x context lengths x depths, greedy decoding, a
retrieval score per query head per sample, and only samples whose answer has ROUGE-1 recall
above 50% kept (as the public code does).

Example::

    >>> from rhlens import load_model, detect_retrieval_heads
    >>> model = load_model("smollm2-135m")                                 # doctest: +SKIP
    >>> run = detect_retrieval_heads(model, lengths=[500, 1000], depths=[0.1, 0.5, 0.9],
    ...                              needles=2, out="scores.json")          # doctest: +SKIP
    >>> run.scores.shape                                                    # doctest: +SKIP
    torch.Size([30, 9])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .decode import greedy_decode
from .haystack import Needle, Sample, build_sample, load_haystack, load_needles
from .niah import rouge1_recall
from .results import SampleLog, atomic_write_text, model_identity, scores_to_json
from .scoring import retrieval_scores, summarize
from .validate import check_grid

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
    """

    scores: torch.Tensor
    per_sample: torch.Tensor
    records: list[dict]

    def records_frame(self):
        """The sample records as a pandas DataFrame (without the score maps)."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "scores"} for r in self.records])

    def summary(self, top: int = 10) -> dict:
        """Top heads and the shares of heads above 0.1, above 0.5 and at 0."""
        return summarize(self.scores, top)


def sample_grid(
    tokenizer,
    needles: Sequence[Needle],
    haystack: str | None,
    lengths: Sequence[int],
    depths: Sequence[float],
    n_ctx: int | None = None,
) -> list[Sample]:
    """Every (needle, length, depth) prompt, in that nesting order; ``haystack=None`` uses
    the built-in haystack. The one grid that scoring, NIAH, K sweeps and failure sweeps share.

    A grid point given twice (``lengths=[160, 160]``) is built once, so it is never counted
    twice."""
    if haystack is None:
        haystack = load_haystack(None)
    samples: dict[str, Sample] = {}
    for needle in dict.fromkeys(needles):
        for length in dict.fromkeys(lengths):
            for depth in dict.fromkeys(depths):
                sample = build_sample(tokenizer, needle, haystack, length, depth, n_ctx=n_ctx)
                samples.setdefault(sample.key, sample)
    return list(samples.values())


def score_sample(
    model, sample: Sample, mode: str = "paper", max_new_tokens: int = 32, decode_hooks=()
) -> dict:
    """Decode one sample and score every head; returns a JSON-ready record."""
    trace = greedy_decode(model, sample.input_ids, max_new_tokens, decode_hooks=decode_hooks)
    scores = retrieval_scores(trace.argmax, trace.tokens, sample.input_ids, sample.needle_span, mode)
    return {
        "key": sample.key,
        "needle": sample.needle.text,
        "length": sample.length,
        "depth": sample.depth,
        "answer": trace.text,
        "rouge": rouge1_recall(sample.needle.answer, trace.text),
        "scores": scores.tolist(),
    }


def detect_retrieval_heads(
    model,
    lengths: Sequence[int],
    depths: Sequence[float],
    needles: int | Sequence[Needle] | str | None = None,
    haystack: str | None = None,
    mode: str = "paper",
    rouge_gate: float = 0.5,
    out: str | Path | None = None,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> ScoreRun:
    """Run the detection grid and return mean retrieval scores per head.

    Args:
        model: a ``TransformerBridge`` (see :func:`rhlens.models.load_model`).
        lengths: prompt lengths in tokens.
        depths: needle depths in ``[0, 1]``.
        needles: a count of built-in needles, a list of :class:`Needle`, or a needle file.
        haystack: haystack text (default: :func:`rhlens.haystack.default_haystack`).
        mode: ``"paper"`` or ``"sum"`` (see :mod:`rhlens.scoring`).
        rouge_gate: keep samples whose answer's ROUGE-1 recall is *above* this (0.5 in the
            paper's code); pass a negative value to keep every sample.
        out: score file to write (and ``<out>.samples.jsonl`` to resume from).

    Raises:
        NoPassingSampleError: when no sample passes the gate (no empty score file is written).
    """
    if isinstance(needles, (int, type(None))):
        needle_list = load_needles(None, needles)
    elif isinstance(needles, (str, Path)):
        needle_list = load_needles(needles)
    else:
        needle_list = list(needles)
    check_grid(lengths, depths, max_new_tokens, model.cfg.n_ctx)
    samples = sample_grid(model.tokenizer, needle_list, haystack, lengths, depths, model.cfg.n_ctx)
    settings = {
        **model_identity(model),
        "mode": mode,
        "rouge_gate": rouge_gate,
        "max_new_tokens": max_new_tokens,
    }
    log = SampleLog(f"{out}.samples.jsonl", settings, required=RECORD_FIELDS) if out else None
    if log is not None:
        log.check_keys(s.key for s in samples)
    records: list[dict] = []
    bar = tqdm(samples, desc="retrieval score", unit="sample", disable=not progress)
    for sample in bar:
        if log is not None and sample.key in log:
            record = log.records[sample.key]
        else:
            record = score_sample(model, sample, mode, max_new_tokens)
            record["passed"] = record["rouge"] > rouge_gate
            if log is not None:
                log.add(record)
        records.append(record)
        passed = [r for r in records if r["passed"]]
        bar.set_postfix(passed=f"{len(passed)}/{len(records)}", last=f"{record['rouge']:.2f}")
        if out and passed:
            _write_scores(out, passed, model.cfg.n_layers, model.cfg.n_heads)
    passed = [r for r in records if r["passed"]]
    if not passed:
        answers = "\n".join(f"  {r['length']}/{r['depth']}: {r['answer']!r}" for r in records[:8])
        raise NoPassingSampleError(
            f"None of the {len(records)} samples passed the ROUGE-1 recall gate "
            f"(> {rouge_gate}), so no head can be scored. The model's answers:\n{answers}\n"
            "Try shorter --lengths, a model that passes needle-in-a-haystack at these "
            "lengths, or --rouge-gate -1 to score every sample anyway."
        )
    per_sample = torch.tensor([r["scores"] for r in passed])
    return ScoreRun(scores=per_sample.mean(0), per_sample=per_sample, records=records)


def _write_scores(out, passed: list[dict], n_layers: int, n_heads: int) -> None:
    maps = [torch.tensor(r["scores"]) for r in passed]
    atomic_write_text(out, json.dumps(scores_to_json(maps, n_layers, n_heads)))
