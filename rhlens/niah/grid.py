"""The NIAH grid: which prompts an experiment runs, as one object.

A :class:`Grid` is the paper's detection and evaluation design: needles x context lengths x
depths, in a haystack, decoded for at most ``max_new_tokens``. Every experiment takes one
(scoring, NIAH with masks, K sweeps, failure modes, patching, KV-cache policies), so the
same grid always means the same prompts, in the same order: :meth:`Grid.samples`.

Masking runs should use needles that were not used to compute the scores, otherwise the
heads are tested on the very prompts that selected them: :func:`held_out_needles` (and
:func:`needles_used_by`, which reads the needles of a score run from its sample log).

Example::

    >>> grid = Grid(lengths=[500, 1000], depths=[0.1, 0.5, 0.9], needles=2)
    >>> len(grid), grid.needles[0].answer
    (12, 'smoked cardamom')
    >>> samples = grid.samples(model.tokenizer)                         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError
from ..files import MAX_LOG_BYTES, read_bytes
from ..run.names import log_path
from ..validate import check_grid, count, number_list
from .haystack import Needle, load_haystack, load_needles
from .prompts import PROMPT_STYLES, PromptStyle, Sample, build_sample


@dataclass(frozen=True)
class Grid:
    """Needles x lengths x depths, in a haystack.

    Attributes:
        lengths: prompt lengths in tokens.
        depths: needle depths in ``[0, 1]`` (0: start of the context, 1: its end).
        needles: the needles; a count ``n`` takes the first ``n`` built-in needles, a path
            reads a needle file, ``None`` takes all built-in needles.
        haystack: haystack text; ``None`` is the built-in haystack.
        max_new_tokens: tokens decoded per prompt at most.
        prompt_style: the layout around the context, ``"rhlens"`` or the paper's public
            code's ``"public-code"`` (:data:`rhlens.niah.prompts.PROMPT_STYLES`).

    In a run's identity (:func:`rhlens.run.sweep.run_identity`) a grid counts by its token
    budget and its prompt layout: the prompts themselves are fingerprinted by their samples'
    keys, so a resumed run may add lengths, depths or needles.
    """

    lengths: tuple[int, ...] = dataclasses.field(metadata={"identity": False})
    depths: tuple[float, ...] = dataclasses.field(metadata={"identity": False})
    needles: tuple[Needle, ...] | int | str | Path | None = dataclasses.field(
        default=None, metadata={"identity": False})
    haystack: str | None = dataclasses.field(default=None, repr=False,
                                             metadata={"identity": False})
    max_new_tokens: int = 32
    prompt_style: PromptStyle = dataclasses.field(default="rhlens", metadata={"identity": "prompt"})

    def __post_init__(self):
        needles = self.needles
        if needles is None or isinstance(needles, int):
            needles = load_needles(None, needles)
        elif isinstance(needles, (str, Path)):
            needles = load_needles(needles)
        object.__setattr__(self, "needles", tuple(needles))
        lengths = number_list(self.lengths, "lengths", "prompt lengths in tokens")
        # a whole number only: int(160.7) would quietly run another grid than the one asked for
        lengths = [int(n) if isinstance(n, float) and n.is_integer() else n for n in lengths]
        object.__setattr__(self, "lengths", tuple(count(n, "lengths", minimum=1) for n in lengths))
        object.__setattr__(self, "depths", tuple(
            float(d) for d in number_list(self.depths, "depths", "needle depths in [0, 1]")))
        if not self.needles:
            raise UsageError("needles is empty: a grid needs at least one needle.", arg="needles")
        if self.prompt_style not in PROMPT_STYLES:
            raise UsageError(f"prompt_style must be one of {PROMPT_STYLES}, got "
                             f"{self.prompt_style!r}.", arg="prompt_style")
        check_grid(self.lengths, self.depths, self.max_new_tokens)

    def __len__(self) -> int:
        """Prompts in the grid (a point given twice counts once)."""
        return (len(dict.fromkeys(self.needle_list)) * len(dict.fromkeys(self.lengths))
                * len(dict.fromkeys(self.depths)))

    @property
    def needle_list(self) -> tuple[Needle, ...]:
        """The grid's needles (a count or a file given to the constructor is read by then)."""
        assert isinstance(self.needles, tuple)
        return self.needles

    def replace(self, **changes) -> Grid:
        """A copy with some fields changed (e.g. other needles for a held-out test)."""
        return dataclasses.replace(self, **changes)

    def samples(self, tokenizer, n_ctx: int | None = None) -> list[Sample]:
        """Every (needle, length, depth) prompt, in that nesting order.

        With ``n_ctx`` the longest prompt plus ``max_new_tokens`` must fit the context. A grid
        point given twice (``lengths=[160, 160]``) is built once, so it is never counted twice.
        """
        check_grid(self.lengths, self.depths, self.max_new_tokens, n_ctx)
        haystack = self.haystack if self.haystack is not None else load_haystack(None)
        samples: dict[str, Sample] = {}
        for needle in dict.fromkeys(self.needle_list):
            for length in dict.fromkeys(self.lengths):
                for depth in dict.fromkeys(self.depths):
                    sample = build_sample(tokenizer, needle, haystack, length, depth,
                                          n_ctx=n_ctx, prompt_style=self.prompt_style)
                    samples.setdefault(sample.key, sample)
        return list(samples.values())

    def reference_prompts(self, tokenizer, n_ctx: int | None = None) -> list[torch.Tensor]:
        """Prompts for mean ablation's reference: each needle at the first length and depth
        0.5 (:meth:`rhlens.intervene.mask.Mask.with_means`)."""
        ref = self.replace(lengths=self.lengths[:1], depths=(0.5,))
        return [s.input_ids for s in ref.samples(tokenizer, n_ctx)]


