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

from .common import STATIC_ENV, use_static
from .heads import (
                    HeadData,
                    StepView,
                    answer_html,
                    context_html,
                    head_data,
                    head_explorer,
                    info_html,
                    plot_head_steps,
                    plot_step,
                    step_view,
)
from .masking import (
                    MASKING_COLUMNS,
                    check_masking_frame,
                    masking_explorer,
                    masking_html,
                    masking_row,
                    plot_masking,
)
from .score_map import plot_score_map, score_map_explorer

__all__ = [
    "STATIC_ENV", "use_static", "HeadData", "StepView", "answer_html", "context_html",
    "head_data", "head_explorer", "info_html", "plot_head_steps", "plot_step", "step_view",
    "MASKING_COLUMNS", "check_masking_frame", "masking_explorer", "masking_html", "masking_row",
    "plot_masking", "plot_score_map", "score_map_explorer",
]
