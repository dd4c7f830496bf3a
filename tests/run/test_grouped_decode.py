"""Grouped decode attention (rhlens.run.gqa) against the bridge's own attention (repeat_kv).

The reference is ``decode_attention="eager"``: the TransformerBridge's attention, which copies
each KV head once per query head. The grouped path must fire the same hooks with the same
tensors, give the same rows (up to float rounding: each test prints the largest difference;
at most 1.9e-9 on the tiny models and 1.5e-6 on SmolLM2), and the same tokens, argmaxes and
retrieval scores, with and without masks and patches.
"""

from __future__ import annotations

import pytest
import torch
import transformers.models.llama.modeling_llama as llama

from rhlens.apps.kvcache import compressed_cache_hooks
from rhlens.intervene.mask import Mask
from rhlens.models.tiny import tiny_model
from rhlens.niah.haystack import NEEDLES, default_haystack
from rhlens.niah.prompts import build_sample
from rhlens.run.decode import decode_conditions, greedy_decode, new_cache, prefill
from rhlens.run.gqa import grouped_decode_attention, grouped_layers
from rhlens.run.sdpa import sdpa_attention
from rhlens.score.detect import score_sample
from rhlens.score.scoring import retrieval_scores

#: Largest difference allowed between a grouped and a bridge attention row (float32).
ATOL = 1e-6


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(100, 40000, (n,), generator=torch.Generator().manual_seed(seed))


def _all_heads(model) -> list[tuple[int, int]]:
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def _both(model, ids, **kw):
    kw = {"max_new_tokens": 6, "stop_at_newline": False, "record_rows": _all_heads(model), **kw}
    return (greedy_decode(model, ids, decode_attention="eager", **kw),
            greedy_decode(model, ids, decode_attention="grouped", **kw))


def _assert_same(ref, fast, atol=ATOL) -> float:
    """Same tokens and argmaxes, rows within ``atol``; returns the largest row difference."""
    assert fast.tokens.tolist() == ref.tokens.tolist()
    assert torch.equal(fast.argmax, ref.argmax)
    worst = 0.0
    for key, row in ref.rows.items():
        torch.testing.assert_close(fast.rows[key], row, atol=atol, rtol=0)
        worst = max(worst, float((fast.rows[key] - row).abs().max()))
    print(f"largest row difference: {worst:.2e}")
    return worst


@pytest.fixture
def repeat_kv_calls(monkeypatch):
    """Count the bridge's repeat_kv calls (it imports the function at every forward)."""
    calls = []
    real = llama.repeat_kv

    def counting(*args, **kwargs):
        calls.append(args[0].shape[-2])
        return real(*args, **kwargs)

    monkeypatch.setattr(llama, "repeat_kv", counting)
    return calls


# ------------------------------------------------------------------ rows, tokens, argmaxes


def test_rows_tokens_and_argmaxes_match_the_bridge_on_every_architecture(tiny, repeat_kv_calls):
    assert grouped_layers(tiny) == list(range(tiny.cfg.n_layers))
    ref, fast = _both(tiny, _ids(300))
    assert repeat_kv_calls  # the reference copies the KV heads...
    repeat_kv_calls.clear()
    greedy_decode(tiny, _ids(300), max_new_tokens=6, stop_at_newline=False)
    assert repeat_kv_calls == []  # ...the grouped decode steps do not (SDPA prefill, no copy)
    _assert_same(ref, fast)


@pytest.mark.parametrize("arch, extra", [
    ("mistral", {"sliding_window": 64}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 0}),
])
def test_sliding_window_is_kept(arch, extra):
    model = tiny_model(arch, **extra)
    ref, fast = _both(model, _ids(200, seed=2))
    _assert_same(ref, fast)
    assert int((fast.rows[(0, 0)][0] > 0).sum()) == 64  # the window, not the whole prompt


