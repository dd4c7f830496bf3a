"""Figures of the head detectors (:mod:`rhlens.score.detectors`): their maps side by side, each
on its own scale, and the intervention table (:func:`rhlens.analyze.detectors.intervention_table`)
as masking drops and restored fractions with their intervals.

Example::

    >>> fig = plot_maps(load_maps("runs/det"), title="SmolLM2-135M")             # doctest: +SKIP
    >>> fig = plot_interventions(intervention_table(niah, patch))                 # doctest: +SKIP
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch

from ..score.detectors import CARDS, DETECTORS
from ..score.heads import head_table


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


def plot_interventions(table: pd.DataFrame, sets: tuple[str, ...] = ("literal", "nonliteral")):
    """Masking drop (top row) and restored fraction (bottom row) per K, one column per needle
    set, each detector's top-K beside the controls, with the table's bootstrap intervals."""
    ks = sorted(set(table.k))
    kinds = [*DETECTORS, "control"]
    fig, axes = plt.subplots(2, len(sets), figsize=(5.5 * len(sets), 6.5), sharex=True,
                             squeeze=False)
    rows = (("drop", "NIAH drop when masked"), ("restored", "restored by patching"))
    for row, (col, label) in enumerate(rows):
        for ax, name in zip(axes[row], sets):
            part = table[table.set == name]
            for i, kind in enumerate(kinds):
                p = part[part.kind == kind]
                if col not in p or p.empty or p[col].isna().all():
                    continue
                x = [ks.index(k) + (i - 2) * 0.15 for k in p.k]
                ax.errorbar(x, p[col], yerr=[p[col] - p[f"{col}_lo"], p[f"{col}_hi"] - p[col]],
                            fmt="o", color=f"C{i}", capsize=3, label=kind.replace("_", " "))
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_title(f"{name} needles: {label}", fontsize=10)
            ax.set_xticks(range(len(ks)), [f"K = {k}" for k in ks])
    axes[0, 0].set_ylabel("NIAH points")
    axes[1, 0].set_ylabel("fraction of the logit difference")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig
