"""Needle-in-a-haystack grids with heads masked, and the sweep over the number of masked heads.

:func:`run_niah` decodes every prompt of a :class:`~rhlens.grid.Grid` with a
:class:`~rhlens.ablation.Mask` (empty: the unmasked model) and scores the answer as the paper
does (ROUGE-1 recall x 100 of the needle's answer span). Results go to a CSV (rewritten
atomically after every sample) and to a resumable sample log. :func:`niah_heatmap` draws the
classic depth x length figure.

:func:`k_sweep` masks the top-K heads and K random *non-retrieval* heads (several seeds) on the
same prompts, for each K; :func:`k_curve` summarises it (random: mean and spread over seeds)
and :func:`plot_k_curve` draws it.

Masking runs should use needles that were not used to compute the scores
(:func:`rhlens.grid.masking_needles`).

Example::

    >>> grid = Grid([600], [0.2, 0.5, 0.8], needles=held_out)                       # doctest: +SKIP
    >>> df = run_niah(model, grid, Mask.top(scores, 13))                              # doctest: +SKIP
    >>> df[["needle", "length", "depth", "score", "answer"]]                         # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch
from tqdm.auto import tqdm

from .mask import Mask
from ..niah.answers import niah_score
from ..run.decode import greedy_decode
from ..niah.grid import Grid
from ..score.heads import head_names
from ..run.results import atomic_write_text
from ..run.samplelog import SampleLog, model_identity, tensor_digest
from ..run.shard import Shard

COLUMNS = ["needle", "length", "depth", "score", "answer"]

#: Fields every logged NIAH sample has (a record lacking one is recomputed).
ROW_FIELDS = ("key", "needle", "length", "depth", "score", "answer", "expected")


def run_niah(
    model,
    grid: Grid,
    mask: Mask = Mask(),
    *,
    out: str | Path | None = None,
    progress: bool = True,
    extra: dict | None = None,
    shard: Shard | None = None,
    rouge_stemmer: bool = True,
) -> pd.DataFrame:
    """NIAH over ``grid`` with ``mask`` applied.

    Args:
        grid: needles x lengths x depths, haystack and token budget.
        mask: the heads to mask and how (default: none; the paper masks decode steps only).
        out: CSV path; ``<out>.samples.jsonl`` lets a rerun resume.
        extra: constant columns added to every row (e.g. ``{"k": 5, "kind": "top"}``).
        shard: run only this shard's prompts (:meth:`rhlens.shard.Shard.select`); ``out`` is
            the shard's own CSV, whose log names the shard for :func:`rhlens.shard.merge_shards`.
        rouge_stemmer: score answers with stemmed ROUGE-1, as the public code (default).

    Returns:
        a DataFrame with a row per (needle, length, depth): ``needle``, ``length``,
        ``depth``, ``score`` (ROUGE-1 recall x 100), ``answer`` and the ``extra`` columns.
    """
    mask.hooks(model)  # check the heads (and the means) before the first sample
    samples = grid.samples(model.tokenizer, model.cfg.n_ctx)
    part = None
    if shard is not None:
        part = shard.part([s.key for s in samples], "niah")
        samples = shard.select(samples)
    settings = {**model_identity(model), "heads": [list(h) for h in mask.heads],
                "mode": mask.mask_mode, "prefill": mask.prefill,
                "max_new_tokens": grid.max_new_tokens, "rouge_stemmer": bool(rouge_stemmer),
                "means": tensor_digest(mask.means) if mask.mask_mode == "mean" else None}
    log = (SampleLog(f"{out}.samples.jsonl", settings, required=ROW_FIELDS, part=part)
           if out else None)
    if log is not None:
        log.check_keys(s.key for s in samples)
    rows = []
    bar = tqdm(samples, desc=f"NIAH ({len(mask.heads)} masked)", unit="sample",
               disable=not progress)
    for sample in bar:
        if log is not None and sample.key in log:
            row = log.records[sample.key]
        else:
            trace = greedy_decode(model, sample.input_ids, grid.max_new_tokens, mask=mask)
            score = niah_score(sample.needle.answer, trace.text, rouge_stemmer)
            row = {"key": sample.key, "needle": sample.needle.text, "length": sample.length,
                   "depth": sample.depth, "score": score,
                   "answer": trace.text, "expected": sample.needle.answer}
            if log is not None:
                log.add(row)
        rows.append({**row, **(extra or {})})
        if out:
            atomic_write_text(out, _frame(rows).to_csv(index=False))
    return _frame(rows)


def _frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:  # e.g. a shard of a grid with fewer prompts than shards
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    if "key" in df:
        df = df.drop(columns="key")
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def niah_heatmap(df: pd.DataFrame, ax=None, title: str | None = None):
    """The classic NIAH figure: mean score per (depth, length) cell, red (0) to green (100)."""
    table = df.pivot_table(index="depth", columns="length", values="score", aggfunc="mean")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 * table.shape[1] + 3, 0.45 * table.shape[0] + 2))
    im = ax.imshow(table.values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"{d:.0%}" for d in table.index])
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            ax.text(j, i, f"{table.values[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    plt.colorbar(im, ax=ax, label="NIAH score")
    ax.set_title(title or f"NIAH score (mean {df['score'].mean():.1f})")
    return ax


def k_sweep(
    model,
    grid: Grid,
    scores: torch.Tensor,
    ks: Sequence[int],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    threshold: float = 0.1,
    mask: Mask = Mask(),
    out: str | Path | None = None,
    progress: bool = True,
    rouge_stemmer: bool = True,
) -> pd.DataFrame:
    """NIAH with the top-K heads masked and with K random non-retrieval heads (each seed),
    for each K, on the same prompts.

    Args:
        scores: ``[n_layers, n_heads]`` map that ranks the heads.
        ks: the K grid (e.g. :func:`rhlens.ablation.k_grid`).
        seeds: one random draw per seed, among heads scoring ``<= threshold``.
        mask: the mode, prefill and means every run uses (its heads are ignored).

    Returns:
        every row of every run, with columns ``k``, ``kind`` (``"top"``/``"random"``),
        ``seed`` (-1 for top) and ``heads`` besides those of :func:`run_niah`. With ``out``,
        each run logs to ``<out>.k{K}.top.csv`` or ``<out>.k{K}.random{seed}.csv`` (each with
        its resumable ``.samples.jsonl``) and the whole table to ``out``. A K or seed given
        twice runs once.
    """
    runs = []
    for k in dict.fromkeys(ks):
        runs.append((k, "top", -1, Mask.top(scores, k).heads))
        if k > 0:
            runs += [(k, "random", s, Mask.random(scores, k, s, threshold=threshold).heads)
                     for s in dict.fromkeys(seeds)]
    frames = []
    for k, kind, seed, heads in tqdm(runs, desc="K sweep", disable=not progress):
        part = None if out is None else f"{out}.k{k}.{kind}{seed if kind == 'random' else ''}.csv"
        frames.append(run_niah(model, grid, mask.with_heads(heads), out=part, progress=False,
                               extra={"k": k, "kind": kind, "seed": seed,
                                      "heads": head_names(heads)}, rouge_stemmer=rouge_stemmer))
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


def plot_k_curve(curve: pd.DataFrame, ax=None, n_heads_total: int | None = None,
                 title: str | None = None):
    """NIAH score against K for top-K versus random-K heads (mean ± spread over seeds)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(curve["k"], curve["top"], "o-", color="C3", label="top-K retrieval heads")
    ax.plot(curve["k"], curve["random"], "s--", color="C0", label="K random non-retrieval heads")
    ax.fill_between(curve["k"], curve["random"] - curve["random_std"],
                    curve["random"] + curve["random_std"], color="C0", alpha=0.2, label="random ± 1 sd")
    ax.axhline(50, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("K masked heads" + (f" (of {n_heads_total})" if n_heads_total else ""))
    ax.set_ylabel("NIAH score")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=8)
    ax.set_title(title or "Masking retrieval heads vs random heads")
    return ax