def test_batched_conditions_match(tiny_llama):
    """decode_conditions: a batch of rows, each with its own in-place score edits."""
    policies = {"full": [],
                "window": compressed_cache_hooks([], 2, 4, 2, sink=2, window=8),
                "one-full": compressed_cache_hooks([(1, 0)], 2, 4, 2, sink=2, window=8)}
    ids = _ids(150, seed=6)
    ref = decode_conditions(tiny_llama, ids, policies, 8, False, decode_attention="eager")
    fast = decode_conditions(tiny_llama, ids, policies, 8, False)
    assert fast == ref
    assert len(set(ref.values())) > 1  # the policies change the answers: the edits act


# ------------------------------------------------------------------ hooks


def _every_hook(model, ids, decode_attention: str):
    """``(name, tensor)`` of every hook point fired by one decode step after ``ids``."""
    cache = new_cache(model)
    with sdpa_attention(model):
        prefill(model, ids[:-1], cache, ids.numel())
    fired = []

    def record(t, hook):
        fired.append((hook.name, t.detach().clone()))

    with model.hooks(fwd_hooks=[(lambda name: True, record)]), \
            grouped_decode_attention(model, enabled=decode_attention == "grouped") as layers:
        logits, _ = model(ids[-1:][None], return_type="logits_and_cache", past_key_values=cache)
    return fired, logits, layers


@pytest.mark.filterwarnings("ignore:hooks. skipped")  # the gated-off ones, on both paths
def test_every_hook_fires_with_the_same_tensors(tiny):
    ids = _ids(120, seed=3)
    ref, ref_logits, none = _every_hook(tiny, ids, "eager")
    fast, fast_logits, layers = _every_hook(tiny, ids, "grouped")
    assert none == [] and layers == list(range(tiny.cfg.n_layers))
    assert [n for n, _ in fast] == [n for n, _ in ref]  # same hooks, same order
    # hook_q/k/v are q/k/v.hook_out, hook_z is o.hook_in, hook_attn_out is attn.hook_out
    attn = [n.removeprefix("blocks.1.attn.") for n, _ in ref if n.startswith("blocks.1.attn.")]
    assert attn == ["hook_in", "q.hook_in", "q.hook_out", "k.hook_in", "k.hook_out", "v.hook_in",
                    "v.hook_out", "hook_cos", "hook_sin", "hook_rot_q", "hook_rot_k",
                    "hook_attn_scores", "hook_pattern", "o.hook_in", "o.hook_out", "hook_out"]
    for (name, a), (_, b) in zip(fast, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5, msg=name)
    torch.testing.assert_close(fast_logits, ref_logits, atol=ATOL, rtol=1e-5)


def test_multi_token_forwards_run_the_bridge(tiny_llama, repeat_kv_calls):
    """Inside the block a prefill chunk still goes through the bridge (and its repeat_kv)."""
    ids = _ids(40)[None]
    reference = tiny_llama(ids)
    repeat_kv_calls.clear()
    with grouped_decode_attention(tiny_llama):
        inside = tiny_llama(ids)
    assert repeat_kv_calls == [40] * 2 * tiny_llama.cfg.n_layers  # keys and values, each layer
    assert torch.equal(inside, reference)


def test_edits_of_q_k_v_reach_the_cache_the_same_way(tiny_llama):
    """Hooks that edit rotated keys, values and queries (what patching a key would do)."""

    def scale(t, hook):
        return t * 1.5

    hooks = [("blocks.0.attn.hook_rot_k", scale), ("blocks.1.attn.hook_v", scale),
             ("blocks.1.attn.hook_rot_q", scale)]
    ref, fast = _both(tiny_llama, _ids(200, seed=4), decode_hooks=hooks)
    plain = greedy_decode(tiny_llama, _ids(200, seed=4), max_new_tokens=6, stop_at_newline=False,
                          record_rows=[(1, 0)])
    assert not torch.allclose(plain.rows[(1, 0)], fast.rows[(1, 0)])  # the edits act
    _assert_same(ref, fast)


