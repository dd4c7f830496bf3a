"""Decode steps through the modules the bridge wraps, firing the hooks that are in use.

A ``TransformerBridge`` puts a component in place of every module of the Hugging Face model it
wraps (embedding, blocks, norms, attention, MLPs, each linear projection), and each component
calls its module between hook points (``hook_in``, ``hook_out``...). On SmolLM2 that is about
1,600 module calls per decode step where ``generate`` makes about 400: with grouped attention
(:mod:`rhlens.run.gqa`) and the lean bridge (:mod:`rhlens.run.lean`) a step still cost about
1.10x a Hugging Face step at 2,000 keys (CPU), nearly all of it in those calls, whose hook
points nothing reads during a scoring run: only ``hook_pattern`` has a hook, the recorder.

:func:`direct_modules` removes those calls, and only those: within the block, a component
runs as the module it wraps when none of its hook points has a hook, so that the hooks in use
fire, with the same tensors, and the others cost nothing. Concretely, on entry (after the
hooks of the run are attached):

* each **linear projection, gated MLP, mixture-of-experts block, embedding, unembedding and
  rotary embedding** whose hook points have no hooks is replaced, in its parent's module table,
  by the module it wraps (their forwards are ``hook_in``, the module, ``hook_out``, and for a
  mixture of experts ``hook_router_scores`` on what the module returns); one with a hook
  stays. So ``hook_z`` (the output projection's input, where ``"zero"``/``"mean"`` masks and
  patches act), ``hook_q``/``hook_k``/``hook_v`` and the MLP's hooks still fire where they
  are used;
* each **normalization** whose hook points are idle and which runs its module natively (its
  output is then the module's); the pre-hooks its block puts on it to capture the residual
  (for split q/k/v inputs and ``hook_mlp_in``) do nothing unless those features are switched
  on, and with any of them on no normalization is swapped;
* each **block** without hooks on its own points (``hook_resid_pre``/``hook_resid_post``...)
  calls the decoder layer it wraps and returns its output, skipping its own per-call work (its
  forward is set for the duration; the block stays in place, since ``model.blocks`` is the
  decoder's own layer list);
* each **attention** component of plain RoPE attention (:func:`rhlens.run.gqa.plain_rope_attention`)
  whose own hook points other than ``hook_attn_scores`` and ``hook_pattern`` have no hooks
  runs as the Hugging Face attention module, with the model's attention function set to
  :func:`rhlens.run.gqa.grouped_attention` (registered with transformers' ``AttentionInterface``,
  with the eager causal mask), which fires the component's ``hook_attn_scores`` and
  ``hook_pattern`` as its own forward does. Uniform head masks (on ``hook_attn_scores``) and
  the argmax recorder (on ``hook_pattern``) act there.

Everything else is left to the bridge: mixture-of-experts routers (whose hooks rebuild the
expert weights), any component of another or a derived type, and every component whose hook points are in use. A
global PyTorch module hook turns the whole thing off. Nothing is computed differently: the
modules that run are the ones the components call, with the same inputs, so logits, cache,
hooked tensors and tokens are those of the grouped bridge bit for bit
(``tests/run/test_direct.py``, every tiny architecture and SmolLM2, with masks and hooks at
other points).

Measured on SmolLM2 at 2,000 keys (CPU, 2 threads, median of 25 alternated steps): a decode
step with the recorder went from 51.6 ms through the lean grouped bridge to 45.6 ms, against
45.1 ms for a Hugging Face step (which copies its KV cache at every step); ``rhlens score``
went from 1.056x ``generate``'s time per sample to 0.995x (``benchmarks/bench_speed.py``).

Like :mod:`rhlens.run.gqa` and :mod:`rhlens.run.lean`, this works around TransformerLens from
outside, behind one context manager, and can go when the bridge skips idle components itself.
The swaps are decided once, on entry: a hook added inside the block to a component that was
swapped out does not fire. The bridge's own names are untouched (``model.blocks[i].attn``,
``model.embed``... are the components throughout): only the Hugging Face model's module tree
holds the wrapped modules for the duration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .gqa import grouped_attention, plain_rope_attention
from .hooks import module_hooked
from .sdpa import attention_components, attention_configs

__all__ = ["direct_modules", "DirectPlan", "ATTENTION_FUNCTION"]

#: The name under which :func:`grouped_attention` is registered with transformers.
ATTENTION_FUNCTION = "rhlens_grouped"
#: Hook points of an attention component that the attention function fires itself.
_FIRED = frozenset({"hook_attn_scores", "hook_pattern"})
#: The attention components swapped out, by the id of the Hugging Face module in their place
#: (the attention function finds a module's hook points here).
_ACTIVE: dict[int, Any] = {}


@dataclass
class DirectPlan:
    """What :func:`direct_modules` swapped: the components now running as their modules (by
    TransformerLens name: ``blocks.3``, ``blocks.3.attn.o``...) and the blocks whose attention
    runs through the attention function."""

    components: list[str] = field(default_factory=list)
    attention_layers: list[int] = field(default_factory=list)


def _idle_capture_hooks(model) -> frozenset[int] | None:
    """Ids of the blocks' capture pre-hooks (on ``ln1``/``ln2``: the split-qkv residual and
    ``hook_mlp_in``) when the flags that read what they capture are all off; ``None`` when one
    is on (the blocks' own forwards then manage what is captured)."""
    from transformer_lens.model_bridge.generalized_components import BlockBridge

    flags = ("use_split_qkv_input", "use_attn_in", "use_hook_mlp_in")
    ids: set[int] = set()
    for block in model._modules.get("blocks") or ():
        if isinstance(block, BlockBridge):
            if any(getattr(cfg, flag, False) for cfg in (model.cfg, block.config)
                   for flag in flags) or getattr(block, "_use_hook_mlp_in", False):
                return None
            ids.update(handle.id for handle in getattr(block, "_capture_hook_handles", ()))
    return frozenset(ids)


def _own_points_idle(component, allowed: frozenset[str] = frozenset(),
                     idle: frozenset[int] = frozenset()) -> bool:
    """No hook on ``component`` itself (``idle`` pre-hooks aside) nor on its own hook points
    (those of its sub-components are theirs), ``allowed`` names excepted."""
    from transformer_lens.hook_points import HookPoint

    if module_hooked(component, idle):
        return False
    return not any(isinstance(m, HookPoint) and name not in allowed and module_hooked(m)
                   for name, m in component._modules.items())


def _transparent_types() -> tuple[type, ...]:
    """Component types whose forward, with idle hook points, returns what their module
    returns (read from TransformerLens 4.x)."""
    from transformer_lens.model_bridge.generalized_components import (
        EmbeddingBridge,
        GatedMLPBridge,
        LinearBridge,
        MoEBridge,
        RotaryEmbeddingBridge,
        UnembeddingBridge,
    )

    return (LinearBridge, GatedMLPBridge, MoEBridge, EmbeddingBridge, UnembeddingBridge,
            RotaryEmbeddingBridge)


def _swappable(component, idle: frozenset[int] | None) -> bool:
    """Whether ``component`` may run as its module (attention aside); ``idle``: the ids of
    pre-hooks that do nothing (:func:`_idle_capture_hooks`; ``None``: capture is on)."""
    from transformer_lens.model_bridge.generalized_components import (
        BlockBridge,
        NormalizationBridge,
        RMSNormalizationBridge,
    )

    inner = component._modules.get("_original_component")
    if inner is None:
        return False
    if type(component) in _transparent_types():
        if getattr(component, "_use_processed_weights", False):  # a gated MLP's own path
            return False
        if getattr(component, "_suppress_next_hook_in", False):
            return False
        if float(getattr(component, "_output_contribution_scale", 1.0)) != 1.0:
            return False  # a scaled embedding
        return _own_points_idle(component)
    if type(component) is BlockBridge:
        return (idle is not None
                and getattr(component, "_stop_at_layer_idx", None) is None
                and getattr(component, "_start_at_layer_idx", None) is None
                and _own_points_idle(component))
    if type(component) in (NormalizationBridge, RMSNormalizationBridge):
        # Its forward returns the module's output when it runs the module natively (else it
        # computes the norm itself); the block's capture pre-hooks may sit on it.
        native = component.use_native_layernorm_autograd or getattr(
            component.config, "layer_norm_folding", False)
        return (bool(native) and not isinstance(inner, torch.nn.Identity)
                and _own_points_idle(component, idle=idle or frozenset()))
    return False


def _attention_swappable(attn) -> bool:
    hf = attn._modules.get("_original_component")
    if hf is None or not plain_rope_attention(attn) or not _own_points_idle(attn, _FIRED):
        return False
    if attn.training and getattr(hf, "attention_dropout", 0.0) > 0.0:
        return False
    if any(getattr(attn.config, flag, False)
           for flag in ("use_split_qkv_input", "use_attn_in", "use_attn_result")):
        return False
    config = getattr(hf, "config", None)
    rope = getattr(config, "rope_parameters", None) or {}
    partial = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    partial = partial if partial is not None else getattr(config, "partial_rotary_factor", None)
    return partial in (None, 1.0)  # full rotary, as the bridge applies it


def _attention_function(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                        **kwargs):
    """transformers' attention interface: the component's grouped attention with its hooks;
    a module no :func:`direct_modules` block swapped gets transformers' eager attention."""
    attn = _ACTIVE.get(id(module))
    if attn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward

        return eager_attention_forward(module, query, key, value, attention_mask,
                                       scaling=scaling, dropout=dropout, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    out, pattern = grouped_attention(attn, query, key, value, attention_mask, scaling)
    return out.transpose(1, 2), pattern  # [batch, q, heads, d], as transformers expects


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if ATTENTION_FUNCTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_FUNCTION, _attention_function)
        # the causal / sliding-window mask the bridge's eager attention receives
        AttentionMaskInterface.register(ATTENTION_FUNCTION, eager_mask)


def _plan(model) -> tuple[list[tuple[torch.nn.Module, str, torch.nn.Module]], list, list,
                          DirectPlan]:
    """Every ``(parent, key, component)`` slot to give the wrapped module, the attention
    components among them, the blocks to call their layers directly, and the summary."""
    from transformer_lens.model_bridge.generalized_components import BlockBridge
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    attention = {id(attn): i for i, attn in attention_components(model)}
    idle = _idle_capture_hooks(model)
    names: dict[int, str] = {}  # component -> its TransformerLens name (blocks.0.attn.o)
    walk: list[tuple[str, torch.nn.Module]] = [("", model)]
    while walk:  # the bridge's own tree: every component under its name, the wrapped modules aside
        path, module = walk.pop()
        for key, child in module._modules.items():
            if child is not None and key != "_original_component":
                name = f"{path}.{key}" if path else key
                if isinstance(child, GeneralizedComponent):
                    names.setdefault(id(child), name)
                walk.append((name, child))
    slots: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    attentions: list = []
    blocks: list = []
    plan = DirectPlan()
    todo: list[torch.nn.Module] = [model.original_model]
    seen: set[int] = set()
    while todo:
        parent = todo.pop()
        if id(parent) in seen:
            continue
        seen.add(id(parent))
        for key, child in parent._modules.items():
            if child is None:
                continue
            if isinstance(child, GeneralizedComponent):
                inner = child._modules.get("_original_component")
                if id(child) in attention:
                    ok = _attention_swappable(child)
                    if ok:
                        attentions.append(child)
                        plan.attention_layers.append(attention[id(child)])
                else:
                    ok = _swappable(child, idle)
                if ok and isinstance(child, BlockBridge):
                    if "forward" not in child.__dict__:  # (else an outer block set it)
                        blocks.append(child)
                        plan.components.append(names.get(id(child), str(child.name or key)))
                elif ok:
                    slots.append((parent, key, child))
                    plan.components.append(names.get(id(child), str(child.name or key)))
                todo.append(inner if inner is not None else child)
            else:
                todo.append(child)
    plan.attention_layers.sort()
    return slots, attentions, blocks, plan


@contextlib.contextmanager
def direct_modules(model, enabled: bool = True) -> Iterator[DirectPlan]:
    """Within the block, every component of ``model`` (a ``TransformerBridge``) whose hook
    points are idle runs as the Hugging Face module it wraps, and plain RoPE attention runs
    as the Hugging Face module with :func:`rhlens.run.gqa.grouped_attention`, which fires the
    ``hook_attn_scores`` and ``hook_pattern`` hooks (see the module docstring).

    Enter it after the run's hooks are attached: the swaps are decided on entry. Yields a
    :class:`DirectPlan` (empty with ``enabled=False``, or under a global module hook); leaving
    the block (normally or by an exception) puts every component back.
    """
    hooks = torch.nn.modules.module
    if not enabled or hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        yield DirectPlan()
        return
    slots, swapped_attention, blocks, plan = _plan(model)
    configs = attention_configs(model, [c._modules["_original_component"]
                                        for c in swapped_attention])
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in configs]
    done: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    try:
        if swapped_attention:
            _register()
            for attn in swapped_attention:
                _ACTIVE[id(attn._modules["_original_component"])] = attn
            for cfg in configs:
                cfg._attn_implementation_internal = ATTENTION_FUNCTION
        for parent, key, child in slots:
            parent._modules[key] = child._modules["_original_component"]
            done.append((parent, key, child))
        for block in blocks:
            # The block stays where it is (``model.blocks`` is the decoder's own layer list, so
            # a swap there would change what ``model.blocks[i]`` is) and calls its layer;
            # object.__setattr__: a bridge component forwards attribute assignment to its module.
            object.__setattr__(block, "forward", block._modules["_original_component"])
        yield plan
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
        for parent, key, child in reversed(done):
            parent._modules[key] = child
        for cfg, value in saved:
            cfg._attn_implementation_internal = value
        for attn in swapped_attention:
            _ACTIVE.pop(id(attn._modules["_original_component"]), None)
