"""The book's model switch: which model a chapter runs, on what, at which scale.

Every chapter opens with one line::

    RT = chapter_runtime(paper="llama-2-7b-80k")

and from then on asks ``RT`` instead of ``torch.cuda.is_available()``:

* ``RT.model`` is the name for :func:`rhlens.load_model` (``RT.load()`` loads it with the
  defaults of this machine);
* ``RT.paper`` is true for one of the paper's checkpoints *or its tiny stand-in*: the chapter
  then takes its paper-model branch (the paper's grids, K values, datasets);
* ``RT.standin`` is true for a stand-in (``tiny-<paper key>``, random weights of the same
  architecture). It answers nothing, so the chapter shrinks its grids with one switch
  (:meth:`Runtime.grid`), turns the ROUGE gate off (:attr:`Runtime.rouge_gate`) and says that
  the numbers are meaningless. This is how CI executes every paper-model branch on a CPU.

The model comes from the environment variable ``RHLENS_MODEL`` when it is set, else the
chapter's paper model when a CUDA GPU is visible, else the embedded SmolLM2::

    RHLENS_MODEL=tiny-mixtral-8x7b jupyter nbconvert --execute notebooks/05_*.ipynb

On a GPU the defaults follow its memory (:func:`gpu_defaults`): a 16 GB card (Colab's T4) loads
7B models in 4-bit and caps prompts at 8K tokens; 40 GB and more (A100, H100) load bf16 and run
the chapter's full grid. ``--device-map auto`` style sharding over several GPUs is what
``load_model(..., device_map="auto")`` does, for models larger than one card.

Example::

    >>> rt = chapter_runtime(paper="llama-2-7b-80k", env={"RHLENS_MODEL": "tiny-llama-2-7b-80k"})
    >>> rt.paper, rt.standin, rt.key, rt.rouge_gate
    (True, True, 'llama-2-7b-80k', -1.0)
    >>> from rhlens.niah.grid import Grid
    >>> rt.grid(paper=Grid([1000, 8000, 32000], [0.0, 0.5, 1.0], needles=2), cpu=Grid([500], [0.5])).lengths
    (256, 384)
    >>> chapter_runtime(paper="llama-2-7b-80k", env={}, gpu=None).model
    'smollm2-135m'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import UsageError
from ..models.registry import EMBEDDED, PAPER_MODELS, is_standin, paper_key, standin_name

ENV_VAR = "RHLENS_MODEL"
Kind = Literal["embedded", "paper", "standin", "other"]

#: Prompt lengths of a stand-in's grid: long enough for a needle, a question and the chat
#: template; short enough that every paper-model branch runs in seconds on a CPU.
STANDIN_LENGTHS = (256, 384)
STANDIN_NEW_TOKENS = 8

#: GPU memory each paper model needs to run a chapter's grid (weights + KV cache at 32K +
#: headroom), in GB: bf16 / 4-bit. 7B bf16 weights are 13.5 GB, 14B 28 GB, Mixtral 93 GB (26 GB in 4-bit).
MEMORY_GB: dict[str, tuple[int, int]] = {
    "llama-2-7b-80k": (40, 16), "llama-2-7b": (24, 12), "llama-2-13b-64k": (48, 24),
    "mistral-7b-v0.2": (24, 12), "mistral-7b-instruct-v0.2": (24, 12),
    "qwen1.5-14b": (48, 24), "qwen1.5-14b-chat": (48, 24),
    "mixtral-8x7b": (100, 32), "yi-6b-200k": (24, 12),
}

#: Parameters (billions) and layers of each paper model, for :func:`estimate_minutes`.
_PARAMS_B = {"llama-2-7b-80k": 6.7, "llama-2-7b": 6.7, "llama-2-13b-64k": 13.0,
             "mistral-7b-v0.2": 7.2, "mistral-7b-instruct-v0.2": 7.2, "qwen1.5-14b": 14.2,
             "qwen1.5-14b-chat": 14.2, "mixtral-8x7b": 12.9, "yi-6b-200k": 6.1}
# Mixtral: 12.9B parameters are active per token (2 of 8 experts), 46.7B are held.

#: Assumed H100 rates behind :func:`estimate_minutes` (not measured here; ``benchmarks/
#: bench_gpu.py`` measures prefill and decode on the GPU it runs on): dense bf16 prefill at
#: 35 % of the 989 TFLOP/s peak, and a hooked decode step that reads every weight once at
#: 3.35 TB/s plus 30 ms of per-step hook overhead (one attention row per head per layer).
H100_PREFILL_FLOPS = 0.35 * 989e12
H100_BANDWIDTH = 3.35e12
DECODE_OVERHEAD_S = 0.030


@dataclass(frozen=True)
class Runtime:
    """Which model a chapter runs and how (see the module docstring).

    Attributes:
        model: the name :func:`rhlens.load_model` takes.
        kind: ``"embedded"`` (SmolLM2), ``"paper"`` (a paper checkpoint), ``"standin"`` (its
            tiny stand-in) or ``"other"`` (any other name or path).
        gpu: the GPU's name, ``None`` on a CPU.
        gpu_gb: its memory in GB (0 on a CPU).
    """

    model: str
    kind: Kind
    gpu: str | None = None
    gpu_gb: float = 0.0

    @property
    def paper(self) -> bool:
        """Take the paper-model branch: a paper checkpoint or its stand-in."""
        return self.kind in ("paper", "standin")

    @property
    def standin(self) -> bool:
        """A random-weight stand-in: shrink the grids, no ROUGE gate, numbers meaningless."""
        return self.kind == "standin"

    @property
    def checkpoint(self) -> bool:
        """The paper's own weights (not a stand-in): the branch that downloads datasets from the
        hub and whose numbers mean something."""
        return self.kind == "paper"

    @property
    def key(self) -> str | None:
        """The paper model this run is (or stands in for), e.g. for its published map."""
        return paper_key(self.model)

    @property
    def rouge_gate(self) -> float:
        """The detection's ROUGE gate: the paper's 0.5, or off (-1) for a stand-in, whose random
        answers would otherwise leave no sample to score."""
        return -1.0 if self.standin else 0.5

    @property
    def max_tokens(self) -> int | None:
        """Longest prompt this machine runs in a paper branch: 8K on a card under 40 GB."""
        if self.kind == "paper" and self.gpu and self.gpu_gb < 40:
            return 8000
        return None

    @property
    def load_in_4bit(self) -> bool | None:
        """4-bit weights on a card too small for the model in bf16; else the model's default."""
        if self.kind == "paper" and self.gpu and self.key in MEMORY_GB:
            return self.gpu_gb < MEMORY_GB[self.key][0] or None
        return None

    def load(self, **kwargs):
        """:func:`rhlens.load_model` with this machine's defaults (``kwargs`` override)."""
        from ..models.loading import load_model

        if self.load_in_4bit is not None:
            kwargs.setdefault("load_in_4bit", self.load_in_4bit)
        return load_model(self.model, **kwargs)

    def pick(self, *, paper: Any, cpu: Any, standin: Any = None) -> Any:
        """``paper`` in the paper-model branch, ``cpu`` otherwise; a stand-in takes ``standin``
        when given (e.g. a K that fits its few heads), else ``paper``."""
        if self.standin and standin is not None:
            return standin
        return paper if self.paper else cpu

    def grid(self, *, paper, cpu):
        """The chapter's grid: ``paper`` in the paper branch (lengths capped at
        :attr:`max_tokens` on a small GPU), ``cpu`` otherwise, and for a stand-in the paper grid
        shrunk by :func:`shrink` (same needles, short prompts, few depths)."""
        if self.standin:
            return shrink(paper)
        if not self.paper:
            return cpu
        if self.max_tokens:
            capped = sorted({min(n, self.max_tokens) for n in paper.lengths})
            return paper.replace(lengths=tuple(capped))
        return paper

    def lengths(self, *, paper: Sequence[int], cpu: Sequence[int]) -> list[int]:
        """Prompt lengths outside a grid (a single sweep length, patching pairs...), by the
        same rule as :meth:`grid`."""
        if self.standin:
            return list(STANDIN_LENGTHS[:max(1, min(len(paper), len(STANDIN_LENGTHS)))])
        if not self.paper:
            return list(cpu)
        cap = self.max_tokens
        return sorted({min(n, cap) for n in paper}) if cap else list(paper)

    def describe(self) -> str:
        """One line for the set-up cell: model, device, branch, and what to expect."""
        where = f"GPU {self.gpu} ({self.gpu_gb:.0f} GB)" if self.gpu else "CPU"
        if self.standin:
            return (f"model: {self.model} on {where}: the paper-model branch on a random-weight "
                    f"stand-in of {self.key}. It answers nothing, so the numbers below are "
                    "meaningless: they show that the code runs. Grids are shrunk, the ROUGE "
                    "gate is off.")
        if self.kind == "paper":
            bits = [f"model: {self.model} on {where}: the paper-model branch"]
            if self.load_in_4bit:
                bits.append("4-bit weights (this card is too small for bf16)")
            if self.max_tokens:
                bits.append(f"prompts capped at {self.max_tokens} tokens")
            spec = PAPER_MODELS[self.model]
            if spec.hf_id.split("/")[0] in ("meta-llama", "mistralai"):
                bits.append(f"{spec.hf_id} is gated: accept its licence on the hub and run "
                            "`huggingface-cli login` first")
            return "; ".join(bits) + "."
        return f"model: {self.model} on {where}."

    def expect(self, grid, *, passes: int = 1) -> str:
        """Expected time of a paper-model run over ``grid`` on an H100 (:func:`estimate_minutes`),
        as one line; empty outside the paper branch."""
        if not self.paper or self.key not in _PARAMS_B:
            return ""
        minutes = passes * estimate_minutes(self.key, grid)
        return (f"{self.key} on an H100: about {minutes:.0f} min for {passes * len(grid)} prompts "
                "(an estimate from the GPU's peak rates; benchmarks/bench_gpu.py measures yours)")


