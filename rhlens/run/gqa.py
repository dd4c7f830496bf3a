"""Grouped-query attention at decode steps, without copies of the shared keys and values.

Under grouped-query attention (GQA) ``g = n_heads / n_kv_heads`` query heads share one KV
head. The bridge's eager attention (TransformerLens 4.x ``PositionEmbeddingsAttentionBridge``,
used for Llama, Mistral, Qwen2 and Mixtral) first expands the KV cache to one copy per query
head (``repeat_kv``), then multiplies: at a decode step that copies the whole cache twice per
layer and reads it ``g`` times, where Hugging Face's SDPA reads it once. On SmolLM2 (9 query
heads, 3 KV heads) at 2,000 keys that made a layer's decode attention 5.9 ms against SDPA's
0.86 ms, and a decode step twice as slow as ``generate``'s.

:func:`grouped_decode_attention` computes the same rows as a grouped matmul instead: the one
query row of each head is reshaped to ``[batch, kv_heads, group, d_head]`` and multiplied by
its KV head's keys ``[batch, kv_heads, d_head, n]`` (one ``bmm`` over ``batch x kv_heads``,
no copy), and the pattern ``[batch, kv_heads, group, n]`` by the shared values. Everything
else is the bridge's own code path, called on the bridge's own modules, so every hook the
bridge fires at a decode step fires here with a tensor of the same shape, in the same order,
and what a hook returns is used the same way:

* ``hook_in``, ``hook_q``/``hook_k``/``hook_v`` (the q/k/v ``LinearBridge`` projections),
  ``hook_cos``/``hook_sin``, ``hook_rot_q``/``hook_rot_k`` (before the KV cache is extended);
* ``hook_attn_scores`` ``[batch, n_heads, 1, n]`` (pre-softmax, after the causal / sliding
  window mask) and ``hook_pattern`` ``[batch, n_heads, 1, n]``: the grouped scores and
  pattern are *views* ``[batch, n_heads, 1, n]`` of the grouped tensors (head ``h`` is
  row ``h % g`` of KV head ``h // g``, as ``repeat_kv`` orders them), so masks
  (:class:`rhlens.intervene.mask.Mask` ``"uniform"``, the compressed-cache mask) edit the same
  entries;
* ``hook_z`` (the output projection's input, where ``"zero"``/``"mean"`` masks and
  activation patching act) and ``hook_out`` (``hook_attn_out``).

The rows agree with the bridge's up to float rounding (the grouped matmul may sum a score's
``d_head`` products in another order, and later layers carry the difference on):
``tests/run/test_grouped_decode.py`` holds it to the bridge on every architecture and on SmolLM2.
The largest difference of an attention row seen there is 1.9e-9 on the tiny models and 1.5e-6
on SmolLM2 (float32, 800 keys); tokens, argmaxes and retrieval scores are identical, with and
without masks and patches.

**When it applies.** Only to forwards of one query token (decode steps), in layers with
``g > 1`` (under multi-head attention there is no copy to avoid, and the bridge runs
untouched), whose attention component is exactly ``PositionEmbeddingsAttentionBridge`` with
none of the features its eager forward handles beyond plain RoPE attention (q/k norms, gated
queries, soft-capping, attention sinks, scaled keys, clipped q/k/v, interleaved or partial
rotary, Llama-4 query scaling, split q/k/v inputs, per-head results, dropout in training).
Any other forward (a prefill chunk, a teacher-forced suffix, such a layer) runs the bridge's
own attention, unchanged. Nothing is refused: every hook that the bridge fires is fired.

**Why it lives here.** The copy is made inside TransformerLens's attention component; the
right fix is a grouped path in its eager forward. Until it has one, rhlens swaps in this
forward for the decode loops of :mod:`rhlens.run.decode`, behind this one context manager, so
that it can be replaced by the upstream path when it exists. The swap sets the component's
``forward`` for the duration (the bridge component's ``__call__``, which aligns offloaded
weights and runs PyTorch module hooks, is kept), and restores it in a ``finally``. The grouped
computation itself is :func:`grouped_attention`, which :mod:`rhlens.run.direct` also runs as the
model's attention function where a layer's attention runs as the Hugging Face module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .sdpa import attention_components

__all__ = ["grouped_decode_attention", "grouped_layers", "grouped_attention",
           "plain_rope_attention"]

#: Config flags of the bridge's attention that change its computation; any of them set
#: leaves a layer to the bridge.
_UNSUPPORTED_FLAGS = ("gated_q_proj", "rotary_interleaved_cos_sin", "rotary_adjacent_pairs",
                      "qk_norm_after_rope")
#: Per-forward config flags (a user may toggle them while the context is open).
_DYNAMIC_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_attn_result")


def _group_size(attn) -> int:
    return int(getattr(attn.original_component, "num_key_value_groups", 1) or 1)


def plain_rope_attention(attn) -> bool:
    """Whether ``attn`` (a bridge attention component) computes plain RoPE attention, which
    :func:`grouped_attention` reproduces: exactly ``PositionEmbeddingsAttentionBridge``, none
    of the features listed in the module docstring (checked once, on entry)."""
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    if type(attn) is not PositionEmbeddingsAttentionBridge:  # subclasses change the forward
        return False
    hf = attn._modules.get("_original_component")
    if hf is None:
        return False
    if any(name in attn.submodules for name in ("q_norm", "k_norm", "gate")):
        return False
    if not all(name in attn._modules for name in ("q", "k", "v", "o")):
        return False
    if any(getattr(attn.config, flag, False) for flag in _UNSUPPORTED_FLAGS):
        return False
    for attr in ("key_multiplier", "attn_logit_softcapping", "sinks"):
        if getattr(hf, attr, None) is not None:
            return False
    hf_config = getattr(hf, "config", None)
    if getattr(hf_config, "clip_qkv", None) is not None:
        return False
    rope = getattr(hf_config, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None:
        return False
    return "hook_k" in attn.hook_aliases  # an owned hook_k means scaled keys


def _eligible(attn) -> bool:
    """Plain RoPE attention under GQA (``g > 1``): where :func:`_forward` saves the copies."""
    return plain_rope_attention(attn) and _group_size(attn) >= 2


def grouped_layers(model) -> list[int]:
    """Indices of the blocks whose decode steps :func:`grouped_decode_attention` computes
    grouped (empty under multi-head attention)."""
    return [i for i, attn in attention_components(model) if _eligible(attn)]


def _applies(attn, args: tuple, kwargs: dict) -> bool:
    """Per forward: one query token, and nothing that changes the path since entry."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3 or hidden.shape[1] != 1:
        return False
    if kwargs.get("position_embeddings") is None:  # the bridge warns: let it
        return False
    if any(getattr(attn.config, flag, False) for flag in _DYNAMIC_FLAGS):
        return False
    hf = attn.original_component
    if attn.training and getattr(hf, "attention_dropout", 0.0) > 0.0:
        return False
    cos = kwargs["position_embeddings"][0]
    return cos.shape[-1] == hf.head_dim  # full rotary (no partial or half-width RoPE)


