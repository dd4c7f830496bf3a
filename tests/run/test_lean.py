"""Lean decode steps (rhlens.run.lean): the roomy KV cache and the shortened bridge components give
bit-for-bit what the plain cache and the bridge give, and hooks still act."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from transformers import DynamicCache

import rhlens.run.lean as lean
from rhlens.models.tiny import tiny_model
from rhlens.run.decode import decode_conditions, greedy_decode, new_cache
from rhlens.run.lean import RoomyLayer, lean_bridge, reserve


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(100, 40000, (n,), generator=torch.Generator().manual_seed(seed))


def _kv(t: int, seed: int, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, t, 4, generator=g), torch.randn(batch, 2, t, 4, generator=g)


@contextlib.contextmanager
def _plain(monkeypatch):
    """greedy_decode / decode_conditions without rhlens.run.lean (the plain cache and bridge)."""
    with monkeypatch.context() as m:
        m.setattr(lean, "lean_bridge", lambda model: contextlib.nullcontext(0))
        m.setattr(lean, "reserve", lambda cache, room: cache)
        yield


# ------------------------------------------------------------------ the roomy cache


def test_roomy_layer_holds_what_the_plain_layer_holds():
    plain, roomy = DynamicCache(), DynamicCache()
    k, v = _kv(7, 0)
    plain.update(k, v, 0)
    roomy.update(k, v, 0)
    reserve(roomy, 3)
    assert type(roomy.layers[0]) is RoomyLayer
    buffer = roomy.layers[0]._kbuf
    for step in range(5):  # past the room of 3: the layer grows new buffers
        k, v = _kv(1, step + 1)
        for cache in (plain, roomy):
            keys, values = cache.update(k, v, 0)
        assert torch.equal(keys, plain.layers[0].keys) and torch.equal(values, plain.layers[0].values)
        if step < 3:
            assert roomy.layers[0]._kbuf is buffer  # written in place
    assert roomy.get_seq_length() == plain.get_seq_length() == 12
    for cache in (plain, roomy):
        cache.crop(-4)
    k, v = _kv(2, 9)
    assert torch.equal(roomy.update(k, v, 0)[0], plain.update(k, v, 0)[0])


def test_roomy_layer_follows_batch_repeats_and_deep_copies():
    plain, roomy = DynamicCache(), reserve(DynamicCache(), 4)
    k, v = _kv(5, 0)
    for cache in (plain, roomy):
        cache.update(k, v, 0)
        cache.batch_repeat_interleave(3)
    copied = copy.deepcopy(roomy)
    k, v = _kv(1, 1, batch=3)
    assert torch.equal(roomy.update(k, v, 0)[0], plain.update(k, v, 0)[0])
    assert copied.get_seq_length() == 5  # the copy does not see the original's update
    k2, v2 = _kv(1, 2, batch=3)
    assert torch.equal(copied.update(k2, v2, 0)[0][..., -1:, :], k2)
    assert torch.equal(roomy.layers[0].keys[..., -1:, :], k)


def test_reserve_leaves_sliding_window_layers_and_refuses_negative_room():
    model = tiny_model("mistral", sliding_window=16)
    cache = reserve(new_cache(model), 8)
    assert all(type(layer) is not RoomyLayer for layer in cache.layers)
    with pytest.raises(ValueError, match="room"):
        reserve(DynamicCache(), -1)


# ------------------------------------------------------------------ the bridge


def test_lean_bridge_gives_the_bridge_s_outputs_and_hooks(tiny):
    ids = _ids(30)[None]
    reference = tiny(ids)
    with lean_bridge(tiny) as n:
        assert n == 3 * tiny.cfg.n_layers + 1  # ln1, ln2 and the block per layer; ln_final
        inside = tiny(ids)
        fired = []
        with tiny.hooks(fwd_hooks=[(lambda name: "ln" in name, lambda t, hook:
                                    fired.append(hook.name))]):
            tiny(ids)
    assert torch.equal(inside, reference)
    assert "blocks.0.ln1.hook_scale" in fired and "ln_final.hook_out" in fired  # full path
    assert all("forward" not in m.__dict__ and "_filter_kwargs_for_forward" not in m.__dict__
               for m in tiny.modules())


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")  # the bridge's own note
def test_an_edit_of_hook_scale_still_acts(tiny_llama):
    ids = _ids(30)[None]

    def double(t, hook):
        return t * 2

    edit = [("blocks.1.ln2.hook_scale", double)]
    with tiny_llama.hooks(fwd_hooks=edit):
        reference = tiny_llama(ids)
        with lean_bridge(tiny_llama):
            inside = tiny_llama(ids)
    assert torch.equal(inside, reference)
    assert not torch.allclose(reference, tiny_llama(ids))


def test_decoding_is_bit_for_bit_the_plain_one(tiny, monkeypatch):
    ids = _ids(200, seed=1)
    kw = {"max_new_tokens": 8, "stop_at_newline": False,
          "record_rows": [(l, h) for l in range(tiny.cfg.n_layers) for h in range(tiny.cfg.n_heads)]}
    with _plain(monkeypatch):
        plain = greedy_decode(tiny, ids, **kw)
    fast = greedy_decode(tiny, ids, **kw)
    assert fast.tokens.tolist() == plain.tokens.tolist()
    assert torch.equal(fast.argmax, plain.argmax)
    assert all(torch.equal(fast.rows[k], plain.rows[k]) for k in plain.rows)
    conditions = {"none": [], "zero": [("blocks.1.attn.hook_z", lambda z, hook: z * 0)]}
    with _plain(monkeypatch):
        plain_answers = decode_conditions(tiny, ids, conditions, 8, False)
    assert decode_conditions(tiny, ids, conditions, 8, False) == plain_answers


def test_components_are_called_directly_unless_accelerate_hooks_them(tiny_llama, monkeypatch):
    """Within lean_bridge a component skips accelerate's align_module_device (a no-op without
    an accelerate hook); one whose module carries a hook (``_hf_hook``, as a ``device_map``
    that offloads sets it) still goes through it, and leaving restores the bridge's call."""
    import transformer_lens.model_bridge.generalized_components.base as base

    aligned: list[torch.nn.Module] = []

    @contextlib.contextmanager
    def spy(module, execution_device=None):
        aligned.append(module)
        yield

    monkeypatch.setattr(base, "align_module_device", spy)
    ids = _ids(20)[None]
    reference = tiny_llama(ids)
    assert aligned  # the bridge aligns every component's module
    hooked = tiny_llama.blocks[1].mlp.original_component
    hooked._hf_hook = object()  # what accelerate's add_hook_to_module leaves
    try:
        aligned.clear()
        with lean_bridge(tiny_llama):
            with lean_bridge(tiny_llama):  # an inner block leaves it to the outer one
                inside = tiny_llama(ids)
            assert base.GeneralizedComponent.__call__ is lean._component_call
        assert aligned == [hooked]
        assert base.GeneralizedComponent.__call__ is not lean._component_call
        assert torch.equal(inside, reference)
        aligned.clear()
        tiny_llama(ids)
        assert len(aligned) > 1  # the bridge's own call again
    finally:
        del hooked._hf_hook
