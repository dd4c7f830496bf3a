"""rhlens: find, mask and patch retrieval heads (Wu et al. 2024, arXiv 2404.15574).

The package reads as the paper's pipeline, one subpackage per step, each importing only from
those before it::

    niah -> models -> run -> score -> intervene -> analyze -> apps -> viz -> book, toy -> cli

* :mod:`rhlens.niah`: needles, haystacks, prompts, the :class:`~rhlens.niah.grid.Grid` of
  prompts, and how answers score;
* :mod:`rhlens.models`: the paper's checkpoints and the embedded SmolLM2 as TransformerLens
  bridges, their RoPE surgery, tiny random-weight stand-ins;
* :mod:`rhlens.run`: greedy decoding, hook names, resumable sample logs, shards, result files,
  and the one resumable sweep every experiment runs;
* :mod:`rhlens.score`: the retrieval score, the detection run (:class:`~rhlens.score.detect.ScoreConfig`),
  the heads it ranks, and three other head detectors
  (:class:`~rhlens.score.detector_maps.DetectorConfig`);
* :mod:`rhlens.intervene`: the one head edit, masks, NIAH under masks
  (:class:`~rhlens.intervene.niah.NiahConfig`), failure modes, activation patching
  (:class:`~rhlens.intervene.patch_sweep.PatchConfig`), direct logit attribution, and the
  detectors held against masking and patching (:class:`~rhlens.intervene.detector_eval.EvalConfig`);
* :mod:`rhlens.analyze`: score maps from any source, the paper's published maps, statistics,
  comparisons;
* :mod:`rhlens.apps`: downstream tasks under masks, KV-cache compression;
* :mod:`rhlens.viz`: figures and explorers; :mod:`rhlens.book`: the chapters' runtime switch and
  exercise checkers; :mod:`rhlens.toy`: toy models; :mod:`rhlens.cli`: the ``rhlens`` command.

Names are imported on first use, so ``import rhlens`` (and the ``rhlens`` command's
``--help`` and usage errors) do not wait for torch.

>>> import rhlens
>>> rhlens.retrieval_scores.__module__
'rhlens.score.scoring'
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

#: ``name -> submodule`` of every name the package exports.
_EXPORTS = {
    "Mask": "intervene.mask", "Grid": "niah.grid",
    "DecodeTrace": "run.decode", "greedy_decode": "run.decode",
    "NoPassingSampleError": "errors", "ScoreRun": "score.detect",
    "detect_retrieval_heads": "score.detect", "score_sample": "score.detect",
    "ScoreConfig": "score.detect", "NiahConfig": "intervene.niah",
    "PatchConfig": "intervene.patch_sweep",
    "NEEDLES": "niah.haystack", "Needle": "niah.haystack", "Sample": "niah.prompts",
    "build_sample": "niah.prompts", "default_haystack": "niah.haystack",
    "load_haystack": "niah.haystack", "load_needles": "niah.haystack",
    "PAPER_MODELS": "models.registry", "load_model": "models.loading",
    "tiny_model": "models.tiny",
    "niah_score": "niah.answers", "rouge1_recall": "niah.answers",
    "load_scores": "run.results",
    "copy_hits": "score.scoring", "retrieval_scores": "score.scoring",
    "head_table": "score.heads", "summarize": "score.heads",
    "read_card": "run.card", "head_intervals": "score.uncertainty", "UntilStable": "score.stopping",
    "DETECTORS": "score.detectors", "DetectorConfig": "score.detector_maps",
    "detect_heads": "score.detector_maps", "EvalConfig": "intervene.detector_eval",
    "compare_detectors": "analyze.detectors",
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
        try:  # rhlens.niah.haystack etc. without importing the submodule first
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
