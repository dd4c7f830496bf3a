"""The masking explorer: slide over K masked heads (top-K or K random, with a seed) and read
the answer, its NIAH score and its class from precomputed runs. Static twin: :func:`plot_masking`.
"""

from __future__ import annotations

import html

import matplotlib.pyplot as plt

from ...niah.answers import CLASS_COLORS, classify_score
from .common import static_figure, use_static

MASKING_COLUMNS = ("k", "kind", "seed", "answer", "score", "class")




def check_masking_frame(results):
    """Validate (and complete) a masking-results table for :func:`masking_explorer`.

    Expected columns: ``k`` (number of masked heads, int), ``kind`` (``"top"`` or
    ``"random"``), ``seed`` (int; any value for ``top`` rows), ``answer`` (decoded output),
    ``score`` (NIAH score, 0-100) and ``class`` (``complete``/``incomplete``/``hallucinated``).
    ``class`` is derived from ``score`` when missing. An optional ``sample`` column selects
    among several prompts. Returns a copy with ``seed`` filled (``-1`` for missing values).
    """
    import pandas as pd

    frame = pd.DataFrame(results).copy()
    if "class" not in frame.columns and "score" in frame.columns:
        frame["class"] = [classify_score(s) for s in frame["score"]]
    missing = [c for c in MASKING_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"Masking results lack columns {missing}; expected {list(MASKING_COLUMNS)} "
                         "(one row per K, kind 'top' or 'random', and seed).")
    bad = set(frame["kind"]) - {"top", "random"}
    if bad:
        raise ValueError(f"Column 'kind' must be 'top' or 'random', got {sorted(bad)}.")
    if frame.empty:
        raise ValueError("Masking results are empty.")
    frame["seed"] = frame["seed"].fillna(-1).astype(int)
    frame["k"] = frame["k"].astype(int)
    return frame


def masking_row(frame, k: int, kind: str, seed: int | None = None, sample=None):
    """The row of run (``k``, ``kind``, ``seed``); ``K = 0`` (nothing masked) matches any kind."""
    sel = frame[frame["k"] == k]
    if sample is not None and "sample" in frame.columns:
        sel = sel[sel["sample"] == sample]
    if k != 0 or (sel["kind"] == kind).any():
        sel = sel[sel["kind"] == kind]
    if kind == "random" and seed is not None and (sel["seed"] == seed).any():
        sel = sel[sel["seed"] == seed]
    if sel.empty:
        return None
    return sel.iloc[0]


def masking_html(row, k: int, kind: str, seed: int | None) -> str:
    what = f"top {k}" if kind == "top" else f"{k} random (seed {seed})"
    if row is None:
        return f"<i>No run with {html.escape(what)} heads masked.</i>"
    cls = row["class"]
    return (f"<div><b>{html.escape(what)} heads masked</b> &rarr; NIAH score "
            f"<b>{row['score']:.0f}</b> "
            f"<span style='background:{CLASS_COLORS.get(cls, '#ccc')}; color:white; padding:1px 6px; "
            f"border-radius:3px'>{html.escape(str(cls))}</span></div>"
            f"<div style='font-family:monospace'>answer: {html.escape(str(row['answer']))}</div>")


def plot_masking(results, ax=None, sample=None, title: str | None = None, current=None):
    """NIAH score against K for top-K and random-K masking (mean and range over seeds).

    Point colours give the answer class of each run. ``current`` = ``(k, kind, seed)``
    circles one run (the masking explorer's selection).
    """
    frame = check_masking_frame(results)
    if sample is not None and "sample" in frame.columns:
        frame = frame[frame["sample"] == sample]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.6))
    for kind, color in (("top", "#d73027"), ("random", "#4575b4")):
        part = frame[(frame["kind"] == kind) | (frame["k"] == 0)]
        if not (frame["kind"] == kind).any():
            continue
        stats = part.groupby("k")["score"].agg(["mean", "min", "max"]).sort_index()
        ax.plot(stats.index, stats["mean"], marker="o", color=color,
                label=f"{kind} heads masked" + (" (mean over seeds)" if kind == "random" else ""))
        if kind == "random":
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.15)
    for cls, color in CLASS_COLORS.items():
        pts = frame[frame["class"] == cls]
        ax.scatter(pts["k"], pts["score"], s=14, color=color, zorder=3, label=cls)
    if current is not None:
        row = masking_row(frame, *current)
        if row is not None:
            ax.scatter([row["k"]], [row["score"]], s=160, facecolors="none", edgecolors="black",
                       lw=1.5, zorder=4)
    ax.set_xlabel("K (heads masked)")
    ax.set_ylabel("NIAH score")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title or "masking retrieval heads versus random heads")
    return ax


def masking_explorer(results, sample=None, static: bool | None = None):
    """Slide over K masked heads and read the answer, its NIAH score and its class.

    Args:
        results: a pandas DataFrame of precomputed runs with columns ``k``, ``kind``
            (``"top"``/``"random"``), ``seed``, ``answer``, ``score`` (0-100) and ``class``
            (see :func:`check_masking_frame`); moving the controls only looks rows up.
        sample: with a ``sample`` column, the sample to show first.
        static: see :func:`use_static`.

    Returns:
        an ``ipywidgets.VBox`` with ``.controls`` (``k``, ``kind``, ``seed``, and ``sample`` when
        the table has that column), ``.views`` (``result``, ``plot``) and ``.state`` (the current
        row); or, in static mode, the :func:`plot_masking` figure.
    """
    frame = check_masking_frame(results)
    samples = list(dict.fromkeys(frame["sample"])) if "sample" in frame.columns else [None]
    if sample is None:
        sample = samples[0]
    if use_static(static):
        ax = plot_masking(frame, sample=sample)
        ax.figure.tight_layout()
        return static_figure(ax.figure)
    import ipywidgets as w
    from IPython.display import display

    ks = sorted(frame["k"].unique().tolist())
    seeds = sorted(frame.loc[frame["kind"] == "random", "seed"].unique().tolist()) or [-1]
    kinds = [k for k in ("top", "random") if (frame["kind"] == k).any()]
    controls = {
        "k": w.SelectionSlider(options=ks, value=ks[0], description="K masked"),
        "kind": w.ToggleButtons(options=kinds, value=kinds[0], description="heads"),
        "seed": w.Dropdown(options=seeds, value=seeds[0], description="seed"),
    }
    if samples != [None]:
        controls["sample"] = w.Dropdown(options=samples, value=sample, description="sample")
    views = {"result": w.HTML(), "plot": w.Output()}
    state = {"row": None, "figure": None}

    def render(*_):
        k, kind, seed = controls["k"].value, controls["kind"].value, controls["seed"].value
        smp = controls["sample"].value if "sample" in controls else None
        controls["seed"].disabled = kind != "random"
        row = masking_row(frame, k, kind, seed, smp)
        state["row"] = row
        views["result"].value = masking_html(row, k, kind, seed)
        with views["plot"]:
            views["plot"].clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6.5, 3.4))
            plot_masking(frame, ax=ax, sample=smp, current=(k, kind, seed, smp))
            fig.tight_layout()
            state["figure"] = fig
            display(fig)
            plt.close(fig)

    for c in controls.values():
        c.observe(render, names="value")
    rows = [w.HBox([controls["k"], controls["kind"]]), controls["seed"]]
    if "sample" in controls:
        rows.insert(0, controls["sample"])
    ui = w.VBox([*rows, views["result"], views["plot"]])
    ui.controls, ui.views, ui.state, ui.frame = controls, views, state, frame
    render()
    return ui
