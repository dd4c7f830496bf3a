"""Lean decode steps: per-step work of the bridge and the KV cache that nothing reads, cut.

With grouped attention (:mod:`rhlens.run.gqa`), a decode step through the ``TransformerBridge``
still cost about 1.26x a plain Hugging Face step on SmolLM2 at 2,000 keys (CPU, median of
alternated steps). Profiling the steps (py-spy) showed where the rest went, beside the matrix
products both pay:

* **the KV cache** (14% of a step): ``DynamicLayer.update`` concatenates each layer's whole
  keys and values with the new token's, a copy of the cache at every step (``generate`` pays
  it too). :func:`reserve` gives each layer buffers with room for the tokens still to come,
  so a decode step writes its one key and value in place; the cache reads the same values.
* **normalization bridges** (5%): with no hook on ``hook_scale`` / ``hook_normalized``,
  TransformerLens computes the norm in Python for those hooks, then returns the Hugging Face
  module's own output. :func:`lean_bridge` calls only that module (same output, bit for bit),
  and the full path as soon as either hook point has a hook.
* **block bridges** (2.5%): each block reads its Hugging Face layer's signature
  (``inspect.signature``) at every call to filter keyword arguments; :func:`lean_bridge`
  reads it once.
* **accelerate's alignment** (5%, measured later): every bridge component's call enters
  ``accelerate.utils.align_module_device`` for the module it wraps, which materialises
  parameters offloaded by a ``device_map`` and does nothing otherwise, at the cost of a
  context manager per call (about 360 calls a step on SmolLM2). :func:`lean_bridge` calls
  the component directly when its module carries no accelerate hook (``_hf_hook``: nothing
  of it can be offloaded), and through the alignment otherwise.

Together they brought a step from 1.69x to about 1.13x ``generate``'s (SmolLM2, 2,000 keys, an
idle CPU; ``benchmarks/bench_speed.py``); the rest was the bridge's own per-module work (hook
points, a component call around every module), which :mod:`rhlens.run.direct` removes for the
components whose hooks are idle; what stays lean here is what that leaves to the bridge. Like
:mod:`rhlens.run.gqa`, these are TransformerLens/transformers internals worked around from
outside, each behind one function, to be dropped when the libraries do it themselves. The
prefill runs lean as well (:func:`rhlens.run.decode.prefill`), where the Python norms cost 4%
of an SDPA prefill. (This module imports transformers; :mod:`rhlens.run.decode` imports it
when it decodes.)
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from .hooks import module_hooked

__all__ = ["RoomyLayer", "reserve", "lean_bridge"]


# --------------------------------------------------------------------------- the KV cache


class RoomyLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in buffers with room to grow: ``update``
    writes the new tokens in place instead of copying the layer (``torch.cat``).

    ``keys``/``values`` are views of the buffers' filled part, so everything that reads a
    ``DynamicLayer`` reads them as usual; a crop keeps them views, and anything that replaces
    them (a batch repeat, a device move, a reorder) is picked up at the next update, which then
    copies them into new buffers.
    """

    _room: int = 0
    _kbuf: torch.Tensor | None = None
    _vbuf: torch.Tensor | None = None

    def _kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys and values (set once it is initialized)."""
        assert self.keys is not None and self.values is not None, "an uninitialized layer"
        return self.keys, self.values

    def _holds(self) -> bool:
        """Whether ``keys``/``values`` are still the filled prefix of the buffers."""
        for t, buf in zip(self._kv(), (self._kbuf, self._vbuf)):
            if (buf is None or t.dim() != 4 or t.data_ptr() != buf.data_ptr()
                    or t.stride() != buf.stride() or t.shape[:2] != buf.shape[:2]
                    or t.shape[-1] != buf.shape[-1] or t.dtype != buf.dtype):
                return False
        return True

    def _regrow(self, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
        """New buffers holding the current keys/values with room for ``extra + room``."""
        keys, values = self._kv()
        n = keys.shape[-2]
        kbuf, vbuf = (t.new_empty(*t.shape[:-2], n + extra + self._room, t.shape[-1])
                      for t in (keys, values))
        kbuf[..., :n, :] = keys
        vbuf[..., :n, :] = values
        self._kbuf, self._vbuf = kbuf, vbuf
        self.keys, self.values = kbuf[..., :n, :], vbuf[..., :n, :]
        return kbuf, vbuf

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self._kv()[0].numel() == 0:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
            self._kbuf = self._vbuf = None
        n, t = self._kv()[0].shape[-2], key_states.shape[-2]
        kbuf, vbuf = self._kbuf, self._vbuf
        if kbuf is None or vbuf is None or not self._holds() or n + t > kbuf.shape[-2]:
            kbuf, vbuf = self._regrow(t)
        kbuf[..., n : n + t, :] = key_states
        vbuf[..., n : n + t, :] = value_states
        self.keys, self.values = kbuf[..., : n + t, :], vbuf[..., : n + t, :]
        return self.keys, self.values


def reserve(cache, room: int):
    """Give every full-attention layer of ``cache`` (a transformers ``DynamicCache``) room for
    ``room`` more tokens, so that decode steps write their keys and values in place.

    Each plain ``DynamicLayer`` is replaced by a :class:`RoomyLayer` holding the same keys and
    values (one copy, what one ``torch.cat`` of the cache costs); sliding-window layers and
    other caches are left as they are. Returns ``cache``.

    >>> from transformers import DynamicCache
    >>> cache = DynamicCache()
    >>> _ = cache.update(torch.ones(1, 2, 5, 4), torch.ones(1, 2, 5, 4), 0)
    >>> keys, _ = reserve(cache, 8).update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), 0)
    >>> type(cache.layers[0]).__name__, keys.shape[-2], cache.get_seq_length()
    ('RoomyLayer', 6, 6)
    """
    if room < 0:
        raise ValueError(f"room must be a number of tokens >= 0, not {room}.")
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        return cache
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            new = RoomyLayer()
            new.__dict__.update(layer.__dict__)
            new._room, new._kbuf, new._vbuf = room, None, None
            if new.is_initialized and new.keys is not None and new.keys.numel():
                new._regrow(0)
            layers[i] = new
        elif type(layer) is RoomyLayer:
            layer._room = max(layer._room, room)
    return cache


# --------------------------------------------------------------------------- the bridge


def _norm_forward(norm, hidden_states, **kwargs):
    """``NormalizationBridge.forward`` when neither intermediate hook point has a hook: what
    its native path returns then, the Hugging Face module's output, without the Python norm
    it computes for those hooks."""
    if (module_hooked(norm.hook_scale) or module_hooked(norm.hook_normalized)
            or torch.nn.modules.module._global_forward_hooks
            or not (norm.use_native_layernorm_autograd
                    or getattr(norm.config, "layer_norm_folding", False))
            or isinstance(norm.original_component, torch.nn.Identity)):
        return type(norm).forward(norm, hidden_states, **kwargs)
    x = norm.hook_in(hidden_states)
    result = norm.original_component(x)
    if result.dtype != x.dtype:
        result = result.to(x.dtype)
    return norm.hook_out(result)


def _kwargs_filter(block):
    """``BlockBridge._filter_kwargs_for_forward`` with the layer's signature read once."""
    try:
        params = inspect.signature(block.original_component.forward).parameters
    except (ValueError, TypeError):  # as the bridge: pass everything through
        return lambda kwargs, num_positional_args=0: kwargs
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return lambda kwargs, num_positional_args=0: kwargs
    names = list(params)
    valid = set(names)

    def filter_kwargs(kwargs, num_positional_args=0):
        positional = set(names[:num_positional_args])
        return {k: v for k, v in kwargs.items() if k in valid and k not in positional}

    return filter_kwargs


