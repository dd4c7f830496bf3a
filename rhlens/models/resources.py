"""What running one of the paper's checkpoints costs: GPU memory, download, access, time.

Every figure is arithmetic on the checkpoint's ``config.json`` (:data:`CONFIGS`: layers, query
and KV heads, head dimension, hidden and MLP sizes, vocabulary, experts, stored dtype), so it
can be checked by hand and printed as what it is, an estimate:

* **weights**: parameters x 2 bytes in bf16. In 4 bit, bitsandbytes replaces every
  ``nn.Linear`` of the decoder layers (0.5 byte per weight plus a float32 scale per block of
  64); embeddings, the unembedding, norms and biases stay bf16, and so do Mixtral's experts,
  which transformers 5 holds as 3-D tensors rather than ``nn.Linear`` modules;
* **KV cache** at ``n`` tokens: ``2 (K, V) x layers x KV heads x head dim x n x 2 bytes``;
* **activations**: the largest transient of one layer, whichever is larger of the MLP over
  the whole prompt (``3 x n x d_mlp`` values, the SDPA prefill) and one 512-query chunk of
  eager attention (``4 x heads x 512 x n`` values: scores, pattern and their float32
  softmax, the hooked prefill);
* **margin**: :data:`MARGIN_FRACTION` of the above plus :data:`MARGIN_BYTES` (CUDA context,
  allocator slack).

:func:`need` adds them up; :func:`plan` compares the sum with what a GPU reports
(``torch.cuda.get_device_properties(0).total_memory``; a Colab T4 reports about 15.8e9 bytes)
and picks bf16, 4 bit, or 4 bit with a shorter longest prompt.

>>> kv = kv_cache_bytes("qwen1.5-14b", 32768)      # 2 x 40 layers x 40 KV heads x 128 x 2 bytes
>>> kv, round(kv / 1e9, 1)
(26843545600, 26.8)
>>> round(weights_bytes("qwen1.5-14b") / 1e9, 1), round(weights_bytes("qwen1.5-14b", "4bit") / 1e9, 1)
(28.3, 10.2)
>>> round(download_bytes("mixtral-8x7b") / 1e9, 1)  # 4 bit is applied after the download
93.4
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Quant = Literal["bf16", "4bit"]

#: Bytes per value of the weights (bf16), the KV cache and the activations.
BF16 = 2
#: bitsandbytes 4-bit (``BitsAndBytesConfig(load_in_4bit=True)``, as :func:`rhlens.load_model`
#: asks for it): two weights per byte, plus one float32 absmax per block of 64 weights
#: (double quantisation is off by default).
NF4_BYTES = 0.5 + 4 / 64
#: The margin added to weights + KV cache + activations: a share of them, and a fixed part
#: for the CUDA context, cuBLAS workspace and the allocator's slack.
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 1.0e9
#: Query tokens per forward of the hooked (eager) prefill: :data:`rhlens.run.decode.EAGER_CHUNK`.
EAGER_CHUNK = 512
#: The longest prompt a chapter runs in its paper branch when it does not say (32K tokens).
DEFAULT_TOKENS = 32_000


@dataclass(frozen=True)
class Config:
    """The fields of a checkpoint's ``config.json`` that its memory depends on.

    Attributes:
        layers: ``num_hidden_layers``.
        heads: ``num_attention_heads`` (query heads).
        kv_heads: ``num_key_value_heads``.
        d_model: ``hidden_size``.
        d_mlp: ``intermediate_size``.
        vocab: ``vocab_size``.
        head_dim: ``head_dim`` (``hidden_size / num_attention_heads`` when absent).
        experts: ``num_local_experts`` (1 for a dense model).
        experts_per_token: ``num_experts_per_tok`` (1 for a dense model).
        qkv_bias: biases on the q, k, v projections (Qwen2).
        tied: ``tie_word_embeddings``.
        dtype: ``torch_dtype``, the dtype of the stored shards (what a download fetches).
    """

    layers: int
    heads: int
    kv_heads: int
    d_model: int
    d_mlp: int
    vocab: int
    head_dim: int = 128
    experts: int = 1
    experts_per_token: int = 1
    qkv_bias: bool = False
    tied: bool = False
    dtype: str = "bfloat16"

    @classmethod
    def from_hf(cls, config) -> Config:
        """The fields of a transformers config object (e.g. ``AutoConfig.from_pretrained``)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        return cls(config.num_hidden_layers, heads,
                   getattr(config, "num_key_value_heads", None) or heads, config.hidden_size,
                   config.intermediate_size, config.vocab_size, head_dim,
                   getattr(config, "num_local_experts", 1) or 1,
                   getattr(config, "num_experts_per_tok", 1) or 1,
                   config.model_type == "qwen2", bool(config.tie_word_embeddings),
                   str(dtype).removeprefix("torch.") if dtype else "bfloat16")

    # --- parameters ---------------------------------------------------------------------
    def attention_weights(self) -> int:
        """Weights of one layer's q, k, v, o projections (``nn.Linear``: quantised in 4 bit)."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return 2 * self.d_model * q + 2 * self.d_model * kv

    def expert_weights(self) -> int:
        """Weights of one layer's MLP: gate, up, down per expert (one expert when dense)."""
        return self.experts * 3 * self.d_model * self.d_mlp

    def params(self) -> int:
        """Every parameter: embeddings, unembedding (unless tied), and per layer attention,
        MLP (or experts and router), two norms, q/k/v biases; the final norm."""
        per_layer = self.attention_weights() + self.expert_weights() + 2 * self.d_model
        if self.experts > 1:
            per_layer += self.d_model * self.experts          # the router
        if self.qkv_bias:
            per_layer += (self.heads + 2 * self.kv_heads) * self.head_dim
        embeddings = self.vocab * self.d_model * (1 if self.tied else 2)
        return embeddings + self.layers * per_layer + self.d_model

    def active_params(self) -> int:
        """Parameters one token goes through (Mixtral: 2 of 8 experts per layer)."""
        idle = (self.experts - self.experts_per_token) * 3 * self.d_model * self.d_mlp
        return self.params() - self.layers * idle

    def quantised_params(self) -> int:
        """What bitsandbytes turns into 4 bit: the weights of the decoder layers'
        ``nn.Linear`` modules. A dense MLP's gate, up and down are such modules; Mixtral's
        experts are 3-D tensors in transformers 5 (``MixtralExperts``), so they stay bf16.
        Its router stays bf16 too (negligible either way)."""
        linear = self.attention_weights() + (self.expert_weights() if self.experts == 1 else 0)
        return self.layers * linear

    # --- bytes --------------------------------------------------------------------------
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer and KV head for one token, in bf16."""
        return 2 * self.layers * self.kv_heads * self.head_dim * BF16

    def activation_bytes_per_token(self, chunk: int = EAGER_CHUNK) -> int:
        """Largest one-layer transient per prompt token: the MLP over the whole prompt
        (``3 x d_mlp`` values per token) or one ``chunk``-query slice of eager attention
        (``4 x heads x chunk`` values per key token)."""
        return max(3 * self.d_mlp, 4 * self.heads * chunk) * BF16


#: ``config.json`` of each paper checkpoint (Hugging Face ids in :data:`rhlens.models.registry.PAPER_MODELS`).
#: Llama-2-7B-80K and Llama-2-13B-64K are continued pretraining of Llama-2 and keep its shapes.
CONFIGS: dict[str, Config] = {
    "llama-2-7b-80k": Config(32, 32, 32, 4096, 11008, 32000),
    "llama-2-7b": Config(32, 32, 32, 4096, 11008, 32000, dtype="float16"),
    "llama-2-13b-64k": Config(40, 40, 40, 5120, 13824, 32000),
    "mistral-7b-v0.2": Config(32, 32, 8, 4096, 14336, 32000),
    "mistral-7b-instruct-v0.2": Config(32, 32, 8, 4096, 14336, 32000),
    "qwen1.5-14b": Config(40, 40, 40, 5120, 13696, 152064, qkv_bias=True),
    "qwen1.5-14b-chat": Config(40, 40, 40, 5120, 13696, 152064, qkv_bias=True),
    "mixtral-8x7b": Config(32, 32, 8, 4096, 14336, 32000, experts=8, experts_per_token=2),
    "yi-6b-200k": Config(32, 32, 4, 4096, 11008, 64000),
}

#: Checkpoints whose hub page asks the reader to accept conditions before the download:
#: Meta's Llama 2 licence, and Mistral AI's repositories (gated since spring 2024). The
#: others (yaofu's long-context Llamas, mistral-community's copy of Mistral-7B-v0.2, Qwen,
#: Yi) download without an account.
GATED = frozenset({"meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-Instruct-v0.2",
                   "mistralai/Mixtral-8x7B-v0.1"})


def config(key: str) -> Config:
    """The :class:`Config` of paper model ``key`` (one-line error for an unknown key)."""
    try:
        return CONFIGS[key]
    except KeyError:
        from ..errors import UsageError

        raise UsageError(f"{key!r} is not a paper model: choose one of {', '.join(CONFIGS)}.",
                         arg="model") from None


def hf_id(key: str) -> str:
    from .registry import PAPER_MODELS

    return PAPER_MODELS[key].hf_id


def is_gated(key: str) -> bool:
    """Whether paper model ``key``'s checkpoint is gated on the hub (:data:`GATED`)."""
    return hf_id(key) in GATED