def shrink(grid):
    """A stand-in's version of a paper grid: the same needles, lengths
    :data:`STANDIN_LENGTHS` (as many as the grid has, at most two), the first and last depth,
    and at most :data:`STANDIN_NEW_TOKENS` new tokens.

    >>> from rhlens.niah.grid import Grid
    >>> g = shrink(Grid([1000, 4000, 16000], [0.1, 0.5, 0.9], needles=3, max_new_tokens=24))
    >>> g.lengths, g.depths, len(g.needles), g.max_new_tokens
    ((256, 384), (0.1, 0.9), 3, 8)
    """
    lengths = STANDIN_LENGTHS[:max(1, min(len(set(grid.lengths)), len(STANDIN_LENGTHS)))]
    depths = tuple(dict.fromkeys((grid.depths[0], grid.depths[-1])))
    return grid.replace(lengths=lengths, depths=depths,
                        max_new_tokens=min(grid.max_new_tokens, STANDIN_NEW_TOKENS))


def estimate_minutes(key: str, grid) -> float:
    """Rough H100 time of one detection pass over ``grid`` for paper model ``key``.

    Prefill costs ``2 * params * n`` FLOPs plus ``4 * layers * d_model * n**2 / 2`` for causal
    attention, at :data:`H100_PREFILL_FLOPS`; each decode step reads the weights once at
    :data:`H100_BANDWIDTH` plus :data:`DECODE_OVERHEAD_S` of hook work. An estimate, not a
    measurement: it is printed as such.

    >>> from rhlens.niah.grid import Grid
    >>> round(estimate_minutes("llama-2-7b-80k", Grid([8000], [0.5], needles=1)), 2)
    0.02
    """
    params = _PARAMS_B[key] * 1e9
    n_layers = PAPER_MODELS[key].shape[0]
    d_model = {"qwen1.5-14b": 5120, "qwen1.5-14b-chat": 5120, "llama-2-13b-64k": 5120}.get(key, 4096)
    weights_bytes = 2 * (46.7e9 if key == "mixtral-8x7b" else params)
    seconds = 0.0
    n_prompts = len(dict.fromkeys(grid.needles)) * len(dict.fromkeys(grid.depths))
    for n in dict.fromkeys(grid.lengths):
        prefill = (2 * params * n + 2 * n_layers * d_model * n * n) / H100_PREFILL_FLOPS
        decode = grid.max_new_tokens * (weights_bytes / H100_BANDWIDTH + DECODE_OVERHEAD_S)
        seconds += n_prompts * (prefill + decode)
    return seconds / 60


