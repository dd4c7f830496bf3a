"""Static matplotlib figures (they render in the built book without any JavaScript).

Example::

    >>> from rhlens.results import load_scores
    >>> fig = plot_scores(load_scores("scores.json"), title="SmolLM2-135M")   # doctest: +SKIP
    >>> fig.savefig("heads.png")                                               # doctest: +SKIP
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .heads import head_table


def score_heatmap(scores: torch.Tensor, ax=None, title: str | None = None, vmax: float = 1.0,
                  annotate_top: int = 5):
    """Layer x head heatmap of mean retrieval scores (``scores``: ``[n_layers, n_heads]``).

    The ``annotate_top`` best heads are labelled with their score.
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
    plt.colorbar(im, ax=ax, label="retrieval score")
    if title:
        ax.set_title(title)
    return ax


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


def plot_scores(scores: torch.Tensor, title: str | None = None):
    """The two figures of ``rhlens plot`` side by side: heatmap and sorted-score curve."""
    n_layers, n_heads = scores.shape
    width = max(4.0, 0.3 * n_heads + 2)
    fig, (a, b) = plt.subplots(1, 2, figsize=(width + 5, max(4.0, 0.2 * n_layers + 1.5)),
                               gridspec_kw={"width_ratios": [width, 5]})
    score_heatmap(scores, ax=a, title="retrieval score per head")
    sorted_scores(scores, ax=b, title="sorted scores")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
