"""Interactive explorers (ipywidgets) for heads, decode steps and masking, each with a static twin.

Three explorers, each a function that returns an ipywidgets UI:

- :func:`head_explorer`: pick a sample and a head, slide through the decode steps, and watch
  where the head looks while the answer is written (needle span highlighted, top-attended
  token named, copy-paste steps flagged).
- :func:`masking_explorer`: slide over K masked heads (top-K or K random, with a seed) and read
  the answer, its NIAH score and its class from precomputed runs.
- :func:`score_map_explorer`: the layer x head score map as a grid of clickable cells, with a
  threshold slider; a click opens the head in a head explorer.

A built book page cannot run Python callbacks, so each explorer falls back to a static
matplotlib figure of the same data (:func:`plot_head_steps`, :func:`plot_masking`,
:func:`plot_score_map`) when ``static=True``, when ipywidgets is not installed, or when the
environment variable ``RHLENS_STATIC=1`` is set (the book build sets it). In static mode the
explorer returns the (closed) figure, so make the call the last line of its cell.

Example::

    >>> trace = greedy_decode(model, sample.input_ids, record_rows=[(17, 3)])   # doctest: +SKIP
    >>> head_explorer(model, sample, trace, heads=[(17, 3)])                    # doctest: +SKIP
"""

from __future__ import annotations

import html
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .decode import DecodeTrace, greedy_decode
from .haystack import Sample

STATIC_ENV = "RHLENS_STATIC"
CLASSES = ("complete", "incomplete", "hallucinated")
CLASS_COLORS = {"complete": "#1a9850", "incomplete": "#fdae61", "hallucinated": "#d73027"}
MASKING_COLUMNS = ("k", "kind", "seed", "answer", "score", "class")
SINK = 4  # the first tokens, where heads park attention when they find nothing (attention sink)


def use_static(static: bool | None = None) -> bool:
    """Whether explorers should return static figures.

    ``static`` wins when given; otherwise static when ``RHLENS_STATIC`` is set to anything
    but ``""``/``"0"`` or when ipywidgets is not installed.
    """
    if static is not None:
        return bool(static)
    if os.environ.get(STATIC_ENV, "") not in ("", "0"):
        return True
    return importlib.util.find_spec("ipywidgets") is None


def _static(fig):
    """Close ``fig`` (so Jupyter does not show it twice) and return it for display."""
    plt.close(fig)
    return fig


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


# --------------------------------------------------------------------------- answer classes


def classify_score(score: float) -> str:
    """Class of a NIAH score (ROUGE-1 recall x 100): 100 complete, 0 hallucinated, else incomplete.

    >>> [classify_score(s) for s in (100.0, 50.0, 0.0)]
    ['complete', 'incomplete', 'hallucinated']
    """
    if score >= 100.0 - 1e-9:
        return "complete"
    if score <= 1e-9:
        return "hallucinated"
    return "incomplete"


# --------------------------------------------------------------------------- head explorer data


@dataclass
class HeadData:
    """Samples, their decode traces and the recorded attention rows the head explorer reads.

    Rows missing from a trace are recorded on demand (one more greedy decode of that sample
    with ``record_rows=[(layer, head)]``) when a model is given; greedy decoding is
    deterministic, so the generated tokens are the same.
    """

    samples: list[Sample]
    traces: list[DecodeTrace]
    tokenizer: object
    model: object = None
    max_new_tokens: int = 32
    decode_hooks: Sequence = ()
    extra: dict = field(default_factory=dict)

    def row(self, index: int, layer: int, head: int) -> torch.Tensor:
        """``[T, n + T]`` attention rows of head ``(layer, head)`` on sample ``index``."""
        trace = self.traces[index]
        if (layer, head) not in trace.rows:
            if self.model is None:
                raise KeyError(
                    f"{head_name(layer, head)} was not recorded for sample {index}; pass the "
                    "model to the explorer, or decode with record_rows=[(layer, head), ...]."
                )
            again = greedy_decode(self.model, self.samples[index].input_ids,
                                  max_new_tokens=self.max_new_tokens,
                                  decode_hooks=self.decode_hooks, record_rows=[(layer, head)])
            if not torch.equal(again.tokens, trace.tokens):
                raise RuntimeError("Decoding again gave a different answer; pass the same "
                                   "decode_hooks that produced the trace.")
            trace.rows[(layer, head)] = again.rows[(layer, head)]
        return trace.rows[(layer, head)]

    def token_text(self, ids) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]


@dataclass
class StepView:
    """What the head explorer shows at one decode step (also used by the static figure)."""

    step: int
    token: str  # the token generated at this step
    attention: np.ndarray  # [n_keys] the head's row over the keys it can see
    top: int  # most-attended key position
    top_token: str
    in_needle: bool
    copy: bool  # top key in the needle and holding the generated token
    needle_mass: float
    sink_mass: float


def step_view(data: HeadData, index: int, layer: int, head: int, step: int) -> StepView:
    """The head's attention at decode step ``step`` of sample ``index``.

    At step ``t`` the query sees the ``n + t`` keys: the prompt and the ``t`` tokens
    generated before it.
    """
    sample, trace = data.samples[index], data.traces[index]
    n = trace.prompt_ids.numel()
    row = data.row(index, layer, head)[step, : n + step].float().numpy()
    top = int(row.argmax())
    all_ids = torch.cat([trace.prompt_ids, trace.tokens])
    start, end = sample.needle_span
    token = int(trace.tokens[step])
    in_needle = start <= top < end
    return StepView(
        step=step,
        token=data.tokenizer.decode([token]),
        attention=row,
        top=top,
        top_token=data.tokenizer.decode([int(all_ids[top])]),
        in_needle=in_needle,
        copy=in_needle and int(trace.prompt_ids[top]) == token,
        needle_mass=float(row[start:end].sum()),
        sink_mass=float(row[:SINK].sum()),
    )


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _choose_heads(model_cfg, scores, heads, top) -> list[tuple[int, int]]:
    if heads is not None:
        return [(int(l), int(h)) for l, h in heads]
    if scores is not None:
        from .scoring import head_table

        table = head_table(torch.as_tensor(scores)).head(top)
        return [(int(l), int(h)) for l, h in zip(table["layer"], table["head"])]
    if model_cfg is not None and model_cfg.n_layers * model_cfg.n_heads <= 64:
        return [(l, h) for l in range(model_cfg.n_layers) for h in range(model_cfg.n_heads)]
    raise ValueError("Tell the explorer which heads to show: pass scores= (it offers the top "
                     "heads) or heads=[(layer, head), ...].")


def head_data(model, samples, traces=None, heads=None, scores=None, top: int = 8,
              max_new_tokens: int = 32, decode_hooks: Sequence = (), tokenizer=None) -> tuple[HeadData, list]:
    """Decode (or reuse traces of) ``samples`` recording only the rows of the chosen heads.

    Returns ``(data, heads)``. ``heads`` defaults to the ``top`` best heads of ``scores``
    (``[n_layers, n_heads]``), or every head of a model with at most 64 heads.
    """
    samples = _as_list(samples)
    if not samples:
        raise ValueError("Give at least one Sample (rhlens.build_sample(...)).")
    cfg = getattr(model, "cfg", None)
    heads = _choose_heads(cfg, scores, heads, top)
    traces = _as_list(traces)
    if traces and len(traces) != len(samples):
        raise ValueError(f"Got {len(traces)} traces for {len(samples)} samples; give one per sample.")
    if not traces:
        if model is None:
            raise ValueError("Give the model (to decode the samples) or their traces.")
        traces = [greedy_decode(model, s.input_ids, max_new_tokens=max_new_tokens,
                                decode_hooks=decode_hooks, record_rows=heads) for s in samples]
    for i, trace in enumerate(traces):
        if trace.tokens.numel() == 0:
            raise ValueError(f"Sample {i} generated no token; there is no decode step to show.")
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("Give tokenizer= when no model is given.")
    data = HeadData(samples, traces, tokenizer, model=model, max_new_tokens=max_new_tokens,
                    decode_hooks=decode_hooks)
    return data, heads


# --------------------------------------------------------------------------- head explorer views


def answer_html(data: HeadData, index: int, step: int | None = None, copies=()) -> str:
    """The generated answer as HTML, the token of ``step`` marked, copy-paste steps underlined."""
    parts = []
    for t, text in enumerate(data.token_text(data.traces[index].tokens)):
        text = html.escape(text)
        style = "text-decoration: underline;" if t in copies else ""
        if t == step:
            parts.append(f'<mark style="background:#ffd54f;{style}"><b>{text}</b></mark>')
        else:
            parts.append(f'<span style="{style}">{text}</span>')
    return "<div style='font-family:monospace'><b>answer:</b> " + "".join(parts) + "</div>"


def context_html(data: HeadData, index: int, view: StepView, margin: int = 12) -> str:
    """Tokens around the needle (and the first tokens), shaded by the head's attention.

    The needle is boxed; the most-attended token is bold and red.
    """
    sample, trace = data.samples[index], data.traces[index]
    all_ids = torch.cat([trace.prompt_ids, trace.tokens])
    start, end = sample.needle_span
    peak = max(float(view.attention.max()), 1e-9)
    windows = [(0, min(SINK, start)), (max(0, start - margin), min(len(view.attention), end + margin))]
    if not windows[1][0] <= view.top < windows[1][1] and view.top >= SINK:
        windows.append((max(0, view.top - 3), min(len(view.attention), view.top + 4)))
    windows = sorted(w for w in windows if w[1] > w[0])
    chunks, last = [], 0
    for lo, hi in windows:
        lo = max(lo, last)
        if lo >= hi:
            continue
        if lo > last:
            chunks.append('<span style="color:#999"> … </span>')
        for pos in range(lo, hi):
            a = float(view.attention[pos]) / peak
            text = html.escape(data.tokenizer.decode([int(all_ids[pos])])).replace("\n", "⏎")
            style = f"background: rgba(33,102,172,{a:.2f});"
            if a > 0.6:
                style += "color:white;"
            if start <= pos < end:
                style += "border-top:2px solid #1a9850; border-bottom:2px solid #1a9850;"
            if pos == view.top:
                style += "font-weight:bold; outline:2px solid #d73027;"
            chunks.append(f'<span title="pos {pos}: {a * peak:.3f}" style="{style}">{text}</span>')
        last = hi
    return "<div style='font-family:monospace; line-height:1.8'>" + "".join(chunks) + "</div>"


def info_html(view: StepView, layer: int, head: int) -> str:
    verdict = ("copy-paste from the needle" if view.copy
               else "looks inside the needle" if view.in_needle else "looks outside the needle")
    return (f"<b>{head_name(layer, head)}</b>, step {view.step}: writes "
            f"<code>{html.escape(repr(view.token))}</code>; top-attended token "
            f"<code>{html.escape(repr(view.top_token))}</code> at position {view.top} "
            f"(weight {view.attention[view.top]:.2f}) &rarr; <b>{verdict}</b>. "
            f"Attention on the needle {view.needle_mass:.0%}, on the first {SINK} tokens "
            f"{view.sink_mass:.0%}.")


def plot_step(data: HeadData, index: int, view: StepView, layer: int, head: int, ax=None):
    """The head's attention over every key at one decode step, needle span shaded."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 2.6))
    sample, trace = data.samples[index], data.traces[index]
    n = trace.prompt_ids.numel()
    start, end = sample.needle_span
    ax.axvspan(start - 0.5, end - 0.5, color="#1a9850", alpha=0.2, label="needle")
    ax.plot(np.arange(len(view.attention)), view.attention, lw=0.8, color="#2166ac")
    if len(view.attention) > n:
        ax.axvline(n - 0.5, color="gray", ls=":", lw=0.8)
    ax.plot([view.top], [view.attention[view.top]], "o", color="#d73027")
    ax.annotate(repr(view.top_token), (view.top, view.attention[view.top]), xytext=(4, -12),
                textcoords="offset points", color="#d73027", fontsize=9)
    ax.set_xlim(-0.5, n + trace.tokens.numel())
    ax.set_ylim(0, 1.05 * max(float(view.attention.max()), 1e-3) + 0.05)
    ax.set_xlabel("key position (prompt, then generated tokens)")
    ax.set_ylabel("attention")
    ax.set_title(f"{head_name(layer, head)} at decode step {view.step} (writes {view.token!r})")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_head_steps(data: HeadData, index: int, layer: int, head: int, margin: int = 6, fig=None):
    """Static figure of one head over all decode steps of one sample.

    Left: the head's attention (rows = decode steps, labelled by the token written) over the
    needle and ``margin`` tokens either side; the most-attended key of each step is marked
    (a circle when it is a copy-paste). Right: where the attention mass goes per step
    (first tokens, needle, rest of the prompt, generated tokens).
    """
    sample, trace = data.samples[index], data.traces[index]
    n = trace.prompt_ids.numel()
    steps = trace.tokens.numel()
    start, end = sample.needle_span
    lo, hi = max(0, start - margin), min(n, end + margin)
    rows = data.row(index, layer, head)[:, : n + steps].float()
    views = [step_view(data, index, layer, head, t) for t in range(steps)]
    if fig is None:
        fig = plt.figure(figsize=(min(14, 3 + 0.3 * (hi - lo)) + 3.5, 1.2 + 0.28 * steps))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(4, 0.3 * (hi - lo)), 3]})
    ax.imshow(rows[:, lo:hi].numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1,
              interpolation="nearest")
    ax.axvline(start - lo - 0.5, color="#1a9850", lw=1.5)
    ax.axvline(end - lo - 0.5, color="#1a9850", lw=1.5)
    for v in views:
        if lo <= v.top < hi:
            ax.plot(v.top - lo, v.step, "o" if v.copy else "x", color="#d73027",
                    mfc="none", ms=7)
    ax.set_xticks(range(hi - lo))
    ax.set_xticklabels([t.replace("\n", "⏎") for t in data.token_text(trace.prompt_ids[lo:hi])],
                       rotation=90, fontsize=7)
    ax.set_yticks(range(steps))
    ax.set_yticklabels([repr(t) for t in data.token_text(trace.tokens)], fontsize=7)
    ax.set_xlabel("prompt tokens around the needle (green lines: needle span)")
    ax.set_ylabel("decode step (token written)")
    copies = sum(v.copy for v in views)
    ax.set_title(f"{head_name(layer, head)}: {copies}/{steps} copy-paste steps "
                 "(o copy, x top key elsewhere in view)", fontsize=9)
    parts = {
        f"first {SINK}": rows[:, :SINK].sum(-1),
        "needle": rows[:, start:end].sum(-1),
        "rest of prompt": rows[:, :n].sum(-1) - rows[:, :SINK].sum(-1) - rows[:, start:end].sum(-1),
        "generated": rows[:, n:].sum(-1),
    }
    left = np.zeros(steps)
    for (label, mass), color in zip(parts.items(), ["#999999", "#1a9850", "#92c5de", "#fdae61"]):
        mass = mass.clamp(min=0).numpy()
        bx.barh(range(steps), mass, left=left, color=color, label=label)
        left += mass
    bx.set_ylim(steps - 0.5, -0.5)
    bx.set_yticks([])
    bx.set_xlim(0, 1)
    bx.set_xlabel("attention mass")
    bx.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def head_explorer(model, samples, traces=None, scores=None, heads=None, top: int = 8,
                  max_new_tokens: int = 32, decode_hooks: Sequence = (), tokenizer=None,
                  static: bool | None = None):
    """Watch one head while the model writes its answer.

    Args:
        model: the ``TransformerBridge`` (used to decode, and to record heads on demand);
            may be ``None`` when ``traces`` and ``tokenizer`` are given.
        samples: a :class:`~rhlens.haystack.Sample` or a list of them.
        traces: their :class:`~rhlens.decode.DecodeTrace` (``record_rows`` must hold the heads
            you want to see), one per sample; decoded here when ``None``.
        scores: ``[n_layers, n_heads]`` retrieval scores: the menu offers the ``top`` best heads.
        heads: ``[(layer, head), ...]`` to offer instead.
        decode_hooks: hooks that were active when decoding (e.g. a head mask).
        static: force the static figure (``True``) or widgets (``False``); see :func:`use_static`.

    Returns:
        an ``ipywidgets.VBox`` with ``.controls`` (``sample``, ``menu``, ``layer``, ``head``,
        ``step``), ``.views`` (``answer``, ``info``, ``context``, ``plot``), ``.state`` (the
        current :class:`StepView` and figure) and ``.select_head(layer, head)``; or, in static
        mode, the :func:`plot_head_steps` figure of the first head on the first sample.
    """
    data, heads = head_data(model, samples, traces, heads, scores, top, max_new_tokens,
                            decode_hooks, tokenizer)
    if use_static(static):
        return _static(plot_head_steps(data, 0, *heads[0]))
    import ipywidgets as w
    from IPython.display import display

    score_of = {}
    if scores is not None:
        scores = torch.as_tensor(scores)
        score_of = {(l, h): float(scores[l, h]) for l, h in heads}
    menu_options = [(f"{head_name(l, h)}" + (f"  ({score_of[(l, h)]:.2f})" if score_of else ""),
                     (l, h)) for l, h in heads]
    _, n_layers, n_heads = data.traces[0].argmax.shape  # [T, n_layers, n_heads]
    sample_options = [(f"{i}: {s.length} tokens, depth {s.depth:g}, {s.needle.answer!r}", i)
                      for i, s in enumerate(data.samples)]
    controls = {
        "sample": w.Dropdown(options=sample_options, value=0, description="sample"),
        "menu": w.Dropdown(options=menu_options, value=heads[0], description="top heads"),
        "layer": w.BoundedIntText(value=heads[0][0], min=0, max=n_layers - 1, description="layer",
                                  layout=w.Layout(width="150px")),
        "head": w.BoundedIntText(value=heads[0][1], min=0, max=n_heads - 1, description="head",
                                 layout=w.Layout(width="150px")),
        "step": w.IntSlider(value=0, min=0, max=data.traces[0].tokens.numel() - 1,
                            description="decode step", continuous_update=True),
    }
    play = w.Play(value=0, min=0, max=controls["step"].max, interval=700, description="play")
    w.jslink((play, "value"), (controls["step"], "value"))
    views = {"answer": w.HTML(), "info": w.HTML(), "context": w.HTML(), "plot": w.Output()}
    state = {"view": None, "figure": None, "busy": False}

    def render(*_):
        if state["busy"]:
            return
        i, layer, head = controls["sample"].value, controls["layer"].value, controls["head"].value
        step = controls["step"].value
        try:
            view = step_view(data, i, layer, head, step)
        except KeyError as err:
            views["info"].value = f"<span style='color:#d73027'>{html.escape(str(err))}</span>"
            return
        copies = {t for t in range(data.traces[i].tokens.numel())
                  if step_view(data, i, layer, head, t).copy}
        state["view"] = view
        views["answer"].value = answer_html(data, i, step, copies)
        views["info"].value = info_html(view, layer, head)
        views["context"].value = context_html(data, i, view)
        with views["plot"]:
            views["plot"].clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(9, 2.6))
            plot_step(data, i, view, layer, head, ax=ax)
            fig.tight_layout()
            state["figure"] = fig
            display(fig)
            plt.close(fig)

    def on_sample(change):
        state["busy"] = True
        steps = data.traces[change["new"]].tokens.numel()
        controls["step"].value = min(controls["step"].value, steps - 1)
        controls["step"].max = play.max = steps - 1
        state["busy"] = False
        render()

    def on_menu(change):
        select_head(*change["new"])

    def select_head(layer: int, head: int):
        """Show head ``(layer, head)`` (recorded on demand when the model is known)."""
        state["busy"] = True
        controls["layer"].value, controls["head"].value = int(layer), int(head)
        state["busy"] = False
        render()

    controls["sample"].observe(on_sample, names="value")
    controls["menu"].observe(on_menu, names="value")
    for name in ("layer", "head", "step"):
        controls[name].observe(render, names="value")
    ui = w.VBox([
        controls["sample"],
        w.HBox([controls["menu"], controls["layer"], controls["head"]]),
        w.HBox([controls["step"], play]),
        views["answer"], views["info"], views["context"], views["plot"],
    ])
    ui.controls, ui.views, ui.state, ui.data = controls, views, state, data
    ui.select_head = select_head
    render()
    return ui


# --------------------------------------------------------------------------- masking explorer


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
        return _static(ax.figure)
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


# --------------------------------------------------------------------------- score map explorer


def share_above(scores: torch.Tensor, threshold: float) -> float:
    """Fraction of heads whose score exceeds ``threshold``.

    >>> share_above(torch.tensor([[0.0, 0.2], [0.6, 0.05]]), 0.1)
    0.5
    """
    return float((torch.as_tensor(scores) > threshold).double().mean())


def plot_score_map(scores, thresholds=(0.1, 0.5), ax=None, title: str | None = None):
    """Layer x head heatmap; heads above the first threshold boxed, above the second starred.

    The title gives the share of heads above each threshold.
    """
    from .plotting import score_heatmap

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
        return _static(fig)
    import ipywidgets as w

    callback = getattr(on_select, "select_head", on_select)
    n_layers, n_heads = scores.shape
    from .scoring import head_table

    table = head_table(scores)
    controls = {
        "threshold": w.FloatSlider(value=threshold, min=0.0, max=1.0, step=0.05,
                                   description="threshold", readout_format=".2f"),
        "menu": w.Dropdown(options=[(f"{n} ({s:.2f})", (int(l), int(h))) for n, s, l, h in
                                    zip(table["name"], table["score"], table["layer"], table["head"])],
                           value=None, description="open head"),
    }
    views = {"share": w.HTML(), "selected": w.HTML()}
    state = {"selected": None}
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

    def on_threshold(*_):
        t = controls["threshold"].value
        n_above = int((scores > t).sum())
        views["share"].value = (f"<b>{n_above}</b> of {scores.numel()} heads "
                                f"(<b>{n_above / scores.numel():.1%}</b>) score above {t:.2f}. "
                                f"Paper: 3-6% above 0.1 in every model.")
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