def _forward(attn, *args: Any, **kwargs: Any):
    """The bridge's ``PositionEmbeddingsAttentionBridge.forward`` for one query token, with
    the GQA expansion replaced by a grouped matmul; falls back to the bridge otherwise."""
    if not _applies(attn, args, kwargs):
        return type(attn).forward(attn, *args, **kwargs)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hf = attn.original_component
    if "hidden_states" in kwargs:
        hidden_states = kwargs.pop("hidden_states")
    else:
        hidden_states, args = args[0], args[1:]
    position_embeddings = kwargs.pop("position_embeddings")
    attention_mask = kwargs.pop("attention_mask", None)

    hidden_states = attn.hook_in(hidden_states)
    batch = hidden_states.shape[0]
    head_dim = hf.head_dim
    query = attn.q(hidden_states).view(batch, 1, -1, head_dim).transpose(1, 2)
    key = attn.k(hidden_states).view(batch, 1, -1, head_dim).transpose(1, 2)
    value = attn.v(hidden_states).view(batch, 1, -1, head_dim).transpose(1, 2)
    cos, sin = attn._apply_position_embedding_hooks(position_embeddings)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if hasattr(attn, "hook_rot_q"):
        query = attn.hook_rot_q(query)
    if hasattr(attn, "hook_rot_k"):
        key = attn.hook_rot_k(key)
    key, value = attn._update_kv_cache(key, value, **kwargs)  # [batch, kv_heads, n, d]

    scaling = getattr(hf, "scaling", head_dim**-0.5)
    out, pattern = grouped_attention(attn, query, key, value, attention_mask, scaling)
    out = out.reshape(batch, 1, -1)  # [b, heads, 1, d] -> [b, 1, heads * d]: a free view at q = 1
    out = attn.hook_out(attn.o(out))
    return out, pattern


