"""Activation patching: counterfactual prompts, batched patching equals one-head patching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rhlens.analyze.patching import compare_maps, group_summary
from rhlens.analyze.statistics import bootstrap_ci, map_correlation, spearman, top_k_overlap
from rhlens.intervene.attribution import direct_logit_attribution
from rhlens.intervene.edit import split_heads
from rhlens.intervene.pairs import PatchPair, counterfactual_tokens, make_pair
from rhlens.intervene.patch import _logit_diff, control_groups, patch_groups, patch_heads, run_pair
from rhlens.niah.haystack import NEEDLES
from rhlens.niah.prompts import answer_ids, build_sample
from rhlens.score.heads import top_heads
from rhlens.score.logit import head_dla
from rhlens.viz.runs import plot_patching


def _pair(model, hay):
    tok = model.tokenizer
    s = build_sample(tok, NEEDLES[0], hay, 160, 0.5)
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


@pytest.mark.parametrize("positions", ["decode", "answer"])
def test_batched_patching_matches_single_head_patching(tiny, positions, hay):
    """Every architecture: the batched map equals patching one head at a time by hand, at
    every decode position or from the first answer token's on."""
    pair = _pair(tiny, hay)
    res = patch_heads(tiny, run_pair(tiny, pair, positions=positions))
    n = pair.clean_ids.numel()
    first = n - 1 + (int(pair.answer_steps[0]) if positions == "answer" else 0)
    seq_c = torch.cat([pair.clean_ids, pair.continuation[:-1]])
    seq_f = torch.cat([pair.cf_ids, pair.continuation[:-1]])
    _, cc = tiny.run_with_cache(seq_c[None], names_filter=lambda x: x.endswith("hook_z"))
    H = tiny.cfg.n_heads
    for layer, head in [(0, 1), (1, H - 1)]:
        def put(z, hook, layer=layer, head=head):
            zz = split_heads(z, H).clone()
            zz[0, first:, head] = split_heads(cc[f"blocks.{layer}.attn.hook_z"], H)[0, first:, head]
            return zz.reshape(z.shape)

        logits = tiny.run_with_hooks(seq_f[None], fwd_hooks=[(f"blocks.{layer}.attn.hook_z", put)])
        ld = float(_logit_diff(logits[:, n - 1 :], pair)[0])
        expected = (ld - res.ld_cf) / (res.ld_clean - res.ld_cf)
        assert abs(expected - float(res.restored[layer, head])) < 1e-3


def test_patching_everything_restores_everything(tiny_llama, hay):
    """Sanity: with a one-layer model, patching all of a layer's heads at once gives 1."""
    pair = _pair(tiny_llama, hay)
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


# --------------------------------------------------------------------------- a planted head

PLANTED = (1, 2)


def _plant(model, pair, head=PLANTED, gain=100.0):
    """Make ``head`` decisive: at each decode step it attends only to the needle's answer token
    being written (a perfect retrieval head, a permanent pattern hook) and its output matrix is
    scaled by ``gain``, so its output alone sets the logits' dependence on the needle."""
    layer, h = head
    d_head = model.cfg.d_head
    o = model.original_model.model.layers[layer].self_attn.o_proj.weight
    o[:, h * d_head : (h + 1) * d_head] *= gain
    n = pair.clean_ids.numel()
    start = next(i for i in range(*pair.sample.needle_span)
                 if pair.clean_ids[i : i + len(pair.clean_tokens)].tolist()
                 == pair.clean_tokens.tolist())
    m = len(pair.clean_tokens)

    def attend(pattern, hook):
        q, k = pattern.shape[-2:]
        for qi in range(q):
            step = k - q + qi - (n - 1)  # decode step of this query (< 0: the prompt)
            if step >= 0:
                pattern[:, h, qi] = 0.0
                pattern[:, h, qi, start + min(step, m - 1)] = 1.0
        return pattern

    model.add_hook(f"blocks.{layer}.attn.hook_pattern", attend, is_permanent=True)
    return model


@pytest.fixture
def planted(hay):
    from rhlens.models.tiny import tiny_model

    model = tiny_model("llama")
    pair = _forced_pair(model, hay)
    return _plant(model, pair), pair


def _forced_pair(model, hay):
    tok = model.tokenizer
    s = build_sample(tok, NEEDLES[0], hay, 160, 0.5)
    return make_pair(model, s, seed=1, force_answer=True)


