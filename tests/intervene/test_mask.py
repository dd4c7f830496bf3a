"""Head masks reach exactly the chosen query heads, on every architecture."""

from __future__ import annotations

import pytest
import torch

from rhlens.intervene.mask import Mask, head_means, k_grid
from rhlens.run.decode import greedy_decode
from rhlens.score.heads import check_heads, parse_head, random_heads, top_heads

IDS = torch.arange(100, 112)


def _z_and_patterns(model, hooks=()):
    names = lambda n: n.endswith("attn.hook_z") or n.endswith("attn.hook_pattern")  # noqa: E731
    with model.hooks(fwd_hooks=list(hooks)):
        logits, cache = model.run_with_cache(IDS[None], names_filter=names)
    z = torch.stack([cache[f"blocks.{l}.attn.hook_z"][0] for l in range(model.cfg.n_layers)])
    pat = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(model.cfg.n_layers)])
    return logits, z.reshape(*z.shape[:2], model.cfg.n_heads, -1), pat  # z: [L, pos, H, d]


def _changed_heads(z0, z1, layer):
    """Query heads of ``layer`` whose output differs anywhere."""
    diff = (z0[layer] - z1[layer]).abs().amax(dim=(0, 2))  # [H]
    return [int(h) for h in torch.nonzero(diff > 1e-6).flatten()]


@pytest.mark.parametrize("mode", ["uniform", "zero", "mean"])
def test_mask_reaches_exactly_the_chosen_heads(tiny, mode):
    """Masking (layer, head) changes that head's output and no other head of the layer,
    nothing in earlier layers, and under GQA not its key/value-group sibling."""
    n_layers, n_heads = tiny.cfg.n_layers, tiny.cfg.n_heads
    means = head_means(tiny, [IDS + 7]) if mode == "mean" else None
    _, z0, _ = _z_and_patterns(tiny)
    for layer in range(n_layers):
        for head in (0, n_heads - 1):
            mask = Mask([(layer, head)], mode, means=means)
            _, z1, pat1 = _z_and_patterns(tiny, mask.hooks(tiny))
            assert _changed_heads(z0, z1, layer) == [head], (mode, layer, head)
            for earlier in range(layer):
                assert _changed_heads(z0, z1, earlier) == []
            if mode == "zero":
                assert torch.all(z1[layer, :, head] == 0)
            if mode == "mean":
                assert torch.allclose(z1[layer, :, head], means[layer, head].expand_as(z1[layer, :, head]))


def test_uniform_keeps_the_causal_mask(tiny):
    """In a full (prefill) forward, the masked head attends uniformly over keys j <= i only."""
    n = IDS.numel()
    _, _, pat = _z_and_patterns(tiny, Mask([(1, 1)], "uniform").hooks(tiny))
    expected = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    assert torch.allclose(pat[1, 1], expected, atol=1e-6)
    assert not torch.allclose(pat[1, 0], expected, atol=1e-3)  # other heads untouched


def test_uniform_at_decode_steps_covers_all_keys(tiny):
    """At decode steps the masked head's row is 1/(n + t) over every key so far; the
    recorded unmasked head is not uniform; prefill is untouched unless asked."""
    n = IDS.numel()
    trace = greedy_decode(tiny, IDS, max_new_tokens=3, stop_at_newline=False,
                          record_rows=[(0, 2), (0, 3)], mask=Mask([(0, 2)], "uniform"))
    steps = trace.tokens.numel()
    assert steps >= 1
    for t in range(steps):
        row = trace.rows[(0, 2)][t, : n + t]
        assert torch.allclose(row, torch.full_like(row, 1.0 / (n + t)), atol=1e-6)
        assert not torch.allclose(trace.rows[(0, 3)][t, : n + t], row, atol=1e-4)


def test_prefill_phase_changes_the_kv_cache(tiny_llama):
    """Masking layer 0 in prefill too changes later layers' decode-step attention; decode-only
    masking leaves the prefill cache (hence layer 1's keys over the prompt) as unmasked."""
    kw = dict(max_new_tokens=1, stop_at_newline=False, record_rows=[(1, 0)])
    base = greedy_decode(tiny_llama, IDS, **kw)
    dec = greedy_decode(tiny_llama, IDS, mask=Mask([(0, 0)], "zero", prefill=False), **kw)
    both = greedy_decode(tiny_llama, IDS, mask=Mask([(0, 0)], "zero", prefill=True),
                         chunk_size=5, **kw)
    diff_dec = (base.rows[(1, 0)] - dec.rows[(1, 0)]).abs().max()
    diff_both = (base.rows[(1, 0)] - both.rows[(1, 0)]).abs().max()
    assert diff_both > diff_dec > 0


