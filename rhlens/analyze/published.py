"""The paper's published score maps of seven models, offline.

Wu et al. 2024 (arXiv 2404.15574) published one retrieval-score file per model in the
``head_score/`` folder of their repository (https://github.com/nightdessert/Retrieval_Head,
commit 7ea1f00a85825f0b3619a233f924c698b9d03a9f). The repository states no license, so
rhlens ships only figures derived from those files (``rhlens/data/published_heads.json``,
written by ``scripts/derive_published.py``): per head, the mean score over samples (the
score map), on how many samples it scored > 0 and > 0.1, and its largest score; per model,
the number of samples. Scores are the public code's (summing, over the samples that passed
its ROUGE gate).

The names are those of ``rhlens models``::

    >>> from rhlens.analyze.published import NAMES, load_published
    >>> NAMES[:3]
    ('llama-2-7b-80k', 'llama-2-13b-64k', 'mistral-7b-v0.2')
    >>> m = load_published("llama-2-7b-80k")     # a [n_layers, n_heads] score map
    >>> tuple(m.shape), round(float(m[16, 19]), 2)
    ((32, 32), 0.94)

The Mistral file is of the *base* Mistral-7B-v0.2 (``mistral-7b-v0.2``); chapters 7 and 9
run the Instruct model fine-tuned from it (``mistral-7b-instruct-v0.2``), which has no
published file: :func:`counterpart` names the published map to compare such a run with.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch

from .. import data
from ..models.registry import PAPER_MODELS
from ..score.heads import head_table, share_above, sparsity

#: Where the shipped figures come from (also in the data file's header).
SOURCE_REPOSITORY = "https://github.com/nightdessert/Retrieval_Head"
SOURCE_COMMIT = "7ea1f00a85825f0b3619a233f924c698b9d03a9f"
DATA_FILE = "published_heads.json"


@functools.lru_cache(maxsize=1)
def _data() -> dict:
    text = data.path(DATA_FILE).read_text()
    return json.loads(text)


def source() -> dict[str, str]:
    """Attribution of the shipped data: ``paper``, ``source``, ``license``, ``score``."""
    d = _data()
    return {k: d[k] for k in ("paper", "source", "license", "score", "derived_by")}


#: The published models, by rhlens short name, in the order of the paper's repository.
NAMES: tuple[str, ...] = tuple(_data()["models"])


@dataclass(frozen=True)
class PublishedModel:
    """One published score file, reduced.

    Attributes:
        name: rhlens short name (a key of :data:`rhlens.models.registry.PAPER_MODELS`).
        file: name of the source file in the paper's ``head_score/`` folder.
        samples: samples the file holds (those that passed the public code's ROUGE gate).
        silent_samples: samples on which no head scored above 0.
        scores: ``[n_layers, n_heads]`` mean score per head (the score map).
        count_above_0: ``[n_layers, n_heads]`` samples on which the head scored > 0.
        count_above_0_1: ``[n_layers, n_heads]`` samples on which it scored > 0.1.
        max_score: ``[n_layers, n_heads]`` the head's largest score on one sample.
    """

    name: str
    file: str
    samples: int
    silent_samples: int
    scores: torch.Tensor
    count_above_0: torch.Tensor
    count_above_0_1: torch.Tensor
    max_score: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        n_layers, n_heads = self.scores.shape
        return n_layers, n_heads

    @property
    def family(self) -> str:
        """The model family (``llama``, ``mistral``, ``qwen``, ``yi``), as the paper groups them."""
        return PAPER_MODELS[self.name].family

    def activation(self, above: float = 0.0) -> torch.Tensor:
        """Share of samples on which each head scored above ``above`` (0 or 0.1)."""
        counts = {0.0: self.count_above_0, 0.1: self.count_above_0_1}
        if above not in counts:
            raise ValueError(f"The shipped counts are of scores > 0 and > 0.1, not > {above}.")
        return counts[above].double() / self.samples


def check_name(name: str) -> str:
    """``name`` if a published map has it, else a ValueError that lists the valid names."""
    if name not in NAMES:
        raise ValueError(f"No published score map for {name!r}; the paper published "
                         f"{', '.join(NAMES)}.")
    return name


def is_published(name) -> bool:
    """Whether ``name`` is the short name of a published map."""
    return isinstance(name, str) and name in NAMES


@functools.cache
def published(name: str) -> PublishedModel:
    """The reduced published file of ``name`` (see :class:`PublishedModel`)."""
    rec = _data()["models"][check_name(name)]
    return PublishedModel(
        name=name, file=rec["file"], samples=rec["samples"],
        silent_samples=rec["silent_samples"],
        scores=torch.tensor(rec["mean"], dtype=torch.float32),
        count_above_0=torch.tensor(rec["count_above_0"], dtype=torch.int64),
        count_above_0_1=torch.tensor(rec["count_above_0_1"], dtype=torch.int64),
        max_score=torch.tensor(rec["max"], dtype=torch.float32),
    )


def load_published(name: str) -> torch.Tensor:
    """The published score map of ``name``: a ``[n_layers, n_heads]`` float tensor, the type
    :func:`rhlens.run.results.load_scores` and ``detect_retrieval_heads(...).scores`` return."""
    return published(name).scores.clone()


def published_maps(names=None) -> dict[str, torch.Tensor]:
    """``{name: score map}`` of ``names`` (default: all seven)."""
    return {n: load_published(n) for n in (NAMES if names is None else names)}


def families(names=None) -> dict[str, str]:
    """``{name: family}`` of the published models."""
    return {n: published(n).family for n in (NAMES if names is None else names)}


def counterpart(model: str) -> tuple[str | None, str]:
    """The published map to compare a run of ``model`` with, and a sentence saying how.

    A model with its own published file gets it. ``mistral-7b-instruct-v0.2`` (chapters 7
    and 9) gets the base ``mistral-7b-v0.2``: the Instruct model is fine-tuned from it, so
    the comparison is within a family, not a reproduction of the same file.

    >>> counterpart("mistral-7b-instruct-v0.2")[0], counterpart("smollm2-135m")[0]
    ('mistral-7b-v0.2', None)
    """
    if model in NAMES:
        return model, f"{model}: the paper's own published file of this model."
    if model == "mistral-7b-instruct-v0.2":
        return "mistral-7b-v0.2", (
            "mistral-7b-instruct-v0.2 has no published file; the published Mistral file is of "
            "the base Mistral-7B-v0.2 it was fine-tuned from, so this compares within a "
            "family (base vs instruct), not the same model.")
    return None, f"The paper published no score file of {model} or of its base model."


# --------------------------------------------------------------------------- tables


def published_rows(top: int = 5) -> list[dict]:
    """One dict per published model: ``name``, ``n_layers``, ``n_heads``, ``samples``,
    ``share_above_0_1`` and ``share_zero`` (percent of heads), ``top`` (``[layer, head,
    score]`` of the ``top`` best heads). What ``rhlens published --json`` prints."""
    rows = []
    for name in NAMES:
        p = published(name)
        s = sparsity(p.scores)
        best = head_table(p.scores).head(top)
        rows.append({
            "name": name, "n_layers": p.shape[0], "n_heads": p.shape[1], "samples": p.samples,
            "share_above_0_1": round(100 * s["share_above_0.1"], 2),
            "share_zero": round(100 * s["share_zero"], 2),
            "top": [[int(r.layer), int(r["head"]), round(float(r.score), 4)]
                    for _, r in best.iterrows()],
        })
    return rows


def published_table(top: int = 5):
    """:func:`published_rows` as a pandas table, top heads written ``L16H19 0.94``."""
    import pandas as pd

    return pd.DataFrame([{
        "model": r["name"], "layers x heads": f"{r['n_layers']} x {r['n_heads']}",
        "samples": r["samples"], "> 0.1 (%)": r["share_above_0_1"], "= 0 (%)": r["share_zero"],
        f"top {top} heads": ", ".join(f"L{l}H{h} {s:.2f}" for l, h, s in r["top"]),
    } for r in published_rows(top)])


def share_range(threshold: float = 0.1) -> tuple[float, float]:
    """Smallest and largest share of heads above ``threshold`` over the seven maps."""
    shares = [share_above(published(n).scores, threshold) for n in NAMES]
    return min(shares), max(shares)


#: What the paper says about sparsity, and where (arXiv 2404.15574). Its three statements do not
#: fully agree: the abstract names no threshold, §3.1 counts a head above 0.1 as a retrieval
#: head, the caption of Fig. 1 counts heads above 0.5. Each is ``(where, what the paper says,
#: the sparsity share it is measured by)``; "> 0.5 is a strong head" is rhlens's wording, not
#: one of them.
SPARSITY_STATEMENTS: tuple[tuple[str, str, str], ...] = (
    ("abstract", 'only a small portion ("less than 5%") of heads are retrieval heads; no threshold named',
     "share_above_0.1"),
    ("§3.1", "a head scoring above 0.1 is a retrieval head; about 3–6% of heads are",
     "share_above_0.1"),
    ("§3.1", "45–73% of heads score exactly 0", "share_zero"),
    ("Fig. 1 caption", "less than 5% of heads are active more than half the time (score > 0.5)",
     "share_above_0.5"),
)

_MEASURED = {"share_above_0.1": "share > 0.1", "share_above_0.5": "share > 0.5",
             "share_zero": "share = 0"}


def sparsity_range(key: str = "share_above_0.1") -> tuple[float, float]:
    """Smallest and largest :func:`~rhlens.score.heads.sparsity` share ``key`` (``share_above_0.1``,
    ``share_above_0.5`` or ``share_zero``) over the seven maps, as fractions.

    >>> [round(100 * x, 1) for x in sparsity_range("share_zero")]
    [49.4, 73.2]
    """
    if key not in _MEASURED:
        raise ValueError(f"key must be one of {', '.join(_MEASURED)}, got {key!r}.")
    shares = [sparsity(published(n).scores)[key] for n in NAMES]
    return min(shares), max(shares)


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%" if x < 0.1 else f"{100 * x:.1f}%"


def sparsity_statements(maps: dict | None = None):
    """The paper's three statements on sparsity side by side (:data:`SPARSITY_STATEMENTS`):
    where it says it, what it says, the share that measures it, the range of that share over
    the seven published files, and its value in each map of ``maps`` (name -> score map).

    >>> sparsity_statements().iloc[3, 1:].tolist()
    ['less than 5% of heads are active more than half the time (score > 0.5)', 'share > 0.5', '0.06%–0.68%']
    """
    import pandas as pd

    rows = []
    for where, says, key in SPARSITY_STATEMENTS:
        lo, hi = sparsity_range(key)
        row = {"where": where, "the paper says": says, "measured as": _MEASURED[key],
               "published files (7)": f"{_percent(lo)}–{_percent(hi)}"}
        for name, src in (maps or {}).items():
            row[name] = _percent(sparsity(src)[key])
        rows.append(row)
    return pd.DataFrame(rows)


def activation_table(nearly: float = 0.95, above: float = 0.0):
    """How often each model's heads fire, from the per-head sample counts.

    A head *fires* on a sample when its score there is above ``above`` (0: it copied at least
    one needle token; 0.1 also available). Per model: ``always`` (heads that fire on every
    sample), ``nearly_always`` (on at least ``nearly`` of the samples), ``some`` (on at least
    one sample but fewer than ``nearly``), ``never``, and how many of the ``nearly_always``
    heads are retrieval heads (mean score > 0.1). ``silent_samples``: samples on which no
    head fired; a single such sample leaves no head "always" on.
    """
    import pandas as pd

    rows = []
    for name in NAMES:
        p = published(name)
        share = p.activation(above)
        rows.append({
            "model": name, "samples": p.samples, "silent_samples": p.silent_samples,
            "always": int((share >= 1).sum()),
            f"nearly_always (>= {nearly:.0%})": int((share >= nearly).sum()),
            "some": int(((share > 0) & (share < nearly)).sum()),
            "never": int((share == 0).sum()),
            "retrieval heads among nearly_always":
                int(((share >= nearly) & (p.scores > 0.1)).sum()),
        })
    return pd.DataFrame(rows)


def always_on(name: str, nearly: float = 1.0, above: float = 0.0) -> list[tuple[int, int]]:
    """Heads of ``name`` that fire (score > ``above``) on at least ``nearly`` of the samples,
    best mean score first."""
    p = published(name)
    share = p.activation(above)
    order = head_table(p.scores)
    return [(int(r.layer), int(r["head"])) for _, r in order.iterrows()
            if share[int(r.layer), int(r["head"])] >= nearly]
