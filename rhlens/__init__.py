"""rhlens: find, mask and patch retrieval heads (Wu et al. 2024, arXiv 2404.15574).

The package follows the paper's pipeline::

    haystack/grid -> decode -> scoring/detect -> ablation (Mask)/patching -> niah -> plotting

One home per idea: :mod:`rhlens.heads` (naming, choosing and comparing heads),
:mod:`rhlens.answers` (ROUGE, F1, answer classes), :mod:`rhlens.grid` (:class:`Grid`),
:mod:`rhlens.ablation` (:class:`Mask`), :mod:`rhlens.decode` (every greedy decode).

>>> import rhlens
>>> rhlens.retrieval_scores.__module__
'rhlens.scoring'
"""

from importlib.metadata import PackageNotFoundError, version

from .ablation import Mask
from .answers import niah_score, rouge1_recall
from .decode import DecodeTrace, greedy_decode
from .detect import NoPassingSampleError, ScoreRun, detect_retrieval_heads, score_sample
from .grid import Grid
from .haystack import NEEDLES, Needle, Sample, build_sample, default_haystack, load_haystack, load_needles
from .heads import head_table, summarize
from .models import PAPER_MODELS, load_model
from .tiny import tiny_model
from .results import load_scores
from .scoring import copy_hits, retrieval_scores

try:
    __version__ = version("rhlens")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Mask", "Grid", "DecodeTrace", "greedy_decode", "NoPassingSampleError", "ScoreRun",
    "detect_retrieval_heads", "score_sample", "NEEDLES", "Needle", "Sample", "build_sample",
    "default_haystack", "load_haystack", "load_needles", "PAPER_MODELS", "load_model",
    "tiny_model", "niah_score", "rouge1_recall", "load_scores", "copy_hits", "head_table",
    "retrieval_scores", "summarize",
]
