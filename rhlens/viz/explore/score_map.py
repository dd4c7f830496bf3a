"""The score-map explorer: the layer x head score map as a grid of clickable cells, with a
threshold slider; a click opens the head in a head explorer. Static twin: :func:`plot_score_map`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import torch

from ...score.heads import head_name, share_above
from .common import static_figure, use_static


def plot_score_map(scores, thresholds=(0.1, 0.5), ax=None, title: str | None = None):
    """Layer x head heatmap; heads above the first threshold boxed, above the second starred.

    The title gives the share of heads above each threshold.
    """
    from ..plots import score_heatmap

    scores = torch.as_tensor(scores).float()
    ax = score_heatmap(scores, ax=ax, annotate_top=0)
    lo, hi = thresholds
    for l, h in (scores > lo).nonzero().tolist():
        ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, ec="white", lw=1.2))
    strong = (scores > hi).nonzero()
    if len(strong):
        ax.plot(strong[:, 1], strong[:, 0], "*", color="#d73027", ms=8)
    shares = ", ".join(f"> {t}: {share_above(scores, t):.1%}" for t in thresholds)
    ax.set_title(title or f"retrieval score per head ({shares} of heads)", fontsize=9)
    return ax


def _hex(value: float, vmax: float = 1.0) -> str:
    r, g, b, _ = plt.get_cmap("viridis")(min(max(value / vmax, 0.0), 1.0))
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def score_map_explorer(scores, on_select: Callable | object | None = None, threshold: float = 0.1,
                       vmax: float = 1.0, static: bool | None = None):
    """Clickable layer x head score map with a threshold slider.

    Each cell is a button coloured by the head's score (viridis, as the static heatmap);
    heads above the threshold show a dot. Clicking a cell (or choosing a head in the menu)
    calls ``on_select(layer, head)``; pass a head explorer to open the head there.

    Args:
        scores: ``[n_layers, n_heads]`` mean retrieval scores.
        on_select: a callable ``(layer, head)``, or an explorer with ``.select_head``.
        threshold: initial threshold (the paper uses 0.1 for retrieval heads, 0.5 for strong).

    Returns:
        an ``ipywidgets.VBox`` with ``.controls`` (``threshold``, ``menu``), ``.cells``
        (``{(layer, head): Button}``), ``.views`` (``share``, ``selected``) and ``.state``
        (``selected``); or, in static mode, the :func:`plot_score_map` figure.
    """
    scores = torch.as_tensor(scores).float()
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_layers, n_heads], got shape {tuple(scores.shape)}.")
    if use_static(static):
        n_layers, n_heads = scores.shape
        fig, ax = plt.subplots(figsize=(max(4, 0.35 * n_heads + 2), min(9, 0.16 * n_layers + 1.8)))
        plot_score_map(scores, ax=ax)
        fig.tight_layout()
        return static_figure(fig)
    import ipywidgets as w

    callback: Any = getattr(on_select, "select_head", on_select)
    n_layers, n_heads = scores.shape
    from ...score.heads import head_table

    table = head_table(scores)
    controls = {
        "threshold": w.FloatSlider(value=threshold, min=0.0, max=1.0, step=0.05,
                                   description="threshold", readout_format=".2f"),
        "menu": w.Dropdown(options=[(f"{n} ({s:.2f})", (int(l), int(h))) for n, s, l, h in
                                    zip(table["name"], table["score"], table["layer"], table["head"])],
                           value=None, description="open head"),
    }
    views = {"share": w.HTML(), "selected": w.HTML()}
    state: dict[str, Any] = {"selected": None}
    cells = {}
    grid_children = []
    for layer in reversed(range(n_layers)):  # top row = last layer, like the heatmap
        grid_children.append(w.HTML(f"<small>L{layer}</small>", layout=w.Layout(width="32px")))
        for head in range(n_heads):
            s = float(scores[layer, head])
            b = w.Button(description="", tooltip=f"{head_name(layer, head)}: {s:.2f}",
                         layout=w.Layout(width="26px", height="18px", padding="0", margin="0"))
            b.style.button_color = _hex(s, vmax)
            b.head = (layer, head)
            b.on_click(lambda btn: select(*btn.head))
            cells[(layer, head)] = b
            grid_children.append(b)
    grid_children.append(w.HTML(""))
    grid_children += [w.HTML(f"<small>H{h}</small>", layout=w.Layout(width="26px")) for h in range(n_heads)]
    grid = w.GridBox(grid_children, layout=w.Layout(
        grid_template_columns=f"32px repeat({n_heads}, 26px)", grid_gap="1px"))

    from ...analyze.published import share_range

    def on_threshold(*_):
        t = controls["threshold"].value
        n_above = int((scores > t).sum())
        lo, hi = share_range(t)
        views["share"].value = (f"<b>{n_above}</b> of {scores.numel()} heads "
                                f"(<b>{n_above / scores.numel():.1%}</b>) score above {t:.2f}; "
                                f"in the paper's seven published maps: {lo:.1%} to {hi:.1%}.")
        for (layer, head), b in cells.items():
            b.description = "•" if float(scores[layer, head]) > t else ""

    def select(layer: int, head: int):
        state["selected"] = (layer, head)
        views["selected"].value = (f"selected <b>{head_name(layer, head)}</b>, score "
                                   f"{float(scores[layer, head]):.2f}")
        if callback is not None:
            callback(layer, head)

    def on_menu(change):
        if change["new"] is not None:
            select(*change["new"])

    controls["threshold"].observe(on_threshold, names="value")
    controls["menu"].observe(on_menu, names="value")
    ui = w.VBox([w.HBox([controls["threshold"], controls["menu"]]), views["share"], grid,
                 views["selected"]])
    ui.controls, ui.cells, ui.views, ui.state, ui.select = controls, cells, views, state, select
    on_threshold()
    return ui
