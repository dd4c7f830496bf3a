"""SDPA prefill (rhlens.run.sdpa): same decode steps as the bridge's eager prefill, bridge restored.

The eager prefill (``prefill_attention="eager"``) is the reference. Random-weight models attend
almost uniformly, so their attention argmaxes are fragile; on them the decode-step rows are
compared. On SmolLM2 the tokens, argmaxes, rows and scores are compared.
"""

from __future__ import annotations

import pytest
import torch

from rhlens.models.tiny import tiny_model
from rhlens.niah.haystack import NEEDLES, default_haystack
from rhlens.niah.prompts import build_sample
from rhlens.run.decode import greedy_decode, new_cache, pattern_hook_name, prefill
from rhlens.run.sdpa import attention_hooks_in_use, sdpa_attention
from rhlens.score.detect import score_sample
from rhlens.score.scoring import retrieval_scores

ATOL = 1e-5


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(100, 40000, (n,), generator=torch.Generator().manual_seed(seed))


def _all_heads(model) -> list[tuple[int, int]]:
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def _both(model, ids, **kw):
    kw = {"max_new_tokens": 6, "stop_at_newline": False, "record_rows": _all_heads(model), **kw}
    return (greedy_decode(model, ids, prefill_attention="eager", **kw),
            greedy_decode(model, ids, prefill_attention="sdpa", **kw))


def _assert_rows_close(ref, fast, atol=ATOL):
    assert fast.tokens.tolist() == ref.tokens.tolist()
    for key, row in ref.rows.items():
        torch.testing.assert_close(fast.rows[key], row, atol=atol, rtol=0)


def _bridge_state(model):
    """What sdpa_attention touches: each decoder layer's attention slot, the configs."""
    hf = model.original_model
    slots = [block.original_component._modules["self_attn"] for block in model.blocks]
    configs = {hf.config._attn_implementation}
    configs |= {block.attn.original_component.config._attn_implementation
                for block in model.blocks}
    return slots, configs


def _sdpa_calls(monkeypatch) -> list[int]:
    """Count calls of torch's SDPA (what Hugging Face's "sdpa" attention calls)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


# ------------------------------------------------------------------ exactness, tiny models


def test_decode_rows_match_eager_prefill_on_every_architecture(tiny):
    ref, fast = _both(tiny, _ids(300))
    _assert_rows_close(ref, fast)
    assert set(fast.timings) == {"prefill_s", "decode_s"}


@pytest.mark.parametrize("chunk_size", [64, 299])
def test_chunked_sdpa_prefill_matches(tiny_llama, chunk_size):
    """Later chunks attend to the cached keys of earlier ones through Hugging Face's mask."""
    ref, fast = _both(tiny_llama, _ids(300, seed=1), chunk_size=chunk_size)
    _assert_rows_close(ref, fast)


@pytest.mark.parametrize("arch, extra", [
    ("mistral", {"sliding_window": 64}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 0}),
])
def test_sliding_window_cache_is_shared(arch, extra):
    """Sliding-window layers: the SDPA prefill fills the same windowed cache layers."""
    model = tiny_model(arch, **extra)
    ref, fast = _both(model, _ids(200, seed=2), chunk_size=50)
    _assert_rows_close(ref, fast)
    assert int((fast.rows[(0, 0)][0] > 0).sum()) == 64  # the window, not the whole prompt


def test_first_decode_step_sees_the_right_position(tiny_llama):
    """After the SDPA prefill, the decode step's row is the last row of a full forward."""
    ids = _ids(120, seed=3)
    trace = greedy_decode(tiny_llama, ids, max_new_tokens=1, stop_at_newline=False,
                          record_rows=_all_heads(tiny_llama))
    _, act = tiny_llama.run_with_cache(ids[None], names_filter=lambda n: n.endswith("hook_pattern"))
    for (layer, head), row in trace.rows.items():
        full = act[pattern_hook_name(layer)][0, head, -1]
        torch.testing.assert_close(row[0, :120], full, atol=ATOL, rtol=0)


# ------------------------------------------------------------------ which path runs


def test_default_prefill_is_sdpa_and_hooks_fire_only_at_decode(tiny_llama, monkeypatch):
    calls = _sdpa_calls(monkeypatch)
    queries = []

    def spy(pattern, hook):
        queries.append(pattern.shape[-2])
        return pattern

    trace = greedy_decode(tiny_llama, _ids(80), max_new_tokens=3, stop_at_newline=False,
                          decode_hooks=[(pattern_hook_name(0), spy)])
    assert len(calls) == tiny_llama.cfg.n_layers  # one one-shot prefill forward, every layer
    assert queries == [1] * len(trace.tokens)  # the decode steps only, one query row each


def test_prefill_hooks_force_the_hooked_path(tiny_llama, monkeypatch):
    calls = _sdpa_calls(monkeypatch)
    seen = []

    def spy(pattern, hook):
        seen.append(pattern.shape[-2])
        return pattern

    greedy_decode(tiny_llama, _ids(80), max_new_tokens=2, stop_at_newline=False, chunk_size=40,
                  prefill_hooks=[(pattern_hook_name(1), spy)])
    assert seen == [40, 39]  # the prompt but its last token, in two chunks
    assert calls == []
    greedy_decode(tiny_llama, _ids(80), max_new_tokens=2, prefill_attention="eager")
    assert calls == []


