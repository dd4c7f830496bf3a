"""Compare retrieval-score maps: ours, the paper's published files, two models of a family.

Score files are ``{"layer-head": [per-sample scores]}`` (the public code's format); any source
:func:`rhlens.analyze.maps.as_map` reads works here: a map, a path, a URL, a dict, or the short
name of one of the paper's published maps (:mod:`rhlens.analyze.published`, shipped offline).
Maps are ``[n_layers, n_heads]`` mean scores. The correlations themselves live in
:mod:`rhlens.analyze.statistics`; this module builds the tables and verdicts of a comparison
(its figures are :mod:`rhlens.viz.plots`).

The paper's claim (Sec. 3): retrieval heads are *universal and sparse*, and models of one
family (base, chat, long-context, MoE upcycled) share them: their score maps correlate with
Pearson r > 0.8, while maps of different families correlate about 0.

Example::

    >>> from rhlens.analyze.compare import same_family_test
    >>> v = same_family_test("mistral-7b-v0.2", "mixtral-8x7b")   # the published maps
    >>> round(v.pearson, 2), v.verdict
    (0.96, 'same family')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..score.heads import head_table, sparsity
from .cards import warn_if_incomparable, warn_pair
from .maps import ScoreSource, as_map, paired_maps
from .statistics import null_pearson, pearson, spearman, top_k_overlap


def compare_scores(maps: dict[str, ScoreSource], k: int = 20):
    """Pairwise table (pandas) of every pair in ``maps``: Pearson, Spearman, top-``k`` overlap.

    Pairs of different shapes get NaN (no head-by-head comparison exists). Score files whose
    map cards differ in a field that changes scores raise a
    :class:`~rhlens.analyze.cards.MapCardWarning` (as every comparison here does).
    """
    import pandas as pd

    warn_if_incomparable(maps)
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


def sparsity_table(maps: dict[str, ScoreSource]):
    """One row per map: layers x heads, the shares of :func:`~rhlens.score.heads.sparsity` (> 0.1,
    > 0.5, exactly 0; fractions of all heads), how many heads score > 0.1, and the best head."""
    import pandas as pd

    rows = []
    for name, src in maps.items():
        m = as_map(src)
        best = head_table(m).iloc[0]
        rows.append({"model": name, "layers x heads": f"{m.shape[0]} x {m.shape[1]}",
                     "heads": m.numel(), **sparsity(m),
                     "heads > 0.1": int((m > 0.1).sum()),
                     "top head": best["name"], "top score": float(best.score)})
    return pd.DataFrame(rows)


def correlation_matrix(maps: dict[str, ScoreSource], method: str = "pearson"):
    """``len(maps) x len(maps)`` table of Pearson (or ``method="spearman"``) correlations
    over heads; NaN where two maps have different shapes (no head-by-head pairing exists)."""
    import pandas as pd

    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}.")
    fn = pearson if method == "pearson" else spearman
    warn_if_incomparable(maps)
    loaded = {name: as_map(src) for name, src in maps.items()}
    names = list(loaded)
    table = pd.DataFrame(float("nan"), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i:]:
            if loaded[a].shape == loaded[b].shape:
                table.loc[a, b] = table.loc[b, a] = fn(loaded[a], loaded[b])
    return table


def family_table(maps: dict[str, ScoreSource], families: dict[str, str], n_null: int = 1000,
                 seed: int = 0, k: int = 20):
    """The "same family, same heads" claim on every pair of ``maps``.

    One row per pair: whether the two are of one family (``families[name]``), and, when their
    shapes match, :func:`same_family_test`'s Pearson, Spearman, top-``k`` overlap, the 95th
    percentile of head-shuffled maps and the verdict; ``expected`` is what the paper claims
    (r > 0.8 within a family, about 0 across). Pairs of different shapes say why they cannot
    be compared head to head.
    """
    import pandas as pd

    warn_if_incomparable(maps)
    loaded = {name: as_map(src) for name, src in maps.items()}
    names = list(loaded)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = loaded[a], loaded[b]
            same = families[a] == families[b]
            row = {"a": a, "b": b, "same family": same,
                   "expected": "r > 0.8" if same else "r ~ 0"}
            if x.shape != y.shape:
                row.update(pearson=float("nan"), spearman=float("nan"),
                           **{f"top{k}_overlap": float("nan")}, null_p95=float("nan"),
                           verdict=f"not comparable: {x.shape[0]}x{x.shape[1]} vs "
                                   f"{y.shape[0]}x{y.shape[1]} heads")
            else:
                v = same_family_test(x, y, k=k, n_null=n_null, seed=seed)
                row.update(pearson=v.pearson, spearman=v.spearman,
                           **{f"top{k}_overlap": v.top_k_overlap}, null_p95=v.null_p95,
                           verdict=v.verdict)
            rows.append(row)
    return pd.DataFrame(rows)


def universality_table(maps: dict[str, ScoreSource], threshold: float = 0.1,
                       strong: float = 0.5, small: float = 0.1):
    """The paper's "universal" in its own sense: does every map have a *small set* of
    retrieval heads?

    One row per map: heads scoring > ``threshold`` (retrieval heads) and > ``strong``, their
    share, the best head's score, the first and last layer holding a retrieval head (also as
    a fraction of depth), and ``small set``: at least one retrieval head, and fewer than
    ``small`` of all heads.
    """
    import pandas as pd

    rows = []
    for name, src in maps.items():
        m = as_map(src)
        above = m > threshold
        layers = above.any(1).nonzero().flatten().tolist()
        n = int(above.sum())
        rows.append({
            "model": name, "heads": m.numel(), f"> {threshold}": n,
            f"> {strong}": int((m > strong).sum()), "share": n / m.numel(),
            "best score": float(m.max()),
            "layers": f"{layers[0]}-{layers[-1]} of {m.shape[0]}" if layers else "-",
            "depth": (f"{layers[0] / (m.shape[0] - 1):.0%}-{layers[-1] / (m.shape[0] - 1):.0%}"
                      if layers and m.shape[0] > 1 else "-"),
            "small set": bool(n >= 1 and n / m.numel() < small),
        })
    return pd.DataFrame(rows)


def stability_table(runs: dict[str, ScoreSource], k: int = 10, n_null: int = 1000,
                    seed: int = 0):
    """Run-to-run *stability* of one model's retrieval heads: do two detection runs (e.g. on
    disjoint needle sets) find the same heads?

    Not the paper's "universality" (every model studied has retrieval heads:
    :func:`universality_table`); this asks whether the heads are a property of the model or
    of the prompts that found them. One row per pair of ``runs``: Pearson, Spearman, top-``k``
    overlap, the 95th percentile of Pearson over ``n_null`` head-shuffled copies of the
    second map (same scores, no shared heads), and ``stable``: r above that percentile.

    >>> import torch
    >>> a = torch.zeros(6, 6); a[1, 2], a[4, 0], a[5, 5] = 0.9, 0.5, 0.2
    >>> bool(stability_table({"needles 1-2": a, "needles 3-4": a * 0.7}).stable[0])
    True
    """
    import pandas as pd

    warn_if_incomparable(runs)
    loaded = {name: as_map(src) for name, src in runs.items()}
    names = list(loaded)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = paired_maps(loaded[a], loaded[b])
            kk = min(k, x.numel())
            r = pearson(x, y)
            p95 = float(null_pearson(x, y, n_null, seed).quantile(0.95))
            rows.append({"a": a, "b": b, "pearson": r, "spearman": spearman(x, y),
                         f"top{kk}_overlap": top_k_overlap(x, y, kk), "shuffled_p95": p95,
                         "stable": bool(r > p95)})
    return pd.DataFrame(rows)


def family_report(table, threshold: float = 0.8) -> str:
    """The "same family, same heads" claim checked on a :func:`family_table`, in sentences:
    each within-family pair against ``threshold``, the cross-family pairs against their
    head-shuffle baselines, and the same-family pairs that cannot be compared."""
    k = next(c for c in table.columns if c.startswith("top") and c.endswith("_overlap"))
    comparable = table.pearson.notna()
    within = table[table["same family"] & comparable]
    across = table[~table["same family"] & comparable]
    lines = []
    for _, r in within.iterrows():
        holds = "holds" if r.pearson > threshold else "does not hold"
        lines.append(f"within a family: {r.a} vs {r.b}: r = {r.pearson:.3f} (> {threshold}: "
                     f"{holds}); head-shuffled maps reach {r.null_p95:.3f} at their 95th "
                     f"percentile; Spearman {r.spearman:.3f}; {k.replace('_', ' ')} "
                     f"{r[k]:.0%}")
    if len(across):
        chance = bool((across.pearson.abs() <= across.null_p95).all())
        lines.append(
            f"across families: {len(across)} comparable pairs, r from {across.pearson.min():+.3f} "
            f"to {across.pearson.max():+.3f}; every |r| within its head-shuffle 95th percentile "
            f"(at most {across.null_p95.max():.3f}): {'yes' if chance else 'no'}, so r ~ 0 "
            f"{'holds' if chance else 'does not hold'}")
    for _, r in table[table["same family"] & ~comparable].iterrows():
        lines.append(f"same family, no head-by-head comparison: {r.a} vs {r.b} ({r.verdict})")
    return "\n".join(lines)


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
    warn_pair(a, b)
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
