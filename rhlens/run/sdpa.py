"""Run a ``TransformerBridge``'s attention through Hugging Face's SDPA, without hooks.

Scoring needs attention rows only at the decode steps, but the bridge computes every
attention eagerly (``query @ key^T``, then softmax), so a prefill chunk of ``c`` tokens over
``n`` keys materialises ``heads x c x n`` scores in every layer. At 80K tokens that made
greedy decoding ~9x slower than ``generate`` with SDPA. :func:`sdpa_attention` routes the
attention of every decoder layer back to the Hugging Face attention module the bridge wraps,
with ``attn_implementation="sdpa"``, for as long as the ``with`` block lasts; the decode steps
that follow run through the bridge again and record their rows as before::

    >>> from transformers import DynamicCache
    >>> from rhlens.run.decode import prefill
    >>> cache = DynamicCache(config=model.original_model.config)           # doctest: +SKIP
    >>> with sdpa_attention(model):                                        # doctest: +SKIP
    ...     prefill(model, ids[:-1], cache)   # fills the cache; no score matrix is built
    >>> step = model(ids[-1:][None], return_type="logits_and_cache",  # doctest: +SKIP
    ...              past_key_values=cache)   # a decode step: hooked, eager, reads that cache

Two traps, both measured, explain the shape of this module:

* ``model.original_model.set_attn_implementation("sdpa")`` changes nothing: each decoder
  layer's ``self_attn`` *is* the bridge's attention component
  (``PositionEmbeddingsAttentionBridge`` for Llama, Mistral, Qwen2, Mixtral), which
  reimplements attention eagerly whatever the config says. Only the Hugging Face module it
  wraps (``component.original_component``) honours the config.
* A bridge component forwards attribute assignment to the module it wraps, so rebinding
  ``component.forward`` (or any method) on it silently lands on the wrapped module and the
  bridge keeps computing eagerly.

So the swap happens one level up, in the decoder layer's own ``_modules`` table: the slot
that held the bridge component gets the wrapped Hugging Face module for the duration, and
the config's ``_attn_implementation`` (which also decides the causal mask the model builds)
is ``"sdpa"``. Both are put back in a ``finally``, exception or not. Everything else is
untouched: the q/k/v/o projections are the bridge's ``LinearBridge`` wrappers either way,
rotary embeddings and positions come from the model (so the decode steps after an SDPA
prefill see the right positions), MoE blocks and Qwen2's q/k/v biases live in modules that
are not swapped, and the Hugging Face module writes its keys and values into the same
``DynamicCache`` (same layer index, same layout, sliding-window layers included) that the
bridge reads at the decode steps.

While the swap is on, the attention component's own hooks (``hook_pattern``,
``hook_attn_scores``, ``hook_rot_q``, ``hook_attn_out``...) cannot fire; entering refuses when
any of them has a hook attached rather than silently skipping it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["sdpa_attention", "attention_hooks_in_use", "attention_components", "attention_configs"]


@dataclass
class _Swap:
    layer: torch.nn.Module  # the Hugging Face decoder layer
    key: str  # its attribute that holds the attention
    bridge: torch.nn.Module  # the bridge's attention component
    hf_attention: torch.nn.Module  # the Hugging Face module the component wraps


def attention_components(model) -> list[tuple[int, torch.nn.Module]]:
    """``(block index, attention component)`` of every block of ``model`` (a
    ``TransformerBridge``) that has a TransformerLens attention component; empty for a model
    without ``blocks``. Every swap of a bridge's attention (:func:`sdpa_attention`,
    :func:`rhlens.run.gqa.grouped_decode_attention`) finds the components here."""
    from transformer_lens.model_bridge.generalized_components import AttentionBridge

    blocks = model._modules.get("blocks")
    if blocks is None:
        return []
    found: list[tuple[int, torch.nn.Module]] = []
    for i, block in enumerate(blocks):
        attn = block._modules.get("attn")
        if isinstance(attn, AttentionBridge):
            found.append((i, attn))
    return found


def _swappable(model) -> list[tuple[int, torch.nn.Module]]:
    """:func:`attention_components`, refusing a model that has none (nothing to swap)."""
    if model._modules.get("blocks") is None:
        raise ValueError(
            f"{type(model).__name__} has no `blocks`: sdpa_attention needs a TransformerBridge "
            "of a decoder-only model; prefill with prefill_attention='eager' instead."
        )
    found = attention_components(model)
    if not found:
        raise ValueError(
            "No block of this model has a TransformerLens attention component; "
            "prefill with prefill_attention='eager' instead."
        )
    return found


def _own_hook_points(component: torch.nn.Module) -> dict[str, Any]:
    """Hook points that ``component``'s own forward fires (not those of its q/k/v/o)."""
    from transformer_lens.hook_points import HookPoint

    return {n: m for n, m in component._modules.items() if isinstance(m, HookPoint)}