def _component_call(self, *args, **kwargs):
    """``GeneralizedComponent.__call__`` without accelerate's alignment when the wrapped module
    has no accelerate hook, the alignment's no-op case; the bridge's own call otherwise."""
    original = self._modules.get("_original_component")
    if original is not None and "_hf_hook" in original.__dict__:
        return _BRIDGE_CALL(self, *args, **kwargs)
    return super(_COMPONENT, self).__call__(*args, **kwargs)


#: The bridge components' class and its own ``__call__`` (set when :func:`lean_bridge` first
#: replaces it).
_COMPONENT: Any = None
_BRIDGE_CALL: Any = None


@contextlib.contextmanager
def _direct_component_calls() -> Iterator[None]:
    """Bridge components called through :func:`_component_call` within the block (a class
    attribute, since ``__call__`` is looked up on the type; an inner block leaves it to the
    outer one, and leaving the outermost restores the bridge's own)."""
    global _BRIDGE_CALL, _COMPONENT
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    if GeneralizedComponent.__dict__["__call__"] is _component_call:
        yield
        return
    _COMPONENT, _BRIDGE_CALL = GeneralizedComponent, GeneralizedComponent.__dict__["__call__"]
    GeneralizedComponent.__call__ = _component_call  # type: ignore[method-assign]
    try:
        yield
    finally:
        GeneralizedComponent.__call__ = _BRIDGE_CALL  # type: ignore[method-assign]


@contextlib.contextmanager
def lean_bridge(model) -> Iterator[int]:
    """Within the block, ``model``'s normalization and block bridges skip the per-call work
    no hook reads (see the module docstring); outputs and hooks are the bridge's own.

    Yields the number of components it shortened; leaving the block (normally or by an
    exception) restores them all.
    """
    from transformer_lens.model_bridge.generalized_components.block import BlockBridge
    from transformer_lens.model_bridge.generalized_components.normalization import (
        NormalizationBridge,
    )

    changed: list[tuple[torch.nn.Module, str]] = []
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(_direct_component_calls())
        for module in model.modules():
            cls = type(module)
            if isinstance(module, NormalizationBridge) and "forward" not in module.__dict__ \
                    and cls.forward is NormalizationBridge.forward \
                    and cls._hf_autograd_forward_with_hooks is \
                    NormalizationBridge._hf_autograd_forward_with_hooks:
                # object.__setattr__: a bridge component forwards attribute assignment to
                # the module it wraps; the instance attribute shadows the class's method.
                object.__setattr__(module, "forward",
                                   lambda *a, _n=module, **k: _norm_forward(_n, *a, **k))
                changed.append((module, "forward"))
            elif isinstance(module, BlockBridge) and module.original_component is not None \
                    and "_filter_kwargs_for_forward" not in module.__dict__ \
                    and cls._filter_kwargs_for_forward is BlockBridge._filter_kwargs_for_forward:
                object.__setattr__(module, "_filter_kwargs_for_forward", _kwargs_filter(module))
                changed.append((module, "_filter_kwargs_for_forward"))
        yield len(changed)
    finally:
        for module, name in changed:
            module.__dict__.pop(name, None)
        stack.close()
