"""Tiny random-weight models of the paper's architectures, for tests, CI and demos.

:func:`tiny_model` builds a 2-layer Llama, Mistral, Qwen2 or Mixtral; :func:`tiny_paper_model`
a stand-in of one of the paper's checkpoints (same architecture, head grouping and config
quirks, prepared by :func:`rhlens.models.rope.prepare_config` exactly as the real one). They borrow
the embedded tokenizer, so prompts, needles and scores go through the same code as a real
model.
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import bridge_from_hf, embedded_tokenizer, quiet_transformers
from .registry import PAPER_MODELS, TINY_CONTEXT, TINY_SHAPE
from .rope import apply_config_overrides, prepare_config


def tiny_model(
    arch: str = "llama",
    n_layers: int = TINY_SHAPE["n_layers"],
    n_heads: int = TINY_SHAPE["n_heads"],
    n_kv_heads: int = TINY_SHAPE["n_kv_heads"],
    d_model: int = TINY_SHAPE["d_model"],
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
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
    return _tiny_from_config(config, f"tiny-{arch}", seed, dtype)


#: Config fields of the published checkpoints that change how they compute, copied into the
#: tiny stand-ins of :func:`tiny_paper_model` (sizes are shrunk, quirks are kept). For
#: Llama-2-7B-80K the stand-in declares dynamic-NTK scaling (factor 10 over 4K positions), the
#: case in which the public code's RoPE reset changes the model; with plain RoPE the reset is
#: a no-op (see :func:`public_rope_reset`).
TINY_QUIRKS: dict[str, dict[str, Any]] = {
    "llama-2-7b-80k": {"max_position_embeddings": 4096,
                       "rope_scaling": {"type": "dynamic", "factor": 10.0}},
    "llama-2-7b": {"max_position_embeddings": 4096},
    "llama-2-13b-64k": {"max_position_embeddings": 4096},  # Llama-2's defaults (unchecked)
    "mistral-7b-v0.2": {"max_position_embeddings": 32768, "sliding_window": 4096,
                        "rope_theta": 10000.0},
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

    classes: dict[str, tuple[type, dict[str, Any]]] = {
        "llama": (LlamaConfig, {}),
        "mistral": (MistralConfig, {"sliding_window": None}),
        "qwen2": (Qwen2Config, {}),
        "mixtral": (MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
    }
    if arch not in classes:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {', '.join(classes)}.")
    quiet_transformers()
    tok = embedded_tokenizer()
    cls, extra = classes[arch]
    settings: dict[str, Any] = {**extra, **config_overrides}
    rope: dict[str, Any] = {k: settings.pop(k) for k in ("rope_theta", "rope_scaling", "rope_parameters")
            if k in settings}
    config = cls(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=settings.pop("max_position_embeddings", TINY_CONTEXT),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **settings,
    )
    return apply_config_overrides(config, rope) if rope else config


def _tiny_from_config(config, name: str, seed: int, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config)  # drawn in float32: the same weights in any dtype
    hf.to(dtype)
    return bridge_from_hf(hf, embedded_tokenizer(), name, "cpu", dtype)