def attention_hooks_in_use(model) -> list[str]:
    """Names of attention hook points that have hooks attached and that an SDPA forward
    would not fire (e.g. ``blocks.3.attn.hook_pattern``)."""
    names: list[str] = []
    for _, attn in _swappable(model):
        for name, point in _own_hook_points(attn).items():
            if point.has_hooks(dir="both"):
                names.append(point.name or name)  # the bridge names its hook points in full
    return names


def _plan(model) -> list[_Swap]:
    swaps = []
    for i, attn in _swappable(model):
        block = model.blocks[i]
        layer = block._modules.get("_original_component")
        hf_attention = attn._modules.get("_original_component")
        path = str(attn.name or "")
        parent = layer
        for part in path.split(".")[:-1]:
            parent = parent._modules.get(part) if parent is not None else None
        key = path.split(".")[-1]
        held = parent._modules.get(key) if parent is not None else None
        if hf_attention is None or held is None:
            raise RuntimeError(
                f"Block {i}: cannot find where the decoder layer holds its attention "
                f"({path!r}); this architecture is not supported by sdpa_attention. "
                "Prefill with prefill_attention='eager' instead."
            )
        if held is hf_attention:  # an outer sdpa_attention already swapped it
            continue
        if held is not attn:
            raise RuntimeError(
                f"Block {i}: the decoder layer's {path!r} is a {type(held).__name__}, neither "
                "the bridge's attention component nor the module it wraps; "
                "prefill with prefill_attention='eager' instead."
            )
        swaps.append(_Swap(parent, key, attn, hf_attention))
    return swaps


def attention_configs(model, hf_attentions) -> list:
    """Every distinct config whose ``_attn_implementation`` ``model``'s forward reads: the
    model's, those of the Hugging Face attention modules ``hf_attentions``, and their
    sub-configs (what a swap of the attention implementation must set and put back)."""
    hf = model.original_model
    seen: dict[int, object] = {}
    todo = [hf.config, *(getattr(m, "config", None) for m in hf_attentions)]
    while todo:
        cfg = todo.pop()
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation_internal"):
            continue
        seen[id(cfg)] = cfg
        todo.extend(getattr(cfg, key, None) for key in getattr(cfg, "sub_configs", {}) or {})
    return list(seen.values())


@contextlib.contextmanager
def sdpa_attention(model) -> Iterator[None]:
    """Within the block, every decoder layer of ``model`` (a ``TransformerBridge``) attends
    with the Hugging Face module's SDPA attention instead of the bridge's eager one.

    Forwards inside the block fill a ``past_key_values`` cache exactly as the bridge would
    and produce the same logits (up to float rounding), without computing or keeping any
    attention score matrix, and without firing the attention component's hooks. Leaving the
    block (normally or by an exception) restores the bridge completely.

    Raises:
        ValueError: when hooks are attached to attention hook points (they would not fire),
            or when the model has no attention components / does not support SDPA.
        RuntimeError: when an architecture holds its attention in an unexpected place.
    """
    hooked = attention_hooks_in_use(model)
    if hooked:
        shown = ", ".join(hooked[:4]) + (f" and {len(hooked) - 4} more" if len(hooked) > 4 else "")
        raise ValueError(
            f"Hooks are attached to {shown}, which an SDPA forward does not fire. Pass them as "
            "prefill_hooks (or prefill_attention='eager') so the prefill runs through the "
            "bridge's hooked attention, or remove them before the prefill."
        )
    hf = model.original_model
    if not getattr(hf, "_supports_sdpa", False):
        raise ValueError(
            f"{type(hf).__name__} does not support attn_implementation='sdpa'; "
            "prefill with prefill_attention='eager' instead."
        )
    swaps = _plan(model)
    configs = attention_configs(model, [s.hf_attention for s in swaps])
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in configs]
    try:
        for cfg in configs:
            cfg._attn_implementation_internal = "sdpa"
        for s in swaps:
            s.layer._modules[s.key] = s.hf_attention
        yield
    finally:
        for s in swaps:
            s.layer._modules[s.key] = s.bridge
        for cfg, value in saved:
            cfg._attn_implementation_internal = value