def test_bad_prefill_attention_says_what_is_accepted(tiny_llama):
    with pytest.raises(ValueError, match="'sdpa' or 'eager'"):
        greedy_decode(tiny_llama, _ids(10), prefill_attention="flash")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the context manager


def test_logits_inside_match_the_bridge(tiny):
    ids = _ids(40)[None]
    fired = []
    with tiny.hooks(fwd_hooks=[(lambda n: n.endswith("hook_pattern"),
                                lambda t, hook: fired.append(hook.name))]):
        eager = tiny(ids)
    assert len(fired) == tiny.cfg.n_layers
    with sdpa_attention(tiny):
        fast = tiny(ids)
    torch.testing.assert_close(fast, eager, atol=ATOL, rtol=0)


def test_bridge_is_restored_after_exit_and_after_an_exception(tiny_llama):
    ids = _ids(40)[None]
    before = _bridge_state(tiny_llama)
    assert all(slot is b.attn for slot, b in zip(before[0], tiny_llama.blocks))
    reference = tiny_llama(ids)
    with sdpa_attention(tiny_llama):
        inside = _bridge_state(tiny_llama)
        assert all(slot is b.attn.original_component
                   for slot, b in zip(inside[0], tiny_llama.blocks))
        assert inside[1] == {"sdpa"}
    with pytest.raises(KeyError):
        with sdpa_attention(tiny_llama):
            raise KeyError("boom")
    with sdpa_attention(tiny_llama):
        with sdpa_attention(tiny_llama):  # nesting is harmless
            pass
        assert _bridge_state(tiny_llama)[1] == {"sdpa"}
    after = _bridge_state(tiny_llama)
    assert all(a is b for a, b in zip(after[0], before[0])) and after[1] == before[1]
    fired = []
    with tiny_llama.hooks(fwd_hooks=[(lambda n: n.endswith("hook_pattern"),
                                      lambda t, hook: fired.append(hook.name))]):
        again = tiny_llama(ids)
    assert fired == [pattern_hook_name(l) for l in range(tiny_llama.cfg.n_layers)]
    assert torch.equal(again, reference)


def test_attached_attention_hooks_are_refused_not_skipped(tiny_llama):
    before = _bridge_state(tiny_llama)
    with tiny_llama.hooks(fwd_hooks=[(pattern_hook_name(1), lambda t, hook: t)]):
        assert attention_hooks_in_use(tiny_llama) == [pattern_hook_name(1)]
        with pytest.raises(ValueError, match="prefill_hooks"):
            with sdpa_attention(tiny_llama):
                pass
        with pytest.raises(ValueError, match="prefill_hooks"):
            greedy_decode(tiny_llama, _ids(20), max_new_tokens=1)
    after = _bridge_state(tiny_llama)
    assert all(a is b for a, b in zip(after[0], before[0])) and after[1] == before[1]
    assert attention_hooks_in_use(tiny_llama) == []


def test_prefill_inside_fills_the_cache_the_bridge_reads(tiny_llama):
    ids = _ids(90, seed=4)
    eager_cache, fast_cache = new_cache(tiny_llama), new_cache(tiny_llama)
    eager = prefill(tiny_llama, ids, eager_cache, chunk_size=32)
    with sdpa_attention(tiny_llama):
        fast = prefill(tiny_llama, ids, fast_cache, chunk_size=90)
    torch.testing.assert_close(fast, eager, atol=ATOL, rtol=0)
    assert type(fast_cache) is type(eager_cache)
    assert fast_cache.get_seq_length() == eager_cache.get_seq_length() == 90
    for a, b in zip(fast_cache.layers, eager_cache.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(a.values, b.values, atol=ATOL, rtol=0)


# ------------------------------------------------------------------ the embedded model


@pytest.mark.slow
def test_smollm2_tokens_rows_and_scores_equal_eager(smollm2):
    sample = build_sample(smollm2.tokenizer, NEEDLES[0], default_haystack(), 800, 0.5)
    kw = {"max_new_tokens": 12, "record_rows": _all_heads(smollm2)}
    ref = greedy_decode(smollm2, sample.input_ids, prefill_attention="eager", **kw)
    fast = greedy_decode(smollm2, sample.input_ids, **kw)
    assert len(ref.tokens) > 3 and fast.text == ref.text
    _assert_rows_close(ref, fast, atol=1e-5)
    assert torch.equal(fast.argmax, ref.argmax)
    score = lambda t: retrieval_scores(t.argmax, t.tokens, sample.input_ids,  # noqa: E731
                                       sample.answer_span, "paper")
    assert torch.equal(score(fast), score(ref))
    record = score_sample(smollm2, sample, max_new_tokens=12)  # the `rhlens score` path
    assert record["answer"] == ref.text
    assert torch.equal(torch.tensor(record["scores"], dtype=torch.float64), score(ref))
