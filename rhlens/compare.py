"""Compare retrieval-score maps: ours, the paper's published files, two models of a family.

Score files are ``{"layer-head": [per-sample scores]}`` (the public code's format); any source
:func:`rhlens.results.load_scores` reads works here: a path, a URL or a dict. Maps are
``[n_layers, n_heads]`` mean scores.

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
from pathlib import Path
from typing import Any

import torch

from . import ablation
from .results import load_scores

ScoreSource = str | Path | dict | torch.Tensor

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


def as_map(source: ScoreSource) -> torch.Tensor:
    """``[n_layers, n_heads]`` float map from a tensor, score file, URL or dict."""
    if isinstance(source, torch.Tensor):
        if source.ndim != 2:
            raise ValueError(f"A score map is [n_layers, n_heads]; got shape {tuple(source.shape)}.")
        return source.detach().double().cpu()
    return load_scores(source).double()


def _pair(a: ScoreSource, b: ScoreSource) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_map(a), as_map(b)
    if x.shape != y.shape:
        raise ValueError(
            f"Score maps of different shapes {tuple(x.shape)} and {tuple(y.shape)}: head-by-head "
            "comparison needs two models with the same layers x heads (as within a family)."
        )
    return x, y


def pearson(a: ScoreSource, b: ScoreSource) -> float:
    """Pearson correlation of two score maps over all heads (NaN if one map is constant).

    >>> pearson(torch.tensor([[0., 1.], [0.5, 0.]]), torch.tensor([[0., 2.], [1., 0.]]))
    1.0
    """
    x, y = _pair(a, b)
    x, y = x.flatten() - x.mean(), y.flatten() - y.mean()
    denom = x.norm() * y.norm()
    return float("nan") if denom == 0 else round(float(x @ y / denom), 12)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    import pandas as pd

    return torch.tensor(pd.Series(v.numpy()).rank(method="average").to_numpy())


def spearman(a: ScoreSource, b: ScoreSource) -> float:
    """Spearman rank correlation (ties get average ranks: most heads score exactly 0)."""
    x, y = _pair(a, b)
    return pearson(_ranks(x.flatten())[None], _ranks(y.flatten())[None])


def top_heads(source: ScoreSource, k: int) -> list[tuple[int, int]]:
    """The ``k`` highest-scoring ``(layer, head)`` pairs of any score source (tensor, file, URL,
    dict): :func:`rhlens.ablation.top_heads` (ties broken by position)."""
    return ablation.top_heads(as_map(source), k)


def top_k_overlap(a: ScoreSource, b: ScoreSource, k: int = 20) -> float:
    """Share of the top-``k`` heads of ``a`` that are also top-``k`` heads of ``b``."""
    x, y = _pair(a, b)
    if not 0 < k <= x.numel():
        raise ValueError(f"k must be in 1..{x.numel()}, got {k}.")
    return len(set(top_heads(x, k)) & set(top_heads(y, k))) / k


def null_pearson(a: ScoreSource, b: ScoreSource, n: int = 1000, seed: int = 0) -> torch.Tensor:
    """Pearson r after randomly permuting the heads of ``b``, ``n`` times: the correlation of
    two models that share *no* heads but have the same score distributions. ``[n]``."""
    x, y = _pair(a, b)
    gen = torch.Generator().manual_seed(seed)
    xf = (x.flatten() - x.mean()) / (x.flatten() - x.mean()).norm()
    yf = y.flatten() - y.mean()
    perms = torch.stack([torch.randperm(yf.numel(), generator=gen) for _ in range(n)])
    yp = yf[perms]
    return (yp @ xf) / yf.norm()


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


def sparsity(source: ScoreSource) -> dict[str, float]:
    """Share of heads with mean score > 0.1, > 0.5 and exactly 0 (the paper's Sec. 3.1)."""
    m = as_map(source).flatten()
    return {"share_above_0.1": float((m > 0.1).double().mean()),
            "share_above_0.5": float((m > 0.5).double().mean()),
            "share_zero": float((m == 0).double().mean())}


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
    x, y = _pair(a, b)
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
