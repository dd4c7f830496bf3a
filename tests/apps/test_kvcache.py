"""Retrieval-head-guided KV-cache compression: GQA bookkeeping, memory, and the mask."""

from __future__ import annotations

import pytest
import torch

from rhlens.apps.kvcache import (
    compressed_cache_hooks,
    curve,
    kv_cache_bytes,
    kv_compression_sweep,
    kv_head_scores,
    kv_heads_of,
    policy_grid,
    query_heads_of,
    random_kv_heads,
    top_kv_heads,
)
from rhlens.niah.grid import Grid
from rhlens.niah.haystack import NEEDLES, default_haystack
from rhlens.niah.prompts import build_sample
from rhlens.run.decode import greedy_decode


def test_gqa_groups():
    assert kv_heads_of([(0, 0), (0, 2), (1, 8)], n_heads=9, n_kv_heads=3) == [(0, 0), (1, 2)]
    assert query_heads_of([(1, 2)], 9, 3) == [(1, 6), (1, 7), (1, 8)]
    assert kv_heads_of([(0, 3)], n_heads=4, n_kv_heads=4) == [(0, 3)]  # no GQA
    with pytest.raises(ValueError, match="multiple"):
        kv_heads_of([(0, 0)], n_heads=9, n_kv_heads=2)
    scores = torch.zeros(2, 6)
    scores[1, 4] = 0.7
    scores[0, 1] = 0.3
    kv = kv_head_scores(scores, 3)
    assert kv.shape == (2, 3) and kv[1, 2] == pytest.approx(0.7) and kv[0, 0] == pytest.approx(0.3)
    assert top_kv_heads(scores, 3, 2) == [(0, 0), (1, 2)]
    draw = random_kv_heads(30, 3, 10, seed=0)
    assert draw == random_kv_heads(30, 3, 10, seed=0) and len(set(draw)) == 10


def test_memory_accounting():
    base = kv_cache_bytes(30, 3, 64, 1000, [], sink=4, window=60)
    assert base["full"] == 30 * 3 * 1000 * 2 * 64 * 2
    assert base["kept"] == 90 * 64 * 256 and base["share"] == pytest.approx(0.064)
    more = kv_cache_bytes(30, 3, 64, 1000, [(0, 0), (5, 1)], sink=4, window=60)
    assert more["kept"] == base["kept"] + 2 * (1000 - 64) * 256
    assert kv_cache_bytes(30, 3, 64, 1000, compress_all=False)["share"] == 1.0
    assert kv_cache_bytes(30, 3, 64, 50, [], sink=4, window=60)["share"] == 1.0  # short context


def _record(model, ids, hooks, steps=4):
    rows: dict[int, list[torch.Tensor]] = {}

    def rec(pattern, hook):
        rows.setdefault(int(hook.name.split(".")[1]), []).append(pattern[0, :, -1].clone())

    greedy_decode(model, ids, steps, decode_hooks=[*hooks, (lambda n: n.endswith("hook_pattern"), rec)],
                  stop_at_newline=False)
    return rows


def test_compressed_heads_see_only_sink_and_window(tiny):
    """Compressed heads give zero weight outside sink + window; full groups still look back."""
    n_layers, n_heads, n_kv = tiny.cfg.n_layers, tiny.cfg.n_heads, tiny.cfg.n_key_value_heads
    g = n_heads // n_kv
    sink, window = 2, 5
    full = [(0, 0)]  # layer 0, KV head 0 -> query heads 0..g-1 keep the whole cache
    hooks = compressed_cache_hooks(full, n_layers, n_heads, n_kv, sink=sink, window=window)
    rows = _record(tiny, torch.arange(400, 440), hooks)
    for layer, steps in rows.items():
        for row in steps:
            n = row.shape[-1]
            middle = row[:, sink : n - window].sum(-1)  # [n_heads] weight on dropped keys
            for h in range(n_heads):
                if layer == 0 and h < g:
                    assert middle[h] > 1e-3, (layer, h)  # retrieval group: still looks back
                else:
                    assert middle[h] == 0.0, (layer, h)
            assert torch.allclose(row.sum(-1), torch.ones(n_heads), atol=1e-5)


def test_policy_grid_and_sweep(tiny_llama):
    scores = torch.zeros(2, 4)
    scores[1, 3] = 0.9
    tok = tiny_llama.tokenizer
    sample = build_sample(tok, NEEDLES[0], default_haystack(), 120, 0.5)
    pols = policy_grid(scores, 2, 120, budgets=(0, 1), sink=2, window=8, seeds=(0,), d_head=16)
    names = [p.name for p in pols]
    assert names == ["full", "retrieval-0", "retrieval-1", "random-1-s0", "window-1"]
    by = {p.name: p for p in pols}
    assert by["retrieval-1"].full_kv_heads == [(1, 1)]
    assert by["window-1"].share == pytest.approx(by["retrieval-1"].share, abs=0.02)
    assert by["retrieval-0"].share < by["retrieval-1"].share < 1.0
    grid = Grid([120], [0.5], NEEDLES[:1], default_haystack(), max_new_tokens=3)
    assert grid.samples(tok)[0].input_ids.tolist() == sample.input_ids.tolist()
    frame = kv_compression_sweep(tiny_llama, grid, pols, progress=False)
    assert len(frame) == len(pols) and frame["score"].between(0, 100).all()
    table = curve(frame)
    assert set(table["family"]) == {"full", "retrieval", "random", "window"}


def test_n_kv_heads_counts_one_per_query_head_without_grouping():
    from rhlens.apps.kvcache import n_kv_heads
    from rhlens.models.loading import load_model

    mha = load_model("tiny-llama-2-7b-80k")            # Llama-2-7B: multi-head attention
    gqa = load_model("tiny-mistral-7b-v0.2")           # Mistral: 4 query heads per KV head
    assert mha.cfg.n_key_value_heads is None and n_kv_heads(mha) == mha.cfg.n_heads
    assert n_kv_heads(gqa) == gqa.cfg.n_heads // 4