def grouped_attention(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float):
    """The attention of ``attn`` (a bridge attention component) from rotated queries
    ``[batch, heads, q, d]`` and cached keys and values ``[batch, kv_heads, n, d]``, each KV head
    read once for its whole group, firing the component's ``hook_attn_scores`` and
    ``hook_pattern`` with ``[batch, heads, q, n]`` tensors as its own eager forward does (the
    causal or sliding-window mask applied by the component itself).

    Returns ``(out, pattern)``: the heads' outputs ``[batch, heads, q, d]`` (before the output
    projection, in its dtype, as the bridge casts them) and the pattern the hooks returned.
    The one computation of both decode paths: :func:`grouped_decode_attention` and
    :mod:`rhlens.run.direct`.
    """
    batch, n_heads, q_len, head_dim = query.shape
    kv_heads, n = key.shape[1], key.shape[-2]
    if n_heads % kv_heads:  # a hook changed the head count: nothing to group
        raise RuntimeError(f"{attn.name}: {n_heads} query heads do not form groups over "
                           f"{kv_heads} KV heads; a hook on hook_rot_q/hook_rot_k changed the heads.")
    group = n_heads // kv_heads
    # [batch, kv, group * q, d] @ [batch, kv, d, n]: each KV head read once for its whole group
    # (head h is row block h % g of KV head h // g, as repeat_kv orders them).
    grouped_q = query.reshape(batch, kv_heads, group * q_len, head_dim)
    scores = torch.matmul(grouped_q, key.transpose(-2, -1)) * scaling
    scores = scores.view(batch, n_heads, q_len, n)
    scores = attn._apply_reconstruct_attention_mask(
        attn_scores=scores, attention_mask=attention_mask, seq_len=n, q_seq_len=q_len)
    scores = attn.hook_attn_scores(scores)
    pattern = attn._masked_softmax(scores, dtype=torch.float32).to(query.dtype)
    pattern = attn._scrub_compatibility_pattern_nans(pattern)
    pattern = attn.hook_pattern(pattern)
    out = torch.matmul(pattern.reshape(batch, kv_heads, group * q_len, n), value)
    o_weight = getattr(attn.o.original_component, "weight", None)
    if (isinstance(o_weight, torch.Tensor) and o_weight.dtype.is_floating_point
            and out.dtype != o_weight.dtype):
        out = out.to(o_weight.dtype)
    return out.view(batch, n_heads, q_len, head_dim), pattern


@contextlib.contextmanager
def grouped_decode_attention(model, enabled: bool = True) -> Iterator[list[int]]:
    """Within the block, decode steps of ``model`` (a ``TransformerBridge``) compute GQA
    attention grouped, without ``repeat_kv`` copies, firing the bridge's hooks as it does.

    Yields the indices of the blocks it applies to (:func:`grouped_layers`; empty under
    multi-head attention, or with ``enabled=False``, which leaves the bridge untouched: the
    reference path). Forwards of more than one token run the bridge's own attention. Leaving
    the block (normally or by an exception) restores every component.
    """
    swapped, active = [], []
    try:
        if enabled:
            for i, attn in attention_components(model):
                if "forward" in attn.__dict__:  # an outer grouped_decode_attention swapped it
                    active.append(i)
                elif _eligible(attn):
                    # object.__setattr__: a bridge component forwards attribute assignment
                    # to the module it wraps; the instance's ``forward`` shadows the class's.
                    object.__setattr__(attn, "forward",
                                       lambda *a, _attn=attn, **k: _forward(_attn, *a, **k))
                    swapped.append(attn)
                    active.append(i)
        yield active
    finally:
        for attn in swapped:
            attn.__dict__.pop("forward", None)
