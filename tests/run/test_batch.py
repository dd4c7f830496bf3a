"""Batched greedy decoding: each prompt's trace is the one it gets alone, a stopped row leaves
the batch, and bad input is refused with a one-line error."""

from __future__ import annotations

import pytest
import torch

from rhlens.intervene.mask import Mask
from rhlens.niah.haystack import NEEDLES, default_haystack
from rhlens.niah.prompts import build_sample
from rhlens.run.batch import greedy_decode_batch
from rhlens.run.decode import greedy_decode
from rhlens.run.hooks import act_name


def _prompts(n: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(100, 40000, (n,), generator=g) for _ in range(count)]


def _assert_alone(model, prompts, traces, **kw):
    """Each batched trace equals greedy_decode of its prompt alone."""
    assert len(traces) == len(prompts)
    for ids, trace in zip(prompts, traces):
        ref = greedy_decode(model, ids, **kw)
        assert trace.tokens.tolist() == ref.tokens.tolist()
        assert torch.equal(trace.argmax, ref.argmax)
        assert trace.text == ref.text
        assert torch.equal(trace.prompt_ids, ids)


def test_every_architecture_matches_one_at_a_time(tiny):
    prompts = _prompts(120, 3)
    traces = greedy_decode_batch(tiny, prompts, max_new_tokens=6, stop_at_newline=False)
    assert all(len(t.tokens) == 6 for t in traces)
    assert len({tuple(t.tokens.tolist()) for t in traces}) > 1  # the rows are not one row
    _assert_alone(tiny, prompts, traces, max_new_tokens=6, stop_at_newline=False)


@pytest.mark.parametrize("mode, prefill", [("zero", False), ("mean", False), ("uniform", True)])
def test_masks_match_one_at_a_time(tiny_llama, mode, prefill):
    prompts = _prompts(90, 2, seed=3)
    means = torch.randn(tiny_llama.cfg.n_layers, tiny_llama.cfg.n_heads, tiny_llama.cfg.d_head)
    mask = Mask([(0, 1), (1, 2)], mask_mode=mode, means=means if mode == "mean" else None,
                prefill=prefill)
    kw = {"max_new_tokens": 5, "stop_at_newline": False, "mask": mask}
    traces = greedy_decode_batch(tiny_llama, prompts, **kw)
    _assert_alone(tiny_llama, prompts, traces, **kw)
    plain = greedy_decode_batch(tiny_llama, prompts, max_new_tokens=5, stop_at_newline=False)
    assert any(not torch.equal(a.argmax, b.argmax) for a, b in zip(traces, plain))  # it acts


def test_a_stopped_row_leaves_the_batch(tiny_llama):
    """Rows that stop at different steps: each trace is still its own, and the decode steps
    after a stop run on fewer rows."""
    prompts = _prompts(80, 3, seed=5)
    alone = [greedy_decode(tiny_llama, p, max_new_tokens=8, stop_at_newline=False)
             for p in prompts]
    others = set(alone[1].tokens.tolist()) | set(alone[2].tokens.tolist())
    stop = next(int(t) for t in alone[0].tokens[1:] if int(t) not in others)
    tok = tiny_llama.tokenizer
    eos = tok.eos_token_id
    tok.eos_token_id = stop  # row 0 stops early (a property of the tokenizer: set it back)
    try:
        sizes: list[int] = []
        hook = (act_name("resid_pre", 0), lambda x, hook: sizes.append(x.shape[0]))
        traces = greedy_decode_batch(tiny_llama, prompts, max_new_tokens=8,
                                     decode_hooks=[hook], stop_at_newline=False)
        assert 0 < len(traces[0].tokens) < 8 and len(traces[1].tokens) == 8
        assert sizes[0] == 3 and sizes[-1] == 2 and len(sizes) == 8
        _assert_alone(tiny_llama, prompts, traces, max_new_tokens=8, stop_at_newline=False)
    finally:
        tok.eos_token_id = eos
    assert tok.eos_token_id == eos