# ------------------------------------------------------------------ masks and patches


@pytest.mark.parametrize("mode", ["uniform", "zero", "mean"])
def test_masked_decoding_matches(tiny_llama, mode):
    ids = _ids(200, seed=7)
    mask = Mask([(0, 1), (1, 2), (1, 3)], mask_mode=mode)
    if mode == "mean":
        mask = mask.with_means(tiny_llama, [_ids(60, seed=8), _ids(60, seed=9)])
    ref, fast = _both(tiny_llama, ids, mask=mask)
    _assert_same(ref, fast)
    if mode == "uniform":  # the masked head attends uniformly to what it sees
        torch.testing.assert_close(fast.rows[(1, 2)][0, :200], torch.full((200,), 1 / 200))


def _decode_z(model, ids, steps: int, decode_attention: str) -> dict[int, list[torch.Tensor]]:
    """hook_z of every layer at each decode step of a greedy run."""
    z: dict[int, list[torch.Tensor]] = {}

    def keep(t, hook):
        z.setdefault(int(hook.name.split(".")[1]), []).append(t.clone())

    greedy_decode(model, ids, max_new_tokens=steps, stop_at_newline=False,
                  decode_hooks=[(lambda n: n.endswith("hook_z"), keep)],
                  decode_attention=decode_attention)
    return z


def _patched(model, source, cf, heads, decode_attention: str, steps: int = 6):
    """Greedy decoding of ``cf`` with ``heads``' outputs patched from ``source`` (a clean
    run's :func:`_decode_z`), step by step, as rhlens.intervene.patch patches decode positions."""
    step = {}

    def put(z, hook):
        layer = int(hook.name.split(".")[1])
        t = step[layer] = step.get(layer, -1) + 1
        if t >= len(source[layer]):  # the clean run stopped (EOS) before this step
            return z
        z = z.clone()
        for l, h in heads:
            if l == layer:
                z[:, :, h] = source[layer][t][:, :, h]
        return z

    hooks = [(f"blocks.{l}.attn.hook_z", put) for l in sorted({l for l, _ in heads})]
    return greedy_decode(model, cf, max_new_tokens=steps, stop_at_newline=False,
                         decode_hooks=hooks, record_rows=_all_heads(model),
                         decode_attention=decode_attention)


def test_patched_decoding_matches(tiny_llama):
    clean, cf = _ids(150, seed=10), _ids(150, seed=10).clone()
    cf[70:75] = _ids(5, seed=11)
    heads = [(0, 0), (1, 3)]
    ref = _patched(tiny_llama, _decode_z(tiny_llama, clean, 6, "eager"), cf, heads, "eager")
    fast = _patched(tiny_llama, _decode_z(tiny_llama, clean, 6, "grouped"), cf, heads, "grouped")
    _assert_same(ref, fast)


# ------------------------------------------------------------------ when it does not apply


def test_multi_head_attention_is_left_to_the_bridge(repeat_kv_calls):
    mha = tiny_model("llama", n_kv_heads=4)
    assert grouped_layers(mha) == []
    with grouped_decode_attention(mha) as layers:
        assert layers == []
        assert all("forward" not in b.attn.__dict__ for b in mha.blocks)
    ref, fast = _both(mha, _ids(100))
    assert torch.equal(fast.argmax, ref.argmax)
    assert all(torch.equal(fast.rows[k], ref.rows[k]) for k in ref.rows)  # one code path
    assert repeat_kv_calls == []  # group size 1: the bridge never copies


