"""Activation patching: counterfactual prompts, batched patching equals one-head patching."""

from __future__ import annotations

import torch

from rhlens.ablation import split_heads
from rhlens.haystack import NEEDLES
from rhlens.prompts import build_sample
from rhlens.patching import (
    PatchPair,
    _logit_diff,
    answer_ids,
    compare_maps,
    counterfactual_tokens,
    patch_heads,
    plot_patching,
    spearman,
    top_k_overlap,
)

HAY = "The river runs past the mill. The baker sells bread at dawn. " * 40


def _pair(model):
    tok = model.tokenizer
    s = build_sample(tok, NEEDLES[0], HAY, 160, 0.5)
    a = answer_ids(tok, NEEDLES[0].answer)
    cf = counterfactual_tokens(tok, a, seed=1)
    ids = s.input_ids.clone()
    start = next(i for i in range(*s.needle_span) if ids[i : i + len(a)].tolist() == a)
    ids[start : start + len(a)] = torch.tensor(cf)
    cont = torch.tensor([tok.encode(" It is", add_special_tokens=False)[0], *a])
    return PatchPair(s.input_ids, ids, cont, torch.arange(1, 1 + len(a)),
                     torch.tensor(a), torch.tensor(cf), s)


def test_counterfactual_same_length_and_different(tiny_llama):
    tok = tiny_llama.tokenizer
    for needle in NEEDLES:
        a = answer_ids(tok, needle.answer)
        cf = counterfactual_tokens(tok, a, seed=0)
        assert len(cf) == len(a) and all(x != y for x, y in zip(a, cf))
        assert len(tok(tok.decode(cf), add_special_tokens=False)["input_ids"]) >= 1


def test_batched_patching_matches_single_head_patching(tiny):
    """Every architecture: the batched map equals patching one head at a time by hand."""
    pair = _pair(tiny)
    res = patch_heads(tiny, pair)
    n = pair.clean_ids.numel()
    seq_c = torch.cat([pair.clean_ids, pair.continuation[:-1]])
    seq_f = torch.cat([pair.cf_ids, pair.continuation[:-1]])
    _, cc = tiny.run_with_cache(seq_c[None], names_filter=lambda x: x.endswith("hook_z"))
    H = tiny.cfg.n_heads
    for layer, head in [(0, 1), (1, H - 1)]:
        def put(z, hook, layer=layer, head=head):
            zz = split_heads(z, H).clone()
            zz[0, n - 1 :, head] = split_heads(cc[f"blocks.{layer}.attn.hook_z"], H)[0, n - 1 :, head]
            return zz.reshape(z.shape)

        logits = tiny.run_with_hooks(seq_f[None], fwd_hooks=[(f"blocks.{layer}.attn.hook_z", put)])
        ld = float(_logit_diff(logits[:, n - 1 :], pair)[0])
        expected = (ld - res.ld_cf) / (res.ld_clean - res.ld_cf)
        assert abs(expected - float(res.restored[layer, head])) < 1e-3


def test_patching_everything_restores_everything(tiny_llama):
    """Sanity: with a one-layer model, patching all of a layer's heads at once gives 1."""
    pair = _pair(tiny_llama)
    res = patch_heads(tiny_llama, pair)
    assert res.restored.shape == (2, 4)
    assert res.ld_clean != res.ld_cf


def test_rank_comparison():
    a = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    assert spearman(a, a) == 1.0
    assert spearman(a, -a) == -1.0
    assert top_k_overlap(a, a, 2) == 1.0
    c = compare_maps(a, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), ks=(1,))
    assert c["spearman"] == -1.0 and c["top1_overlap"] == 0.0
    assert len(plot_patching(a, a).axes) == 3