def test_planted_head_comes_out_first(planted):
    """Patching each head alone, the planted head restores nearly all of the difference and
    every other head little; its direct logit attribution dominates too."""
    model, pair = planted
    run = run_pair(model, pair)
    restored = patch_heads(model, run).restored
    assert top_heads(restored, 1) == [PLANTED]
    others = restored.clone()
    others[PLANTED] = 0
    assert restored[PLANTED] > 0.8 and others.abs().max() < 0.3
    dla = direct_logit_attribution(model, run)
    assert top_heads(dla.abs(), 1) == [PLANTED]
    # top-1 group (the planted head) restores, a control head in its layer does not
    scores = torch.zeros(2, 4, dtype=torch.float64)
    scores[PLANTED] = 0.9
    groups = control_groups(scores, [1], [0, 1])
    res = patch_groups(model, run, {f"{k}{s}": hs for (k, _, s), hs in groups.items()})
    assert res["top-1"].fraction > 0.8
    assert all(abs(r.fraction) < 0.3 for name, r in res.items() if name.startswith("control"))
    back = patch_groups(model, run, {"top": [PLANTED]}, "cf->clean")["top"]
    assert back.fraction > 0.8


def test_group_of_all_heads_restores_all_and_none_restores_nothing(tiny, hay):
    pair = _pair(tiny, hay)
    run = run_pair(tiny, pair)
    every = [(l, h) for l in range(tiny.cfg.n_layers) for h in range(tiny.cfg.n_heads)]
    for direction in ("clean->cf", "cf->clean"):
        res = patch_groups(tiny, run, {"all": every, "none": []}, direction)
        assert abs(res["all"].fraction - 1) < 1e-3 and abs(res["none"].fraction) < 1e-3
    late = run_pair(tiny, pair, positions="answer")
    assert late.start == 1 and abs(late.ld["cf"] - run.ld["cf"]) < 1e-4
    assert abs(patch_groups(tiny, late, {"all": every})["all"].fraction - 1) < 1e-3


def test_dla_of_all_heads_is_the_attention_outputs_direct_effect(tiny, hay):
    """The heads' shares add up to what the attention layers write, read through the frozen
    final norm: the per-head split (hook_z @ W_O) loses nothing."""
    pair = _pair(tiny, hay)
    run = run_pair(tiny, pair)
    dla = direct_logit_attribution(tiny, run)
    n = pair.clean_ids.numel()
    seq = torch.cat([pair.clean_ids, pair.continuation[:-1]])
    _, cache = tiny.run_with_cache(seq[None])
    steps = pair.answer_steps
    scale = cache["ln_final.hook_scale"][0, n - 1 :][steps].reshape(-1, 1)
    w = dict(tiny.ln_final.named_parameters())
    w = next(v for k, v in w.items() if k.endswith("weight"))
    direction = (tiny.W_U[:, pair.clean_tokens] - tiny.W_U[:, pair.cf_tokens]).T * w
    attn = sum(cache[f"blocks.{l}.hook_attn_out"][0, n - 1 :][steps]
               for l in range(tiny.cfg.n_layers))
    expected = float(((attn / scale) * direction).sum(-1).mean())
    assert abs(float(dla.sum()) - expected) < 1e-4 * max(1.0, abs(expected))


def test_bootstrap_and_map_correlation():
    est, lo, hi = bootstrap_ci([1.0] * 10)
    assert (est, lo, hi) == (1.0, 1.0, 1.0)
    est, lo, hi = bootstrap_ci(list(range(20)), seed=3)
    assert lo < est < hi and bootstrap_ci(list(range(20)), seed=3) == (est, lo, hi)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(6, 5, generator=g, dtype=torch.float64)
    maps = truth[None] + 0.05 * torch.randn(12, 6, 5, generator=g, dtype=torch.float64)
    c = map_correlation(maps, truth, n_boot=200, n_null=200)
    assert c["spearman"] > 0.9 and c["lo"] > c["null_hi"] and c["p"] < 0.01
    noise = torch.randn(12, 6, 5, generator=g, dtype=torch.float64)
    c = map_correlation(noise, truth, n_boot=200, n_null=200)
    assert c["lo"] < c["spearman"] < c["hi"] and c["p"] > 0.01


# --------------------------------------------------------------------------- rhlens patch