def test_per_head_results_are_left_to_the_bridge(repeat_kv_calls):
    """With use_attn_result the bridge fires hook_result; the grouped path steps aside."""
    model = tiny_model("llama")
    model.set_use_attn_result(True)
    seen = []
    hooks = [("blocks.1.attn.hook_result", lambda t, hook: seen.append(t.shape) or t)]
    ref, fast = _both(model, _ids(100), decode_hooks=hooks)
    assert len(seen) == len(ref.tokens) + len(fast.tokens)  # fired at every step of both
    assert len(repeat_kv_calls) == 2 * model.cfg.n_layers * len(seen)  # keys, values: the bridge
    assert torch.equal(fast.argmax, ref.argmax)
    assert all(torch.equal(fast.rows[k], ref.rows[k]) for k in ref.rows)


def test_components_are_restored_after_exit_nesting_and_an_exception(tiny_llama):
    forward = type(tiny_llama.blocks[0].attn).forward
    with pytest.raises(KeyError):
        with grouped_decode_attention(tiny_llama) as outer:
            assert all("forward" in b.attn.__dict__ for b in tiny_llama.blocks)
            with grouped_decode_attention(tiny_llama) as inner:
                assert inner == outer == [0, 1]
            assert all("forward" in b.attn.__dict__ for b in tiny_llama.blocks)  # outer's
            raise KeyError("boom")
    for block in tiny_llama.blocks:
        assert "forward" not in block.attn.__dict__
        assert block.attn.forward.__func__ is forward


def test_bad_decode_attention_says_what_is_accepted(tiny_llama):
    with pytest.raises(ValueError, match="'grouped' or 'eager'"):
        greedy_decode(tiny_llama, _ids(10), decode_attention="sdpa")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'grouped' or 'eager'"):
        decode_conditions(tiny_llama, _ids(10), {"none": []}, decode_attention="x")


# ------------------------------------------------------------------ the embedded model


@pytest.mark.slow
def test_smollm2_tokens_rows_scores_masks_and_patches_equal_the_bridge(smollm2):
    """SmolLM2 (9 query heads on 3 KV heads): the `rhlens score` path, the three masks and a
    patched decode give what the bridge's own attention gives."""
    sample = build_sample(smollm2.tokenizer, NEEDLES[1], default_haystack(), 800, 0.5)
    ref, fast = _both(smollm2, sample.input_ids, max_new_tokens=12, stop_at_newline=True)
    assert len(ref.tokens) > 3 and fast.text == ref.text
    _assert_same(ref, fast, atol=1e-5)
    score = lambda t: retrieval_scores(t.argmax, t.tokens, sample.input_ids,  # noqa: E731
                                       sample.span("answer"), "paper")
    assert torch.equal(score(fast), score(ref)) and score(ref).max() > 0
    record = score_sample(smollm2, sample, max_new_tokens=12)  # the default path
    assert record["answer"] == ref.text
    assert torch.equal(torch.tensor(record["scores"], dtype=torch.float64), score(ref))
    top = torch.topk(score(ref).flatten(), 6).indices
    heads = [(int(i) // smollm2.cfg.n_heads, int(i) % smollm2.cfg.n_heads) for i in top]
    means = Mask(heads).with_means(smollm2, [sample.input_ids[:200]]).means
    kw = {"max_new_tokens": 6, "stop_at_newline": False, "record_rows": _all_heads(smollm2)}
    for mode in ("uniform", "zero", "mean"):
        mask = Mask(heads, mask_mode=mode, means=means)
        masked_ref = greedy_decode(smollm2, sample.input_ids, decode_attention="eager",
                                   mask=mask, **kw)
        masked = greedy_decode(smollm2, sample.input_ids, mask=mask, **kw)
        _assert_same(masked_ref, masked, atol=1e-5)
    cf = sample.input_ids.clone()
    start, end = sample.needle_span
    cf[start:end] = sample.input_ids[:end - start]  # another passage where the needle was
    source = _decode_z(smollm2, sample.input_ids, 6, "eager")
    patched_ref = _patched(smollm2, source, cf, heads, "eager")
    patched = _patched(smollm2, source, cf, heads, "grouped")
    _assert_same(patched_ref, patched, atol=1e-5)
