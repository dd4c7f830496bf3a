"""The detectors' maps over a NIAH grid: the run, its score files, and the maps side by side.

:func:`detect_heads` runs :func:`rhlens.detectors.detect_sample` on every prompt of a
:class:`~rhlens.grid.Grid` (resumable, a sample log per run), pools each detector over the samples
whose answer passes the ROUGE gate, and writes one score file per detector in the public format
(``{out}.{detector}.json``, values may be negative for a signed detector) with the detectors'
cards (``{out}.cards.json``); :func:`load_maps` reads them back and :func:`plot_maps` draws them.

Example::

    >>> run = detect_heads(model, Grid([500], [0.2, 0.5, 0.8], needles=2), out="runs/det")  # doctest: +SKIP
    >>> run.top_table(10)                                                                # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

from .detect import NoPassingSampleError
from .detectors import CARDS, DETECTORS, STEPS, Card, Steps, check_detectors, detect_sample
from .grid import Grid
from .heads import head_table
from .prompts import SCORE_SPANS, ScoreSpan
from .results import atomic_write_text, load_scores, scores_to_json
from .samplelog import SampleLog, model_identity
from .scoring import ScoreMode


@dataclass
class DetectorRun:
    """The outcome of :func:`detect_heads`: per detector, ``maps[d]`` ``[n_layers, n_heads]``
    (mean over the pooled samples) and ``per_sample[d]`` ``[n_pooled, n_layers, n_heads]``;
    ``records`` (one per sample) and the detectors' :data:`CARDS`."""

    maps: dict[str, torch.Tensor]
    per_sample: dict[str, torch.Tensor]
    records: list[dict]

    @property
    def cards(self) -> dict[str, Card]:
        return {d: CARDS[d] for d in self.maps}

    def top_table(self, top: int = 10):
        """Each detector's top heads side by side (``{detector}`` name, ``{detector}_value``)."""
        import pandas as pd

        cols = {}
        for d, m in self.maps.items():
            t = head_table(m).head(top)
            cols[d], cols[f"{d}_value"] = list(t.name), list(t.score.round(4))
        return pd.DataFrame(cols, index=pd.RangeIndex(1, top + 1, name="rank"))


def _pool(records: list[dict], detectors: Sequence[str], n_layers: int, n_heads: int):
    per_sample, maps = {}, {}
    for d in detectors:
        got = [r["maps"][d] for r in records if r["passed"] and r["maps"].get(d) is not None]
        per_sample[d] = (torch.tensor(got, dtype=torch.float64) if got
                         else torch.zeros(0, n_layers, n_heads, dtype=torch.float64))
        maps[d] = per_sample[d].mean(0) if got else torch.full((n_layers, n_heads), float("nan"))
    return maps, per_sample


def detect_heads(model, grid: Grid, *, detectors: Sequence[str] = DETECTORS,
                 score_span: ScoreSpan = "answer", read_span: ScoreSpan = "needle",
                 score_mode: ScoreMode = "paper", steps: Steps = "answer",
                 rouge_gate: float = 0.5, rouge_stemmer: bool = True, out: str | Path | None = None,
                 progress: bool = True) -> DetectorRun:
    """Every detector's map over ``grid``, pooled over the samples whose answer passes the
    ROUGE gate (as the retrieval score and LOCOS pool; QRHead itself does not gate, here every
    map pools the same samples so that they compare).

    Args:
        out: prefix of the files: ``{out}.{detector}.json`` (score files, rewritten atomically
            after each sample), ``{out}.cards.json`` and the resume log
            ``{out}.detect.samples.jsonl``, which refuses a run with other settings.

    Raises:
        rhlens.detect.NoPassingSampleError: no sample passed the gate.
    """
    detectors = check_detectors(detectors)
    for name, value in (("score_span", score_span), ("read_span", read_span)):
        if value not in SCORE_SPANS:
            raise ValueError(f"`{name}` must be one of {SCORE_SPANS}, got {value!r}.")
    if steps not in STEPS:
        raise ValueError(f"`steps` must be one of {STEPS}, got {steps!r}.")
    samples = grid.samples(model.tokenizer, model.cfg.n_ctx)
    settings = {**model_identity(model), "detectors": list(detectors), "score_span": score_span,
                "read_span": read_span, "mode": score_mode, "steps": steps,
                "rouge_gate": rouge_gate, "rouge_stemmer": bool(rouge_stemmer),
                "max_new_tokens": grid.max_new_tokens, "prompt": grid.prompt_style}
    log = (SampleLog(f"{out}.detect.samples.jsonl", settings, required=("maps", "rouge"))
           if out else None)
    if log is not None:
        log.check_keys(s.key for s in samples)
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    records: list[dict] = []
    for sample in tqdm(samples, desc="detectors", unit="sample", disable=not progress):
        if log is not None and sample.key in log:
            record = log.records[sample.key]
        else:
            record = detect_sample(model, sample, detectors=detectors, score_span=score_span,
                                   read_span=read_span, score_mode=score_mode, steps=steps,
                                   max_new_tokens=grid.max_new_tokens, rouge_stemmer=rouge_stemmer)
            record["passed"] = record["rouge"] > rouge_gate
            if log is not None:
                log.add(record)
        records.append(record)
        if out and any(r["passed"] for r in records):
            write_maps(out, _pool(records, detectors, *shape)[1], settings,
                       prompts=len(records), passed=sum(r["passed"] for r in records))
    if not any(r["passed"] for r in records):
        raise NoPassingSampleError(
            f"None of the {len(records)} samples passed the ROUGE-1 recall gate (> {rouge_gate});"
            " no head can be scored. Try shorter `lengths`, or a negative `rouge_gate`.")
    maps, per_sample = _pool(records, detectors, *shape)
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


def plot_maps(maps: dict[str, torch.Tensor], title: str | None = None, annotate_top: int = 3):
    """The maps side by side, layer x head, each on its own scale (a signed map centred on 0);
    each map's ``annotate_top`` best heads are named."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.3 * len(maps), 4.6), squeeze=False)
    for ax, (d, m) in zip(axes[0], maps.items()):
        m = m.double().nan_to_num(0.0)
        signed = d in CARDS and CARDS[d].signed
        lim = max(float(m.abs().max()), 1e-9)
        im = ax.imshow(m.numpy(), aspect="auto", origin="lower", interpolation="nearest",
                       cmap="RdBu_r" if signed else "viridis", vmin=-lim if signed else 0,
                       vmax=lim)
        for _, row in head_table(m).head(annotate_top).iterrows():
            ax.annotate(row["name"], (row["head"], row["layer"]), fontsize=7, ha="center",
                        va="center", color="black" if signed else "white")
        ax.set_title(d.replace("_", " ") + (f"\n({CARDS[d].unit})" if d in CARDS else ""),
                     fontsize=9)
        ax.set_xlabel("query head")
        plt.colorbar(im, ax=ax, fraction=0.08)
    axes[0, 0].set_ylabel("layer")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