def gpu_defaults(gpu: tuple[str, float] | None = None) -> tuple[str | None, float]:
    """``(name, memory in GB)`` of the first CUDA GPU, ``(None, 0.0)`` without one (``gpu``:
    that pair, given, e.g. to see the defaults of another card)."""
    if gpu is not None:
        return gpu[0], float(gpu[1])
    import torch

    if not torch.cuda.is_available():
        return None, 0.0
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / 1e9


_AUTO = object()


def chapter_runtime(model: str | None = None, *, paper: str,
                    env: Mapping[str, str] | None = None, gpu: Any = _AUTO) -> Runtime:
    """The chapter's :class:`Runtime`.

    Args:
        model: the model to run, when the reader names one in the cell; ``None`` reads
            ``RHLENS_MODEL``, else takes ``paper`` on a GPU and SmolLM2 on a CPU.
        paper: the chapter's paper model, used on a GPU when no model is named.
        env: environment to read ``RHLENS_MODEL`` from (default ``os.environ``).
        gpu: ``None`` for the CPU answer, ``(name, GB)`` for a given card; default: ask torch.

    Raises:
        UsageError: ``paper`` is not a paper model, or ``RHLENS_MODEL`` is empty.
    """
    if paper not in PAPER_MODELS:
        raise UsageError(f"paper={paper!r} is not a paper model: choose one of "
                         f"{', '.join(PAPER_MODELS)}.", arg="model")
    env = os.environ if env is None else env
    name, gb = (None, 0.0) if gpu is None else gpu_defaults(None if gpu is _AUTO else gpu)
    chosen = model if model is not None else env.get(ENV_VAR)
    if chosen is not None and not chosen.strip():
        raise UsageError(f"{ENV_VAR} is set but empty: unset it, or name a model such as "
                         f"{paper}, {standin_name(paper)} or {EMBEDDED}.", arg="model")
    if chosen is None:
        chosen = paper if name else EMBEDDED
    chosen = chosen.strip()
    if is_standin(chosen):
        kind: Kind = "standin"
    elif chosen in PAPER_MODELS:
        kind = "paper"
    elif chosen == EMBEDDED:
        kind = "embedded"
    else:
        kind = "other"
    return Runtime(chosen, kind, name, gb)