def weights_bytes(key: str, quant: Quant = "bf16") -> int:
    """GPU bytes of the weights in bf16, or in 4 bit (see the module docstring)."""
    c = config(key)
    if quant == "bf16":
        return c.params() * BF16
    q = c.quantised_params()
    return round(q * NF4_BYTES + (c.params() - q) * BF16)


def kv_cache_bytes(key: str, tokens: int) -> int:
    """Bytes of the bf16 KV cache at ``tokens`` tokens."""
    return config(key).kv_bytes_per_token() * tokens


def download_bytes(key: str) -> int:
    """Bytes of the checkpoint's shards on the hub (stored dtype; 4 bit is applied after)."""
    c = config(key)
    return c.params() * (4 if c.dtype == "float32" else 2)


@dataclass(frozen=True)
class Need:
    """GPU memory one paper model needs at one prompt length, part by part (bytes)."""

    key: str
    quant: Quant
    tokens: int
    weights: int
    kv_cache: int
    activations: int

    @property
    def margin(self) -> int:
        return round(MARGIN_FRACTION * (self.weights + self.kv_cache + self.activations)
                     + MARGIN_BYTES)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.margin

    def breakdown(self) -> str:
        """``"weights 13.5 + KV cache 16.8 + activations 4.2 + margin 4.4 = 38.9 GB"``."""
        parts = [("weights", self.weights), ("KV cache", self.kv_cache),
                 ("activations", self.activations), ("margin", self.margin)]
        return " + ".join(f"{name} {v / 1e9:.1f}" for name, v in parts) + \
            f" = {self.total / 1e9:.1f} GB"


