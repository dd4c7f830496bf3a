"""rhlens: find, mask and patch retrieval heads (Wu et al. 2024, arXiv 2404.15574).

The package follows the paper's pipeline::

    haystack/prompts/grid -> decode -> scoring/detect -> ablation (Mask)/patching -> niah -> plotting

One home per idea: :mod:`rhlens.heads` (naming, choosing and comparing heads),
:mod:`rhlens.answers` (ROUGE, F1, answer classes), :mod:`rhlens.grid` (:class:`Grid`),
:mod:`rhlens.ablation` (:class:`Mask`), :mod:`rhlens.decode` (every greedy decode).

Names are imported on first use, so ``import rhlens`` (and the ``rhlens`` command's
``--help`` and usage errors) do not wait for torch.

>>> import rhlens
>>> rhlens.retrieval_scores.__module__
'rhlens.scoring'
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

#: ``name -> submodule`` of every name the package exports.
_EXPORTS = {
    "Mask": "ablation", "Grid": "grid",
    "DecodeTrace": "decode", "greedy_decode": "decode",
    "NoPassingSampleError": "detect", "ScoreRun": "detect",
    "detect_retrieval_heads": "detect", "score_sample": "detect",
    "NEEDLES": "haystack", "Needle": "haystack", "Sample": "prompts",
    "build_sample": "prompts", "default_haystack": "haystack", "load_haystack": "haystack",
    "load_needles": "haystack",
    "PAPER_MODELS": "models", "load_model": "models", "tiny_model": "tiny",
    "niah_score": "answers", "rouge1_recall": "answers",
    "load_scores": "results",
    "copy_hits": "scoring", "retrieval_scores": "scoring",
    "head_table": "heads", "summarize": "heads",
    "notebook": "runtime",
}

try:
    __version__ = version("rhlens")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:  # rhlens.haystack etc. without importing the submodule first
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