def patch_args(files, out, *extra):
    return ["patch", "--model", "tiny-llama", "--scores", str(files / "scores.json"),
            "--lengths", "160,200", "--depths", "0.3,0.7", "--needles", "2", "--skip-needles",
            "0", "--ks", "1,2", "--seeds", "0,1", "--force-answer", "--haystack",
            str(files / "hay.txt"), "--out", str(out), *extra]


def test_patch_command_resumes_and_shards_concatenate(files, monkeypatch, cli):
    import pandas as pd

    import rhlens.intervene.patch_sweep

    full = files / "full.csv"
    rc, out, err = cli(*patch_args(files, full, "--pairs", "5"))
    assert rc == 0, err
    df = pd.read_csv(full)
    assert df.pair.nunique() == 5 and set(df.measure) == {"none", "group", "head", "dla"}
    assert len(df[df.measure == "head"]) == 5 * 8
    top = df[(df.measure == "group") & (df.kind == "top") & (df.k == 1)]
    assert set(top.heads) == {"L1H1"}
    ctrl = df[(df.measure == "group") & (df.kind == "control")]
    assert not ctrl.heads.str.contains("L1H1").any()
    assert all(h.startswith("L1") for hs in ctrl.heads for h in hs.split())  # same layers
    before = full.read_bytes()

    def refuse(*a, **k):
        raise AssertionError("a finished pair was computed again")

    monkeypatch.setattr(rhlens.intervene.patch_sweep, "run_pair", refuse)
    rc, _, err = cli(*patch_args(files, full, "--pairs", "5"))
    assert rc == 0, err
    assert full.read_bytes() == before
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    parts = []
    for i in range(2):
        rc, out, err = cli(*patch_args(files, files / "sh.csv", "--pairs", "5",
                                                "--shard", f"{i}/2"))
        assert rc == 0, err
        parts.append(pd.read_csv(files / f"sh.shard{i}of2.csv"))
    joined = pd.concat(parts).sort_values("pair", kind="stable").reset_index(drop=True)
    assert sorted(parts[0].pair.unique()) == [0, 2, 4]
    pd.testing.assert_frame_equal(joined, df, check_exact=False, rtol=1e-5, atol=1e-6)
    merged = files / "merged.csv"  # rhlens merge joins patch shards as it joins score files
    rc, out, err = cli("merge", "--out", merged, files / "sh.shard1of2.csv", files / "sh.shard0of2.csv")
    assert rc == 0 and "5 patching pairs" in out, err
    pd.testing.assert_frame_equal(pd.read_csv(merged), df, check_exact=False, rtol=1e-5, atol=1e-6)
    merged_log = [json.loads(line) for line in Path(f"{merged}.samples.jsonl").open()]
    full_log = [json.loads(line) for line in Path(f"{full}.samples.jsonl").open()]
    assert merged_log[0] == full_log[0] and len(merged_log) == len(full_log) == 6
    summary = group_summary(df, n_boot=50)
    assert set(summary.kind) == {"none", "top", "control"} and (summary.pairs == 5).all()


@pytest.mark.parametrize("extra, message", [
    (["--pairs", "0"], "--pairs must be at least 1, got 0."),
    (["--ks", "0"], "--ks has no group size above 0"),
    (["--ks", "x"], "--ks must be 'auto' or a comma-separated list"),
    (["--ks", "7"], "so K = 7 has no control"),
    (["--seeds", ""], "--seeds is an empty list."),
    (["--shard", "x"], "--shard 'x' is not i/n"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0."),
    (["--scores", "nope.json"], "--scores nope.json: no such file"),
])
def test_patch_bad_input_is_one_line_before_the_model_loads(files, monkeypatch, extra,
                                                            message, cli):
    import rhlens.models.loading

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(rhlens.models.loading, "load_model", refuse)
    out = files / "bad.csv"
    rc, _, err = cli(*patch_args(files, out), *extra)
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() and not Path(f"{out}.samples.jsonl").exists()


def test_head_dla_checker_accepts_the_reference_and_rejects_a_wrong_one():
    from rhlens.book.exercises import ch05
    from rhlens.book.exercises.check import ExerciseFailed

    ch05.check_head_dla(head_dla)
    wrong = lambda z, w_o, scale, d: head_dla(z, w_o, torch.ones_like(scale), d)  # noqa: E731
    with pytest.raises(ExerciseFailed, match="hint:"):
        ch05.check_head_dla(wrong)
    with pytest.raises(ExerciseFailed, match="hint:"):
        ch05.check_head_dla(lambda z, w_o, scale, d: head_dla(z, w_o, scale, d).sum(0))
