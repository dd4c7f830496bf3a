"""Decode steps through the wrapped modules (rhlens.run.direct): what runs is what the grouped
bridge runs, so logits, caches, hooked tensors, tokens and scores are equal bit for bit, the
hooks in use still fire, and leaving the block puts every component back."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch

import rhlens.run.direct as direct
from rhlens.intervene.mask import Mask
from rhlens.niah.haystack import NEEDLES, default_haystack
from rhlens.niah.prompts import build_sample
from rhlens.run.batch import greedy_decode_batch
from rhlens.run.decode import decode_conditions, greedy_decode, new_cache, prefill
from rhlens.run.direct import ATTENTION_FUNCTION, DirectPlan, direct_modules
from rhlens.run.gqa import grouped_decode_attention
from rhlens.run.hooks import act_name, every_layer
from rhlens.run.lean import lean_bridge
from rhlens.run.sdpa import attention_components, sdpa_attention
from rhlens.score.detect import score_sample


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(100, 40000, (n,), generator=torch.Generator().manual_seed(seed))


def _tree_components(model) -> list[str]:
    """Paths of the bridge components that sit in the Hugging Face model's own module tree
    (a component's own sub-components aside: the tree goes on through the module it wraps)."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    found, todo = [], [("", model.original_model)]
    while todo:
        path, module = todo.pop()
        for key, child in module._modules.items():
            if child is None:
                continue
            name = f"{path}.{key}" if path else key
            if isinstance(child, GeneralizedComponent):
                found.append(name)
                child = child._modules.get("_original_component")
            if child is not None:
                todo.append((name, child))
    return sorted(found)


@contextlib.contextmanager
def _steps(model, fast: bool) -> Iterator[DirectPlan]:
    """The decode steps' path with (``fast``) or without the direct modules."""
    with lean_bridge(model), grouped_decode_attention(model), \
            direct_modules(model, enabled=fast) as plan:
        yield plan


@pytest.fixture
def no_direct(monkeypatch):
    """Within the fixture's test, decode steps run through the lean grouped bridge only."""
    real = direct.direct_modules

    def off():
        monkeypatch.setattr(direct, "direct_modules",
                            lambda model, enabled=True: real(model, enabled=False))

    def on():
        monkeypatch.setattr(direct, "direct_modules", real)

    return off, on


# ------------------------------------------------------------------ what is swapped, and back


def test_idle_components_run_as_their_modules_and_come_back(tiny):
    before = _tree_components(tiny)
    configs = [tiny.original_model.config]
    impl = configs[0]._attn_implementation
    blocks = [type(b).__name__ for b in tiny.blocks]
    with direct_modules(tiny) as plan:
        inside = _tree_components(tiny)
        assert plan.attention_layers == list(range(tiny.cfg.n_layers))
        assert tiny.original_model.config._attn_implementation == ATTENTION_FUNCTION
        # the bridge's names still lead to its components; blocks call their layers
        assert [type(b).__name__ for b in tiny.blocks] == blocks
        assert type(tiny.blocks[0].attn).__name__ == "PositionEmbeddingsAttentionBridge"
        assert all("forward" in b.__dict__ for b in tiny.blocks)
    assert _tree_components(tiny) == before
    assert tiny.original_model.config._attn_implementation == impl
    assert not any("forward" in b.__dict__ for b in tiny.blocks)
    # only the blocks and what is left to the bridge stay in the tree: mixture-of-experts routers
    left = [name for name in inside if not name.rstrip("0123456789").endswith("layers.")]
    assert all(name.endswith("mlp.gate") for name in left), left
    assert bool(left) == (type(tiny.original_model).__name__ == "MixtralForCausalLM")
    with pytest.raises(KeyError), direct_modules(tiny):
        raise KeyError("boom")
    assert _tree_components(tiny) == before
    assert tiny.original_model.config._attn_implementation == impl


def test_disabled_or_under_a_global_hook_nothing_is_swapped(tiny_llama):
    before = _tree_components(tiny_llama)
    with direct_modules(tiny_llama, enabled=False) as plan:
        assert plan.components == [] and _tree_components(tiny_llama) == before
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        with direct_modules(tiny_llama) as plan:
            assert plan.components == [] and _tree_components(tiny_llama) == before
    finally:
        handle.remove()


def test_hooks_in_use_keep_their_components_and_fire_with_the_same_tensors(tiny_llama):
    model, ids = tiny_llama, _ids(200)
    names = [act_name("resid_pre", 1), act_name("z", 0), act_name("rot_q", 0),
             act_name("pattern", 1), act_name("attn_scores", 0), act_name("q", 1)]
    cache = new_cache(model)
    with sdpa_attention(model):
        prefill(model, ids[:-1], cache)
    seen: dict[bool, dict[str, list[torch.Tensor]]] = {}
    logits = {}
    for fast in (False, True):
        seen[fast] = {name: [] for name in names}

        def keep(tensor, hook, name, _seen=seen[fast]):
            _seen[name].append(tensor.clone())  # (hook.name is the aliased point's own name)
            return tensor * 1.5 if name == act_name("z", 0) else tensor  # an edit acts

        hooks = [(n, lambda t, hook, n=n: keep(t, hook, n)) for n in names]
        step_cache = copy.deepcopy(cache)
        with model.hooks(fwd_hooks=hooks), _steps(model, fast) as plan:
            out, _ = model(ids[-1:][None], return_type="logits_and_cache",
                           past_key_values=step_cache)
        logits[fast] = out
        if fast:
            swapped = set(plan.components)
            assert {"blocks.0", "blocks.1.attn.o", "blocks.1.attn"} <= swapped  # idle
            assert "blocks.1" not in swapped  # hook_resid_pre is in use
            assert "blocks.0.attn.o" not in swapped  # hook_z
            assert "blocks.1.attn.q" not in swapped  # hook_q
            assert "blocks.0.attn" not in swapped  # hook_rot_q: left to the bridge
            assert plan.attention_layers == [1]
    for name in names:
        assert len(seen[True][name]) == len(seen[False][name]) == 1, name
        assert torch.equal(seen[True][name][0], seen[False][name][0]), name
    assert torch.equal(logits[True], logits[False])


# ------------------------------------------------------------------ bit for bit


def test_steps_equal_the_grouped_bridge_bit_for_bit(tiny):
    """Three decode steps: logits, caches and every hooked pattern and score tensor."""
    ids = _ids(300)
    cache = new_cache(tiny)
    with sdpa_attention(tiny):
        prefill(tiny, ids[:-1], cache)
    runs = {}
    for fast in (False, True):
        fired: list[torch.Tensor] = []
        step_cache, token, outs = copy.deepcopy(cache), ids[-1:], []

        def keep(tensor, hook, _fired=fired):
            _fired.append(tensor.clone())

        hooks = [(every_layer("pattern"), keep), (every_layer("attn_scores"), keep)]
        with tiny.hooks(fwd_hooks=hooks), _steps(tiny, fast):
            for _ in range(3):
                out, step_cache = tiny(token[None], return_type="logits_and_cache",
                                       past_key_values=step_cache)
                outs.append(out)
                token = out[0, -1].argmax()[None]
        runs[fast] = (outs, fired, step_cache)
    (ref, ref_fired, ref_cache), (got, got_fired, got_cache) = runs[False], runs[True]
    assert len(got_fired) == len(ref_fired) == 3 * 2 * tiny.cfg.n_layers
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    assert all(torch.equal(a, b) for a, b in zip(got_fired, ref_fired))
    for a, b in zip(got_cache.layers, ref_cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("how", ["uniform", "zero"])
def test_decodes_with_masks_equal_the_grouped_bridge(tiny, no_direct, how):
    off, on = no_direct
    ids, heads = _ids(250, seed=1), [(0, 1), (1, 0), (1, 3)]
    kw = {"max_new_tokens": 6, "stop_at_newline": False,
          "record_rows": [(0, 0), (1, 2)], "mask": Mask(heads, mask_mode=how)}
    traces = {}
    for fast in (False, True):
        (on if fast else off)()
        traces[fast] = greedy_decode(tiny, ids, **kw)
    assert traces[True].tokens.tolist() == traces[False].tokens.tolist()
    assert torch.equal(traces[True].argmax, traces[False].argmax)
    for key, row in traces[False].rows.items():
        assert torch.equal(traces[True].rows[key], row)


def test_batches_and_conditions_equal_the_grouped_bridge(tiny_llama, no_direct):
    off, on = no_direct
    prompts = [_ids(180, seed=s) for s in range(3)]
    conditions = {"none": [], "masked": Mask([(1, 2)]).hooks(tiny_llama)}
    got = {}
    for fast in (False, True):
        (on if fast else off)()
        batch = greedy_decode_batch(tiny_llama, prompts, max_new_tokens=5, stop_at_newline=False)
        answers = decode_conditions(tiny_llama, prompts[0], conditions, max_new_tokens=5,
                                    stop_at_newline=False)
        got[fast] = ([(t.tokens.tolist(), t.argmax) for t in batch], answers)
    assert got[True][1] == got[False][1]
    for (tokens, argmax), (ref_tokens, ref_argmax) in zip(got[True][0], got[False][0]):
        assert tokens == ref_tokens and torch.equal(argmax, ref_argmax)


def test_smollm2_scores_equal_the_grouped_bridge(smollm2, no_direct):
    """The embedded model's record of one sample (tokens, argmaxes, retrieval scores), with
    and without the direct modules; every attention layer runs direct."""
    off, on = no_direct
    sample = build_sample(smollm2.tokenizer, NEEDLES[1], default_haystack(), 800, 0.5)
    layers = [i for i, _ in attention_components(smollm2)]
    with direct_modules(smollm2) as plan:
        assert plan.attention_layers == layers == list(range(smollm2.cfg.n_layers))
    records = {}
    for fast in (False, True):
        (on if fast else off)()
        records[fast] = score_sample(smollm2, sample, max_new_tokens=12)
    assert records[True]["answer"] == records[False]["answer"]
    assert records[True]["scores"] == records[False]["scores"]
    assert any(any(row) for row in records[True]["scores"])  # the needle was copied


def test_the_attention_function_is_eager_attention_for_a_module_no_block_swapped(tiny_llama):
    """Registered with transformers, the function may meet another model's module: it then
    computes what transformers' eager attention computes."""
    from transformers import AttentionInterface
    from transformers.models.llama.modeling_llama import eager_attention_forward

    with direct_modules(tiny_llama):
        pass  # registers the function
    module = copy.deepcopy(tiny_llama.blocks[0].attn.original_component)  # in no block
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, d = tiny_llama.cfg.n_heads, tiny_llama.cfg.n_key_value_heads, module.head_dim
    q = torch.randn(1, heads, 3, d, generator=g)
    k, v = (torch.randn(1, kv_heads, 5, d, generator=g) for _ in range(2))
    function = AttentionInterface()[ATTENTION_FUNCTION]
    out, weights = function(module, q, k, v, None, scaling=0.5)
    ref_out, ref_weights = eager_attention_forward(module, q, k, v, None, scaling=0.5)
    assert torch.equal(out, ref_out) and torch.equal(weights, ref_weights)


def test_hook_mlp_in_still_fires_when_switched_on(tiny_llama):
    """With ``use_hook_mlp_in`` on, the blocks' capture hooks matter: no block or norm is
    swapped, and ``hook_mlp_in`` fires with the bridge's tensor."""
    model, ids = tiny_llama, _ids(120, seed=3)
    cache = new_cache(model)
    with sdpa_attention(model):
        prefill(model, ids[:-1], cache)
    model.set_use_hook_mlp_in(True)
    try:
        seen: dict[bool, list[torch.Tensor]] = {False: [], True: []}
        for fast in (False, True):
            hook = (act_name("mlp_in", 1), lambda t, hook, _s=seen[fast]: _s.append(t.clone()))
            with model.hooks(fwd_hooks=[hook]), _steps(model, fast) as plan:
                model(ids[-1:][None], return_type="logits_and_cache",
                      past_key_values=copy.deepcopy(cache))
            if fast:
                assert not any(name.startswith("blocks.") and name.count(".") == 1
                               or name.endswith(("ln1", "ln2")) for name in plan.components)
        assert len(seen[True]) == len(seen[False]) == 1
        assert torch.equal(seen[True][0], seen[False][0])
    finally:
        model.set_use_hook_mlp_in(False)