def test_mask_hooks_errors():
    with pytest.raises(ValueError, match="mode"):
        Mask([(0, 0)], "random")
    with pytest.raises(ValueError, match="with_means"):
        Mask([(0, 0)], "mean").hooks(n_heads=4)
    assert Mask([], "uniform").hooks(n_heads=4) == []


def test_mask_is_one_value():
    """A mask is frozen and compares by what it masks; ``with_heads`` keeps mode and prefill."""
    a = Mask([(1, 2), ("L0H3")], "zero", prefill=True)
    assert a.heads == ((1, 2), (0, 3))
    assert a == Mask(((1, 2), (0, 3)), "zero", prefill=True) and hash(a) == hash(Mask(a.heads, "zero", True))
    b = a.with_heads([(0, 0)])
    assert (b.heads, b.mask_mode, b.prefill) == (((0, 0),), "zero", True)
    scores = torch.tensor([[0.9, 0.0], [0.05, 0.5]])
    assert Mask.top(scores, 2).heads == ((0, 0), (1, 1))
    assert set(Mask.random(scores, 2, seed=0).heads) == {(0, 1), (1, 0)}
    with pytest.raises(ValueError, match="do not exist"):
        Mask([(5, 0)]).hooks(type("M", (), {"cfg": type("C", (), {"n_layers": 2, "n_heads": 2})})())


def test_check_heads(tiny_llama):
    check_heads([(1, 3)], tiny_llama.cfg.n_layers, tiny_llama.cfg.n_heads)
    with pytest.raises(ValueError, match="2 layers x 4"):
        check_heads([(2, 0)], tiny_llama.cfg.n_layers, tiny_llama.cfg.n_heads)


def test_parse_head():
    assert parse_head("L17H3") == (17, 3)
    assert parse_head("16-19") == (16, 19)
    with pytest.raises(ValueError):
        parse_head("17")


def test_top_and_random_heads():
    scores = torch.zeros(6, 5)
    scores[2, 1], scores[4, 4], scores[0, 0], scores[3, 3] = 0.9, 0.7, 0.5, 0.1
    assert top_heads(scores, 3) == [(2, 1), (4, 4), (0, 0)]
    retrieval = {(2, 1), (4, 4), (0, 0)}
    draws = [random_heads(scores, 10, seed) for seed in range(20)]
    for d in draws:
        assert len(set(d)) == 10 and not retrieval & set(d)
    assert random_heads(scores, 10, 3) == random_heads(scores, 10, 3)  # seeded
    assert len({tuple(d) for d in draws}) > 15  # seeds differ
    assert any((3, 3) in d for d in draws)  # exactly at the threshold is not a retrieval head
    with pytest.raises(ValueError, match="cannot draw"):
        random_heads(scores, 28, 0)


def test_k_grid():
    assert k_grid(1024) == [0, 2, 5, 10, 15, 20, 30, 50, 100]
    assert k_grid(270) == [0, 1, 3, 4, 5, 8, 13, 26]
    assert k_grid(8)[0] == 0 and k_grid(8) == sorted(set(k_grid(8)))


@pytest.mark.parametrize("k", [1.5, "3", None, -1])
def test_head_counts_of_the_wrong_kind_name_k(k):
    """``Mask.top(s, 1.5)`` is a ``ValueError`` naming ``k``, not torch's slicing error."""
    s = torch.rand(2, 4)
    for make in (lambda: Mask.top(s, k), lambda: Mask.random(s, k, seed=0, threshold=1.0)):
        with pytest.raises(ValueError, match=r"^k must be (a whole number|at least 0)"):
            make()


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 0.5])
def test_seeds_torch_cannot_take_name_seed(seed):
    with pytest.raises(ValueError, match="^seed must be"):
        Mask.random(torch.rand(2, 4), 1, seed=seed, threshold=1.0)
    assert Mask.random(torch.rand(2, 4), 1, seed=2**64 - 1, threshold=1.0).heads
