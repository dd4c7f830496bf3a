"""Figures of score maps, static matplotlib (they render in the built book without any
JavaScript): heatmaps, sorted scores, correlation matrices, head-by-head scatters, how often
heads fire, and maps side by side. Figures of runs are in :mod:`rhlens.viz.runs`.

Example::

    >>> from rhlens.run.results import load_scores
    >>> fig = plot_scores(load_scores("scores.json"), title="SmolLM2-135M")   # doctest: +SKIP
    >>> fig.savefig("heads.png")                                               # doctest: +SKIP
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ..analyze.maps import ScoreSource, as_map
from ..score.heads import head_table


def score_heatmap(scores: torch.Tensor, ax=None, title: str | None = None, vmax: float = 1.0,
                  annotate_top: int = 5, uncertain: torch.Tensor | None = None):
    """Layer x head heatmap of mean retrieval scores (``scores``: ``[n_layers, n_heads]``).

    The ``annotate_top`` best heads are labelled with their score. ``uncertain``
    (``[n_layers, n_heads]`` bool, e.g. :meth:`rhlens.score.uncertainty.HeadIntervals.uncertain`)
    outlines the heads whose bootstrap interval crosses 0.1.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.35 * scores.shape[1] + 2), 0.22 * scores.shape[0] + 1.5))
    im = ax.imshow(scores.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=vmax,
                   origin="lower", interpolation="nearest")
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    table = head_table(scores)
    for _, row in table.head(annotate_top).iterrows():
        ax.text(row["head"], row["layer"], f"{row['score']:.2f}", ha="center", va="center",
                fontsize=7, color="white" if row["score"] < 0.6 * vmax else "black")
    if uncertain is not None:
        _outline(ax, uncertain)
    plt.colorbar(im, ax=ax, label="retrieval score")
    if title:
        ax.set_title(title)
    return ax


def _outline(ax, heads: torch.Tensor) -> None:
    """Outline the cells of ``heads`` (bool ``[n_layers, n_heads]``) in red, said in the
    x label."""
    from matplotlib.patches import Rectangle

    cells = heads.nonzero().tolist()
    for l, h in cells:
        ax.add_patch(Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.2))
    ax.set_xlabel(f"query head (red: {len(cells)} heads whose interval crosses 0.1)")


def sorted_scores(scores: torch.Tensor, ax=None, thresholds=(0.1, 0.5), title: str | None = None):
    """Scores of all heads sorted high to low, with the paper's 0.1 and 0.5 thresholds."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    values = scores.flatten().sort(descending=True).values.numpy()
    ax.plot(range(1, len(values) + 1), values, marker=".", lw=1)
    for t in thresholds:
        share = (values > t).mean() * 100
        ax.axhline(t, ls="--", lw=0.8, color="gray")
        ax.text(len(values), t, f" > {t}: {share:.1f}% of heads", va="bottom", ha="right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("head rank")
    ax.set_ylabel("retrieval score")
    if title:
        ax.set_title(title)
    return ax


def plot_scores(scores: torch.Tensor, title: str | None = None,
                uncertain: torch.Tensor | None = None):
    """The two figures of ``rhlens plot`` side by side: heatmap and sorted-score curve;
    ``uncertain`` outlines heads on the heatmap (see :func:`score_heatmap`)."""
    n_layers, n_heads = scores.shape
    width = max(4.0, 0.3 * n_heads + 2)
    fig, (a, b) = plt.subplots(1, 2, figsize=(width + 5, max(4.0, 0.2 * n_layers + 1.5)),
                               gridspec_kw={"width_ratios": [width, 5]})
    score_heatmap(scores, ax=a, title="retrieval score per head", uncertain=uncertain)
    sorted_scores(scores, ax=b, title="sorted scores")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def matrix_heatmap(table, ax=None, title: str | None = None, vmin: float = -1.0, vmax: float = 1.0):
    """A square table of correlations (pandas, e.g. :func:`rhlens.analyze.compare.correlation_matrix`)
    as an annotated heatmap; NaN cells (no comparison) stay blank."""
    import numpy as np

    values = table.to_numpy(dtype=float)
    if ax is None:
        n = len(table)
        _, ax = plt.subplots(figsize=(0.9 * n + 3, 0.8 * n + 1.5))
    im = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(table.index)), table.index)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=8, color="white" if abs(v) > 0.6 else "black")
    plt.colorbar(im, ax=ax, label="correlation")
    if title:
        ax.set_title(title)
    return ax


def scatter_maps(a: torch.Tensor, b: torch.Tensor, ax=None, labels=("a", "b"), annotate: int = 5):
    """Head-by-head scatter of two score maps of one shape (one dot per head), the diagonal
    dashed; the ``annotate`` best heads of ``a`` are named."""
    if a.shape != b.shape:
        raise ValueError(f"Maps of different shapes {tuple(a.shape)} and {tuple(b.shape)}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    x, y = a.flatten().float().numpy(), b.flatten().float().numpy()
    ax.scatter(x, y, s=8, alpha=0.5)
    top = float(max(x.max(), y.max(), 1e-9))
    ax.plot([0, top], [0, top], ls="--", lw=0.8, color="gray")
    for _, row in head_table(a).head(annotate).iterrows():
        l, h = int(row.layer), int(row["head"])
        ax.annotate(row["name"], (float(a[l, h]), float(b[l, h])), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{labels[0]} score")
    ax.set_ylabel(f"{labels[1]} score")
    return ax


def activation_curves(shares: dict, ax=None, nearly: float = 0.95):
    """For each model, the share of samples on which each head fired, heads sorted high to
    low (log head rank); ``shares``: ``{name: [n_layers, n_heads] tensor of shares}``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    for name, share in shares.items():
        values = share.flatten().sort(descending=True).values
        values = values[values > 0].numpy()
        ax.plot(range(1, len(values) + 1), values, lw=1.2, label=name)
    ax.axhline(nearly, ls="--", lw=0.8, color="gray")
    ax.text(1, nearly, f" {nearly:.0%} of samples", va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("head rank (heads that fired at least once)")
    ax.set_ylabel("share of samples with score > 0")
    ax.legend(fontsize=7)
    return ax


def side_by_side(maps: dict[str, ScoreSource], vmax: float = 1.0, annotate_top: int = 3,
                 ncols: int | None = None):
    """One heatmap per map (matplotlib figure): in one row, or ``ncols`` per row."""
    loaded = {name: as_map(src).float() for name, src in maps.items()}
    if not loaded:
        raise ValueError("Give at least one score map.")
    ncols = len(loaded) if ncols is None else max(1, min(ncols, len(loaded)))
    nrows = -(-len(loaded) // ncols)
    width = max(max(3.0, 0.12 * m.shape[1] + 2) for m in loaded.values())
    height = max(3.5, 0.1 * max(m.shape[0] for m in loaded.values()) + 2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax, (name, m) in zip(axes.flat, loaded.items()):
        score_heatmap(m, ax=ax, title=name, vmax=vmax, annotate_top=annotate_top)
    for ax in list(axes.flat)[len(loaded):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
