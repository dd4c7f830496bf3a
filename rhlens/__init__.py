"""rhlens: find, mask and patch retrieval heads (Wu et al. 2024, arXiv 2404.15574).

The package follows the paper's pipeline::

    haystack -> decode -> scoring/detect -> ablation/patching -> niah -> plotting

Names are imported on first use, so ``import rhlens`` (and the ``rhlens`` command's
``--help`` and usage errors) do not wait for torch.

>>> import rhlens
>>> rhlens.retrieval_scores.__module__
'rhlens.scoring'
"""

import importlib

#: ``name -> submodule`` of every name the package exports.
_EXPORTS = {
    "DecodeTrace": "decode", "greedy_decode": "decode",
    "NoPassingSampleError": "detect", "ScoreRun": "detect",
    "detect_retrieval_heads": "detect", "score_sample": "detect",
    "NEEDLES": "haystack", "Needle": "haystack", "Sample": "haystack",
    "build_sample": "haystack", "default_haystack": "haystack", "load_haystack": "haystack",
    "load_needles": "haystack",
    "PAPER_MODELS": "models", "load_model": "models", "tiny_model": "models",
    "niah_score": "niah", "rouge1_recall": "niah",
    "load_scores": "results",
    "copy_hits": "scoring", "head_table": "scoring", "retrieval_scores": "scoring",
    "summarize": "scoring",
}

__version__ = "0.1.0"

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
