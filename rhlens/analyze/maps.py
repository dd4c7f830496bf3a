"""Where score maps come from: anything that holds one becomes a ``[n_layers, n_heads]`` tensor.

A :data:`ScoreSource` is a tensor, a score file (the public code's ``{"layer-head": [...]}``,
:func:`rhlens.run.results.load_scores`), its URL, such a dict, or the short name of one of the
paper's published maps (:mod:`rhlens.analyze.published`). Every comparison in
:mod:`rhlens.analyze` takes any of them.

>>> as_map("mistral-7b-v0.2").shape
torch.Size([32, 32])
>>> paired_maps(torch.zeros(2, 3), torch.zeros(3, 2))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: Score maps of different shapes (2, 3) and (3, 2): head-by-head comparison needs ...
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..run.results import load_scores
from ..score.heads import score_map
from .published import is_published, load_published

#: Anything that holds a score map: a ``[n_layers, n_heads]`` tensor, a score file, a URL, a
#: ``{"layer-head": [...]}`` dict, or the short name of a published map (``"mixtral-8x7b"``).
ScoreSource = str | Path | dict | torch.Tensor


def as_map(source: ScoreSource) -> torch.Tensor:
    """``[n_layers, n_heads]`` float64 map from a tensor, score file, URL, dict, or the short
    name of a published map (an existing file of that name wins)."""
    if isinstance(source, torch.Tensor):
        return score_map(source)
    if isinstance(source, (str, Path)) and is_published(str(source)) and not Path(source).exists():
        return load_published(str(source)).double()
    return load_scores(source).double()


def paired_maps(a: ScoreSource, b: ScoreSource) -> tuple[torch.Tensor, torch.Tensor]:
    """Two score maps as float64 tensors, checked to have the same shape."""
    x, y = as_map(a), as_map(b)
    if x.shape != y.shape:
        raise ValueError(
            f"Score maps of different shapes {tuple(x.shape)} and {tuple(y.shape)}: head-by-head "
            "comparison needs two models with the same layers x heads (as within a family)."
        )
    return x, y
