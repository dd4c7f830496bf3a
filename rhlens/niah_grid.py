"""Needle-in-a-haystack grids with heads masked, and the sweep over the number of masked heads.

:func:`run_niah` decodes every (needle, length, depth) prompt, optionally with heads masked,
and scores the answer as the paper does (ROUGE-1 recall x 100 of the needle's answer span).
Results go to a CSV (rewritten atomically after every sample) and to a resumable sample log.
:func:`niah_heatmap` draws the classic depth x length figure.

:func:`k_sweep` masks the top-K heads and K random *non-retrieval* heads (several seeds) on the
same prompts, for each K; :func:`k_curve` summarises it (random: mean and spread over seeds)
and :func:`plot_k_curve` draws it.

Masking runs should use needles that were not used to compute the scores, otherwise the
heads are tested on the very prompts that selected them: :func:`needles_used_by` reads the
needles of a score run from its sample log so that they can be left out.

Example::

    >>> df = run_niah(model, [600], [0.2, 0.5, 0.8], needles, heads=[(17, 3)])   # doctest: +SKIP
    >>> df[["needle", "length", "depth", "score", "answer"]]                       # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch
from tqdm.auto import tqdm

from .ablation import check_heads, mask_hooks, random_heads, top_heads
from .decode import greedy_decode
from .detect import sample_grid
from .haystack import Needle
from .niah import niah_score
from .results import SampleLog, atomic_write_text, model_identity, tensor_digest
from .validate import check_grid

COLUMNS = ["needle", "length", "depth", "score", "answer"]

#: Fields every logged NIAH sample has (a record lacking one is recomputed).
ROW_FIELDS = ("key", "needle", "length", "depth", "score", "answer", "expected")


def needles_used_by(scores_path: str | Path) -> set[str]:
    """Needle texts of the score run that wrote ``scores_path`` (from its
    ``<scores>.samples.jsonl`` log); empty when there is no log (e.g. a published file).
    Unreadable lines are skipped."""
    log = Path(f"{scores_path}.samples.jsonl")
    if not log.is_file():
        return set()
    used = set()
    for line in log.read_bytes().decode("utf-8", errors="replace").splitlines()[1:]:
        try:
            needle = json.loads(line)["needle"]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError):
            continue
        if isinstance(needle, str):
            used.add(needle)
    return used


def held_out_needles(needles: Sequence[Needle], used: set[str]) -> list[Needle]:
    """``needles`` without those whose text is in ``used``; an error if none is left."""
    kept = [n for n in needles if n.text not in used]
    if not kept:
        raise ValueError(
            "Every needle was already used to compute the scores; masking must be tested on "
            "other needles. Pass a --needle-file with new needles or fewer --skip-needles."
        )
    return kept


def run_niah(
    model,
    lengths: Sequence[int],
    depths: Sequence[float],
    needles: Sequence[Needle],
    haystack: str | None = None,
    heads: Sequence[tuple[int, int]] = (),
    mode: str = "uniform",
    prefill: bool = False,
    means: torch.Tensor | None = None,
    out: str | Path | None = None,
    max_new_tokens: int = 32,
    progress: bool = True,
    extra: dict | None = None,
) -> pd.DataFrame:
    """NIAH over a lengths x depths grid with ``heads`` masked.

    Args:
        heads: ``[(layer, head), ...]`` to mask (empty: the unmasked model).
        mode, prefill, means: see :func:`rhlens.ablation.mask_hooks`; ``prefill`` also masks
            while the prompt is read (the paper masks during decoding only).
        out: CSV path; ``<out>.samples.jsonl`` lets a rerun resume.
        extra: constant columns added to every row (e.g. ``{"k": 5, "kind": "top"}``).

    Returns:
        a DataFrame with a row per (needle, length, depth): ``needle``, ``length``,
        ``depth``, ``score`` (ROUGE-1 recall x 100), ``answer`` and the ``extra`` columns.
    """
    heads = [tuple(map(int, h)) for h in heads]
    check_heads(model, heads)
    check_grid(lengths, depths, max_new_tokens, model.cfg.n_ctx)
    hooks = mask_hooks(heads, mode, means, model.cfg.n_heads)
    samples = sample_grid(model.tokenizer, needles, haystack, lengths, depths, model.cfg.n_ctx)
    settings = {**model_identity(model), "heads": [list(h) for h in heads],
                "mode": mode, "prefill": prefill, "max_new_tokens": max_new_tokens,
                "means": tensor_digest(means) if mode == "mean" else None}
    log = SampleLog(f"{out}.samples.jsonl", settings, required=ROW_FIELDS) if out else None
    if log is not None:
        log.check_keys(s.key for s in samples)
    rows = []
    bar = tqdm(samples, desc=f"NIAH ({len(heads)} masked)", unit="sample", disable=not progress)
    for sample in bar:
        if log is not None and sample.key in log:
            row = log.records[sample.key]
        else:
            trace = greedy_decode(model, sample.input_ids, max_new_tokens, decode_hooks=hooks,
                                  prefill_hooks=hooks if prefill else ())
            row = {"key": sample.key, "needle": sample.needle.text, "length": sample.length,
                   "depth": sample.depth, "score": niah_score(sample.needle.answer, trace.text),
                   "answer": trace.text, "expected": sample.needle.answer}
            if log is not None:
                log.add(row)
        rows.append({**row, **(extra or {})})
        if out:
            atomic_write_text(out, _frame(rows).to_csv(index=False))
    return _frame(rows)


def _frame(rows: list[dict]) -> pd.DataFrame:
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
    scores: torch.Tensor,
    ks: Sequence[int],
    lengths: Sequence[int],
    depths: Sequence[float],
    needles: Sequence[Needle],
    haystack: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    threshold: float = 0.1,
    mode: str = "uniform",
    prefill: bool = False,
    means: torch.Tensor | None = None,
    out: str | Path | None = None,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """NIAH with the top-K heads masked and with K random non-retrieval heads (each seed),
    for each K, on the same prompts.

    Returns:
        every row of every run, with columns ``k``, ``kind`` (``"top"``/``"random"``),
        ``seed`` (-1 for top) besides those of :func:`run_niah`. With ``out``, each run
        logs to ``<out>.k{K}.top.csv`` or ``<out>.k{K}.random{seed}.csv`` (each with its
        resumable ``.samples.jsonl``) and the whole table to ``out``. A K or seed given
        twice runs once.
    """
    runs = []
    for k in dict.fromkeys(ks):
        runs.append((k, "top", -1, top_heads(scores, k)))
        if k > 0:
            runs += [(k, "random", s, random_heads(scores, k, s, threshold))
                     for s in dict.fromkeys(seeds)]
    frames = []
    for k, kind, seed, heads in tqdm(runs, desc="K sweep", disable=not progress):
        part = None if out is None else f"{out}.k{k}.{kind}{seed if kind == 'random' else ''}.csv"
        frames.append(run_niah(model, lengths, depths, needles, haystack, heads, mode, prefill,
                               means, part, max_new_tokens, progress=False,
                               extra={"k": k, "kind": kind, "seed": seed,
                                      "heads": " ".join(f"L{l}H{h}" for l, h in heads)}))
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