def model_menu(choices: Sequence[str] | None = None) -> str:
    """The models a chapter offers (default: every paper model), with the GPU memory each
    needs (bf16 / 4-bit).

    >>> print(model_menu(["mixtral-8x7b"]))
    mixtral-8x7b               bf16 >= 100 GB (device_map="auto" over two 80 GB GPUs), 4-bit >= 32 GB
    """
    lines = []
    for key in (PAPER_MODELS if choices is None else choices):
        bf16, q4 = MEMORY_GB[key]
        many = ' (device_map="auto" over two 80 GB GPUs)' if bf16 > 80 else ""
        lines.append(f"{key:26s} bf16 >= {bf16} GB{many}, 4-bit >= {q4} GB")
    return "\n".join(lines)


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Record ``value`` under ``name`` for the book's ``{glue:text}`name``` roles, and return it.

    A chapter's prose quotes its own output through these names, so the built page cannot
    drift from what the cells computed (tests/book/test_book.py checks every name a page quotes is
    glued by it). This is myst-nb's ``glue`` where myst-nb is installed (the book build);
    elsewhere, on Colab or in a plain kernel, there is no page to paste into and it records
    nothing, so a chapter runs without the book's dependencies.

    Numpy and torch scalars are glued as Python numbers: the role formats the stored text, and
    ``np.float64(0.25)`` is not a number it can read.

    >>> import numpy, torch
    >>> glue("ch00_share", numpy.float64(0.25)), glue("ch00_n", torch.tensor(3))
    (0.25, 3)
    """
    import numpy
    import torch

    if isinstance(value, numpy.generic) or (isinstance(value, torch.Tensor) and value.dim() == 0):
        value = value.item()
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # no book to paste into
        return value
    try:
        from IPython import get_ipython
    except ImportError:
        return value
    if get_ipython() is not None:  # outside a kernel there is no output to store it in
        myst_glue(name, value, display=display)
    return value