# --------------------------------------------------------------------------- held-out needles


def needles_used_by(scores_path: str | Path) -> set[str]:
    """Needle texts of the score run that wrote ``scores_path`` (from its
    ``<scores>.samples.jsonl`` log); empty when there is no log (e.g. a published file)."""
    log = Path(log_path(scores_path))
    if not log.exists():
        return set()
    used = set()
    text = read_bytes(log, "Sample log", MAX_LOG_BYTES).decode("utf-8", errors="replace")
    for line in text.splitlines()[1:]:
        try:
            record = json.loads(line)
        except ValueError:  # a torn or damaged line: its sample is redone by a resume anyway
            continue
        if isinstance(record, dict) and isinstance(record.get("needle"), str):
            used.add(record["needle"])
    return used


def held_out_needles(needles: Sequence[Needle], used: set[str]) -> list[Needle]:
    """``needles`` without those whose text is in ``used``; an error if none is left."""
    kept = [n for n in needles if n.text not in used]
    if not kept:
        raise ValueError(
            "Every needle was already used to compute the scores; masking must be tested on "
            "other needles. Pass a `needle_file` with new needles, or fewer `skip_needles`."
        )
    return kept


def masking_needles(
    needles: Sequence[Needle], *, scores_path: str | Path | None = None,
    skip: int | None = None, n: int | None = None,
) -> tuple[list[Needle], int]:
    """The needles a masking run may use, and how many were left out.

    Leaves out the first ``skip`` needles when ``skip`` is given (``rhlens score --needles
    N`` uses exactly those), else those the score run of ``scores_path`` used (read from its
    sample log), then keeps the first ``n`` of the rest.
    """
    if skip is not None:
        used = {nd.text for nd in needles[:skip]}
    elif scores_path:
        used = needles_used_by(scores_path)
    else:
        used = set()
    kept = held_out_needles(needles, used)
    left_out = len(needles) - len(kept)
    if n is not None:
        if n > len(kept):
            raise ValueError(f"Asked for {n} `needles` but only {len(kept)} are held out; pass "
                             "a `needle_file` with more, or ask for fewer.")
        kept = kept[:n]
    return kept, left_out
