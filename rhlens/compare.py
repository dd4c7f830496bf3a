"""Compare retrieval-score maps: ours, the paper's published files, two models of a family.

Score files are ``{"layer-head": [per-sample scores]}`` (the public code's format); any source
:func:`rhlens.results.load_scores` reads works here: a path, a URL or a dict. Maps are
``[n_layers, n_heads]`` mean scores. The correlations themselves live in :mod:`rhlens.heads`;
this module builds the tables, verdicts and figures of a comparison.

The paper's claim (Sec. 3): retrieval heads are *universal and sparse*, and models of one
family (base, chat, long-context, MoE upcycled) share them: their score maps correlate with
Pearson r > 0.8, while maps of different families correlate about 0.

Example::

    >>> from rhlens.compare import same_family_test
    >>> v = same_family_test("Mistral-7B-v0.2-hf.json", "Mixtral-8x7B-v0.1.json")  # doctest: +SKIP
    >>> v.pearson, v.verdict                                                      # doctest: +SKIP
    (0.86, 'same family')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


from .heads import (ScoreSource, as_map, null_pearson, paired_maps, pearson, sparsity, spearman,
                    top_k_overlap)

#: Where the paper's public score files live (raw files of its repository's ``head_score``).
PUBLISHED_URL = "https://raw.githubusercontent.com/nightdessert/Retrieval_Head/main/head_score/{}.json"

#: Published score files, by rhlens model name.
PUBLISHED_FILES = {
    "llama-2-7b-80k": "llama-2-7b-80k",
    "llama-2-13b-64k": "llama-2-13b-64k",
    "mistral-7b-instruct-v0.2": "Mistral-7B-v0.2-hf",
    "mixtral-8x7b": "Mixtral-8x7B-v0.1",
    "qwen1.5-14b": "Qwen1.5-14B",
    "qwen1.5-14b-chat": "Qwen1.5-14B-Chat",
    "yi-6b-200k": "Yi-6B-200K",
}

#: Share of heads with mean score > 0.1 in the paper's published score files (DESIGN notes).
PAPER_SHARE_ABOVE_0_1 = {
    "llama-2-7b-80k": 0.032,
    "llama-2-13b-64k": 0.021,
    "mistral-7b-instruct-v0.2": 0.042,
    "mixtral-8x7b": 0.062,
    "qwen1.5-14b": 0.038,
    "qwen1.5-14b-chat": 0.042,
    "yi-6b-200k": 0.052,
}


def published_url(model: str) -> str:
    """URL of the paper's score file for ``model`` (a key of :data:`PUBLISHED_FILES`)."""
    if model not in PUBLISHED_FILES:
        raise ValueError(f"No published score file for {model!r}; known: {', '.join(PUBLISHED_FILES)}.")
    return PUBLISHED_URL.format(PUBLISHED_FILES[model])


def compare_scores(maps: dict[str, ScoreSource], k: int = 20):
    """Pairwise table (pandas) of every pair in ``maps``: Pearson, Spearman, top-``k`` overlap.

    Pairs of different shapes get NaN (no head-by-head comparison exists).
    """
    import pandas as pd

    loaded = {name: as_map(src) for name, src in maps.items()}
    rows = []
    names = list(loaded)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = loaded[a], loaded[b]
            same = x.shape == y.shape
            rows.append({
                "a": a, "b": b,
                "pearson": pearson(x, y) if same else float("nan"),
                "spearman": spearman(x, y) if same else float("nan"),
                f"top{k}_overlap": top_k_overlap(x, y, min(k, x.numel())) if same else float("nan"),
            })
    return pd.DataFrame(rows)


def sparsity_table(maps: dict[str, ScoreSource], paper: dict[str, float] | None = None):
    """One row per map: its sparsity shares, and the paper's share > 0.1 where known."""
    import pandas as pd

    paper = PAPER_SHARE_ABOVE_0_1 if paper is None else paper
    rows = []
    for name, src in maps.items():
        m = as_map(src)
        rows.append({"model": name, "heads": m.numel(), **sparsity(m),
                     "paper_share_above_0.1": paper.get(name, float("nan"))})
    return pd.DataFrame(rows)


@dataclass
class FamilyVerdict:
    """Outcome of :func:`same_family_test`."""

    pearson: float
    spearman: float
    top_k_overlap: float
    k: int
    null_p95: float
    p_value: float
    verdict: str
    explanation: str

    def __str__(self) -> str:
        return self.explanation

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def same_family_test(a: ScoreSource, b: ScoreSource, threshold: float = 0.8,
                     different_below: float = 0.3, k: int = 20, n_null: int = 1000,
                     seed: int = 0) -> FamilyVerdict:
    """Do two score maps support the paper's "same family, same heads" claim?

    The claim: within a family the maps correlate with Pearson r > ``threshold`` (0.8); across
    families r is about 0. The verdict is ``"same family"`` when r > ``threshold`` *and* r beats
    every one of ``n_null`` head permutations of ``b`` (no shared heads, same scores);
    ``"different families"`` when r < ``different_below`` or r is within chance;
    ``"inconclusive"`` in between.

    >>> import torch
    >>> a = torch.zeros(8, 8); a[2, 3], a[5, 1], a[6, 6] = 0.9, 0.6, 0.3
    >>> same_family_test(a, a * 0.8).verdict
    'same family'
    """
    x, y = paired_maps(a, b)
    if x.std() == 0 or y.std() == 0:
        raise ValueError("A score map is constant (e.g. all zeros): no sample passed, or the "
                         "file is empty; correlation is undefined.")
    r = pearson(x, y)
    rho = spearman(x, y)
    kk = min(k, x.numel())
    overlap = top_k_overlap(x, y, kk)
    null = null_pearson(x, y, n_null, seed)
    p95 = float(null.quantile(0.95))
    p_value = float(((null >= r).sum() + 1) / (n_null + 1))
    if r > threshold and p_value < 0.05:
        verdict = "same family"
    elif r < different_below or p_value >= 0.05:
        verdict = "different families"
    else:
        verdict = "inconclusive"
    explanation = (
        f"Pearson r = {r:.3f} (paper: > {threshold} within a family, ~0 across), Spearman "
        f"{rho:.3f}, top-{kk} overlap {overlap:.0%}; head-shuffled maps reach r = {p95:.3f} at "
        f"their 95th percentile (p = {p_value:.3g}). Verdict: {verdict}."
    )
    return FamilyVerdict(r, rho, overlap, kk, p95, p_value, verdict, explanation)


def side_by_side(maps: dict[str, ScoreSource], vmax: float = 1.0, annotate_top: int = 3):
    """One heatmap per map, in a row (matplotlib figure)."""
    import matplotlib.pyplot as plt

    from .plotting import score_heatmap

    loaded = {name: as_map(src).float() for name, src in maps.items()}
    if not loaded:
        raise ValueError("Give at least one score map.")
    widths = [max(3.0, 0.12 * m.shape[1] + 2) for m in loaded.values()]
    height = max(3.5, 0.1 * max(m.shape[0] for m in loaded.values()) + 2)
    fig, axes = plt.subplots(1, len(loaded), figsize=(sum(widths), height), squeeze=False)
    for ax, (name, m) in zip(axes[0], loaded.items()):
        score_heatmap(m, ax=ax, title=name, vmax=vmax, annotate_top=annotate_top)
    fig.tight_layout()
    return fig