@pytest.mark.parametrize("prompts, kw, says", [
    ([], {}, "prompts is empty"),
    ([torch.arange(100, 130), torch.arange(100, 131)], {}, "of one length"),
    ([torch.arange(100, 130)], {"decode_attention": "fast"}, "decode_attention must be"),
    ([torch.arange(100, 130)], {"max_new_tokens": 0}, "max_new_tokens must be"),
])
def test_bad_input_is_refused(tiny_llama, prompts, kw, says):
    with pytest.raises(ValueError, match=says) as err:
        greedy_decode_batch(tiny_llama, prompts, **kw)
    assert "\n" not in str(err.value)


def test_smollm2_matches_one_at_a_time(smollm2):
    """The embedded model (grouped-query attention, real weights): two needles' prompts."""
    prompts = [build_sample(smollm2.tokenizer, needle, default_haystack(), 300, 0.5).input_ids
               for needle in NEEDLES[:2]]
    traces = greedy_decode_batch(smollm2, prompts, max_new_tokens=8)
    assert traces[0].text != traces[1].text
    _assert_alone(smollm2, prompts, traces, max_new_tokens=8)


# ---------------------------------------------------------------- batch_size="auto"

def _gpu_model(model, monkeypatch, free_bytes: float):
    """``model`` as ``auto_batch_size`` sees a model on a GPU with ``free_bytes`` free."""
    import rhlens.run.batch as batch

    monkeypatch.setattr(batch, "model_device", lambda m: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_bytes), 0))
    return model


def test_auto_on_a_cpu_batches_four_up_to_the_token_budget(tiny_llama):
    from rhlens.run.batch import CPU_BATCH, CPU_BATCH_TOKENS, auto_batch_size

    assert auto_batch_size(tiny_llama, 1_024) == CPU_BATCH == 4
    assert auto_batch_size(tiny_llama, CPU_BATCH_TOKENS // 3) == 3
    assert auto_batch_size(tiny_llama, 80_000) == 1  # a long prompt is decoded alone


def test_auto_on_a_gpu_fills_half_the_free_memory(tiny_llama, monkeypatch):
    from rhlens.run.batch import GPU_BATCH, auto_batch_size, prompt_bytes

    each = prompt_bytes(tiny_llama.cfg, 1_000)
    # 2 KV heads x 16 dims x 2 (K, V) x 2 layers x 4 bytes per token, and the MLP's transient
    assert each == 2 * 2 * 2 * 16 * 1_000 * 4 + 3 * 1_000 * 128 * 4
    _gpu_model(tiny_llama, monkeypatch, free_bytes=10.5 * each)
    assert auto_batch_size(tiny_llama, 1_000) == 5
    _gpu_model(tiny_llama, monkeypatch, free_bytes=1e12)
    assert auto_batch_size(tiny_llama, 1_000) == GPU_BATCH
    _gpu_model(tiny_llama, monkeypatch, free_bytes=each)  # not even one fits: one at a time
    assert auto_batch_size(tiny_llama, 1_000) == 1
    # a hooked prefill holds a chunk's scores and pattern in float32 besides
    assert prompt_bytes(tiny_llama.cfg, 1_000, eager_prefill=True) > each


def test_auto_is_chosen_once_per_length(tiny_llama, monkeypatch, hay):
    """A sweep asks for the size of a length once: the free memory it reads later (with the
    first batch's cache still cached by the allocator) does not change the batches."""
    from rhlens.intervene.niah import NiahConfig, NiahSweep
    from rhlens.niah.grid import Grid

    asked: list[int] = []

    def spy(model, tokens, **kw):
        asked.append(tokens)
        return 2

    monkeypatch.setattr("rhlens.run.sweep.auto_batch_size", spy)
    grid = Grid([160, 200], [0.1, 0.5, 0.9], NEEDLES[:1], hay, max_new_tokens=3)
    sweep = NiahSweep(tiny_llama, NiahConfig(grid), progress=False)
    assert len(sweep.run()) == 6
    assert asked == [163, 203]
