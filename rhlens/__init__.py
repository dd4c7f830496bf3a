"""rhlens: find, mask and patch retrieval heads (Wu et al. 2024, arXiv 2404.15574).

The package follows the paper's pipeline::

    haystack -> decode -> scoring/detect -> ablation/patching -> niah -> plotting

>>> import rhlens
>>> rhlens.retrieval_scores.__module__
'rhlens.scoring'
"""

from .decode import DecodeTrace, greedy_decode
from .detect import NoPassingSampleError, ScoreRun, detect_retrieval_heads, score_sample
from .haystack import NEEDLES, Needle, Sample, build_sample, default_haystack, load_haystack, load_needles
from .models import PAPER_MODELS, load_model, tiny_model
from .niah import niah_score, rouge1_recall
from .results import load_scores
from .scoring import copy_hits, head_table, retrieval_scores, summarize

__version__ = "0.1.0"

__all__ = [
    "DecodeTrace", "greedy_decode", "NoPassingSampleError", "ScoreRun",
    "detect_retrieval_heads", "score_sample", "NEEDLES", "Needle", "Sample", "build_sample",
    "default_haystack", "load_haystack", "load_needles", "PAPER_MODELS", "load_model",
    "tiny_model", "niah_score", "rouge1_recall", "load_scores", "copy_hits", "head_table",
    "retrieval_scores", "summarize",
]
