"""Figures of runs (static matplotlib, so they render in the built book): NIAH heatmaps and K
curves (:mod:`rhlens.intervene.niah`), failure modes (:mod:`rhlens.intervene.failure`), group and
per-head patching (:mod:`rhlens.analyze.patching`), and KV-cache policies
(:mod:`rhlens.apps.kvcache`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch

from ..analyze.patching import compare_maps
from ..intervene.failure import attention_by_category, failure_table
from ..intervene.patch import DIRECTIONS
from ..niah.answers import CLASS_COLORS, CLASSES
from ..score.heads import head_name, top_heads


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


def plot_failure_modes(df: pd.DataFrame, title: str | None = None):
    """Left: answer categories against K (stacked). Right: where the watched heads attend,
    per category (needle vs attention sink)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    table = failure_table(df)
    colors = CLASS_COLORS
    bottom = pd.Series(0.0, index=table.index)
    xs = range(len(table.index))
    for cat in CLASSES:
        a.bar(xs, table[cat], bottom=bottom, color=colors[cat], label=cat)
        bottom = bottom + table[cat]
    a.set_xticks(list(xs), [str(k) for k in table.index])
    a.set_xlabel("K top retrieval heads masked")
    a.set_ylabel("share of answers")
    a.legend(fontsize=8)
    a.set_title("answers as retrieval heads are masked")
    att = attention_by_category(df)
    pos = range(len(att.index))
    b.bar([p - 0.2 for p in pos], att["needle_mass"], width=0.4, label="on the needle", color="C0")
    b.bar([p + 0.2 for p in pos], att["sink_mass"], width=0.4, label="on the first tokens (sink)",
          color="C7")
    b.set_xticks(list(pos), [f"{c}\n(n={n})" for c, n in zip(att.index, att["n"])])
    b.set_ylabel("attention mass per step")
    b.legend(fontsize=8)
    b.set_title("where the strongest unmasked retrieval heads look")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_group_patching(summary, title: str | None = None, n_heads_total: int | None = None):
    """K curves of the fraction moved (with intervals): top-K against controls, one panel per
    direction."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    labels = {"clean->cf": "clean → counterfactual: restored", "cf->clean":
              "counterfactual → clean: destroyed"}
    for ax, direction in zip(axes, DIRECTIONS):
        part = summary[summary.direction == direction]
        zero = part[part.kind == "none"]
        for kind, color in (("top", "C3"), ("control", "C0")):
            p = pd.concat([zero, part[part.kind == kind]]).sort_values("k")
            ax.plot(p.k, p.fraction, "o-", color=color,
                    label="top-K retrieval heads" if kind == "top" else "K control heads")
            ax.fill_between(p.k, p.fraction_lo, p.fraction_hi, color=color, alpha=0.2)
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("K (heads patched)" + (f" of {n_heads_total}" if n_heads_total else ""))
        ax.set_title(labels[direction], fontsize=10)
    axes[0].set_ylabel("fraction of the logit difference")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_patching(patch: torch.Tensor, scores: torch.Tensor | None = None, title: str | None = None):
    """Layer x head map of the restored fraction and, with ``scores``, a scatter of the two."""
    ncols = 2 if scores is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 + 4.5 * (ncols - 1), max(4, 0.18 * patch.shape[0] + 1.5)),
                             squeeze=False)
    ax = axes[0, 0]
    lim = max(float(patch.abs().max()), 1e-6)
    im = ax.imshow(patch.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower", aspect="auto")
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title("logit difference restored by patching")
    plt.colorbar(im, ax=ax)
    if scores is not None:
        ax = axes[0, 1]
        ax.scatter(scores.flatten(), patch.flatten(), s=10, alpha=0.6)
        for l, h in top_heads(scores, min(5, scores.numel())):
            ax.annotate(head_name(l, h), (float(scores[l, h]), float(patch[l, h])), fontsize=7)
        k = min(10, scores.numel())
        c = compare_maps(patch, scores, (k,))
        ax.set_xlabel("retrieval score")
        ax.set_ylabel("restored fraction")
        ax.set_title(f"Spearman {c['spearman']:.2f}, top-{k} overlap {c[f'top{k}_overlap']:.0%}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_kv_curve(table, ax=None, title: str | None = None):
    """NIAH score against the share of the KV cache kept, one line per policy family."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.8))
    styles = {"retrieval": ("o-", "retrieval heads full"), "random": ("s--", "random heads full"),
              "window": ("^:", "window for every head")}
    full = table[table["family"] == "full"]
    for fam, (style, label) in styles.items():
        t = table[table["family"] == fam].sort_values("share")
        if len(t):
            ax.errorbar(100 * t["share"], t["score"], yerr=t["spread"], fmt=style, label=label,
                        capsize=3)
    if len(full):
        ax.axhline(float(full["score"].iloc[0]), color="gray", lw=0.8, ls="--",
                   label="full cache")
    ax.set_xlabel("share of the KV cache kept (%)")
    ax.set_ylabel("NIAH score")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax
