"""The head explorer: where one head looks at every decode step while the answer is written.

Pick a sample and a head, slide through the decode steps: the needle span is highlighted, the
top-attended token named and copy-paste steps flagged. Static twin: :func:`plot_head_steps`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from ...niah.prompts import Sample
from ...run.decode import DecodeTrace, greedy_decode
from ...score.heads import head_name
from .common import SINK, static_figure, use_static


@dataclass
class HeadData:
    """Samples, their decode traces and the recorded attention rows the head explorer reads.

    Rows missing from a trace are recorded on demand (one more greedy decode of that sample
    with ``record_rows=[(layer, head)]``) when a model is given; greedy decoding is
    deterministic, so the generated tokens are the same.
    """

    samples: list[Sample]
    traces: list[DecodeTrace]
    tokenizer: Any
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
        from ...score.heads import head_table

        table = head_table(torch.as_tensor(scores)).head(top)
        return [(int(l), int(h)) for l, h in zip(table["layer"], table["head"])]
    if model_cfg is not None and model_cfg.n_layers * model_cfg.n_heads <= 64:
        return [(l, h) for l in range(model_cfg.n_layers) for h in range(model_cfg.n_heads)]
    raise ValueError("Tell the explorer which heads to show: pass scores= (it offers the top "
                     "heads) or heads=[(layer, head), ...].")


def head_data(model, samples, traces=None, *, heads=None, scores=None, top: int = 8,
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
        share = mass.clamp(min=0).numpy()
        bx.barh(range(steps), share, left=left, color=color, label=label)
        left += share
    bx.set_ylim(steps - 0.5, -0.5)
    bx.set_yticks([])
    bx.set_xlim(0, 1)
    bx.set_xlabel("attention mass")
    bx.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def head_explorer(model, samples, traces=None, *, scores=None, heads=None, top: int = 8,
                  max_new_tokens: int = 32, decode_hooks: Sequence = (), tokenizer=None,
                  static: bool | None = None):
    """Watch one head while the model writes its answer.

    Args:
        model: the ``TransformerBridge`` (used to decode, and to record heads on demand);
            may be ``None`` when ``traces`` and ``tokenizer`` are given.
        samples: a :class:`~rhlens.niah.prompts.Sample` or a list of them.
        traces: their :class:`~rhlens.run.decode.DecodeTrace` (``record_rows`` must hold the heads
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
    data, heads = head_data(model, samples, traces, heads=heads, scores=scores, top=top,
                            max_new_tokens=max_new_tokens, decode_hooks=decode_hooks,
                            tokenizer=tokenizer)
    if use_static(static):
        return static_figure(plot_head_steps(data, 0, *heads[0]))
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