def need(key: str, tokens: int, quant: Quant = "bf16") -> Need:
    """What paper model ``key`` needs on a GPU with prompts of ``tokens`` tokens.

    >>> n = need("llama-2-7b-80k", 32000)
    >>> print(n.breakdown())
    weights 13.5 + KV cache 16.8 + activations 4.2 + margin 4.4 = 38.9 GB
    """
    c = config(key)
    return Need(key, quant, tokens, weights_bytes(key, quant), kv_cache_bytes(key, tokens),
                c.activation_bytes_per_token() * tokens)


def max_tokens(key: str, quant: Quant, gpu_bytes: float) -> int:
    """The longest prompt (tokens, rounded down to a thousand) whose :func:`need` fits in
    ``gpu_bytes``; 0 when the weights alone do not fit.

    >>> max_tokens("llama-2-7b-80k", "4bit", 15.8e9)    # a Colab T4
    14000
    """
    c = config(key)
    room = (gpu_bytes - MARGIN_BYTES) / (1 + MARGIN_FRACTION) - weights_bytes(key, quant)
    per_token = c.kv_bytes_per_token() + c.activation_bytes_per_token()
    return max(0, int(room // per_token) // 1000 * 1000)


@dataclass(frozen=True)
class Plan:
    """How a paper model runs on one GPU: ``quant`` (``"bf16"`` or ``"4bit"``),
    ``max_tokens`` (``None`` when the chapter's longest prompt fits, else the cap), and the
    :class:`Need` at the length it will run. ``fits`` is false when even the 4-bit weights do
    not fit (then ``need`` is the 4-bit one at 1,000 tokens)."""

    quant: Quant
    max_tokens: int | None
    need: Need
    fits: bool = True


def plan(key: str, tokens: int, gpu_bytes: float) -> Plan:
    """bf16 when it fits at ``tokens``; else 4 bit; else 4 bit with prompts capped at
    :func:`max_tokens`. The paper ran bf16; of its two departures, 4 bit keeps the chapter's
    long prompts, so it comes first. The set-up line says which one was taken.

    >>> p = plan("llama-2-7b-80k", 32000, 15.8e9)
    >>> p.quant, p.max_tokens
    ('4bit', 14000)
    >>> plan("qwen1.5-14b", 32000, 85.0e9).quant          # an 80 GB card
    'bf16'
    """
    for quant in ("bf16", "4bit"):
        n = need(key, tokens, quant)
        if n.total <= gpu_bytes:
            return Plan(quant, None, n)
    cap = max_tokens(key, "4bit", gpu_bytes)
    if cap < 1000:
        return Plan("4bit", None, need(key, 1000, "4bit"), fits=False)
    return Plan("4bit", cap, need(key, cap, "4bit"))


def memory_table(tokens: int = 32768, keys: Sequence[str] | None = None) -> str:
    """The table ``rhlens models`` prints: per paper model, its parameters, weights, KV cache
    per 1K tokens, total need at ``tokens`` tokens in bf16 and 4 bit, download and access."""
    if not isinstance(tokens, int) or tokens < 1:
        from ..errors import UsageError

        raise UsageError(f"tokens must be a positive number of tokens, got {tokens!r}.",
                         arg="tokens")
    keys = list(CONFIGS if keys is None else keys)
    head = (f"{'model':26s} {'params':>7s} {'weights':>15s} {'KV/1K tok':>9s} "
            f"{'need at ' + format(tokens, ',') + ' tok':>20s} {'download':>9s}  access")
    sub = (f"{'':26s} {'':>7s} {'bf16 / 4-bit':>15s} {'':>9s} {'bf16 / 4-bit':>20s} "
           f"{'':>9s}")
    lines = [head, sub]
    for key in keys:
        c = config(key)
        b, q = need(key, tokens, "bf16"), need(key, tokens, "4bit")
        lines.append(
            f"{key:26s} {c.params() / 1e9:6.1f}B "
            f"{b.weights / 1e9:6.1f} / {q.weights / 1e9:4.1f} GB "
            f"{c.kv_bytes_per_token() * 1000 / 1e9:6.2f} GB "
            f"{b.total / 1e9:8.1f} / {q.total / 1e9:5.1f} GB "
            f"{download_bytes(key) / 1e9:6.1f} GB  "
            f"{'gated: accept the licence on the hub, log in' if is_gated(key) else 'open'}")
    lines += [
        "",
        f"Estimates from each checkpoint's config (GB = 1e9 bytes): weights + KV cache at "
        f"{tokens:,} tokens + activations + a margin of {MARGIN_FRACTION:.0%} and "
        f"{MARGIN_BYTES / 1e9:.0f} GB.",
        "Compare with what your GPU reports: torch.cuda.get_device_properties(0).total_memory "
        "(a Colab T4: about 15.8e9 bytes).",
        "4 bit (bitsandbytes) is applied after the download, which is the full 16-bit "
        "checkpoint; Mixtral's experts stay bf16 in 4 bit",
        "(transformers holds them as 3-D tensors, not nn.Linear): more than one 80 GB GPU "
        "either way (device_map=\"auto\").",
    ]
    return "\n".join(lines)


def gb(n_bytes: float) -> str:
    """``1.58e10`` -> ``"15.8 GB"`` (GB = 1e9 bytes, as the tables print them)."""
    return f"{n_bytes / 1e9:.1f} GB" if math.isfinite(n_bytes) else "?"
