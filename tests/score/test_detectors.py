"""The four head detectors: each formula on a hand-built case, the one-pass decode readers
against a brute-force recomputation on every architecture, runs that resume, and SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch

from rhlens.errors import UsageError
from rhlens.intervene.edit import split_heads
from rhlens.niah.grid import Grid
from rhlens.niah.haystack import NEEDLES
from rhlens.niah.prompts import build_sample, question_span
from rhlens.score.detector_maps import detect_heads, load_maps
from rhlens.score.detectors import (
    CARDS,
    DETECTORS,
    answer_steps,
    check_detectors,
    detect_sample,
    query_focus_score,
    split_values,
    write_contrast,
)
from rhlens.score.scoring import retrieval_scores
from rhlens.viz.detectors import plot_maps

HAY = "The river runs past the mill. The baker sells bread at dawn. " * 40


# --------------------------------------------------------------------------- hand-built cases


def test_query_focus_is_the_question_rows_mass_on_the_span_averaged_over_question_tokens():
    # 2 heads, 2 question tokens, 4 keys; span = keys 1..2
    rows = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 0.0]],
                         [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]])
    # head 0: (0.5 + 1.0) / 2 = 0.75; head 1: (0 + 0) / 2 = 0
    assert query_focus_score(rows, (1, 3)).tolist() == pytest.approx([0.75, 0.0])


def test_needle_attention_is_one_rows_mass_on_the_needle():
    alpha = torch.tensor([[0.1, 0.4, 0.4, 0.1], [0.7, 0.1, 0.0, 0.2]])  # 2 heads, one step
    assert query_focus_score(alpha[:, None], (1, 3)).tolist() == pytest.approx([0.8, 0.1])


def test_logit_contribution_by_hand_with_two_query_heads_sharing_one_value_group():
    """φ(j) = α(j) (v_j W_O) · d / s with W_O = I, d = (1, 0), s = 2; needle = keys 1, 2."""
    alpha = torch.tensor([[0.1, 0.4, 0.4, 0.1],      # head 0
                          [0.25, 0.25, 0.25, 0.25]])  # head 1 (same value group)
    values = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 2.0], [4.0, 4.0]]])  # [kv=1, keys, d]
    needle, off = split_values(alpha, values, (1, 3), n_prompt=4)
    assert needle[0].tolist() == pytest.approx([0.8, 0.8])   # 0.4*(2,0) + 0.4*(0,2)
    assert off[0].tolist() == pytest.approx([0.5, 0.4])      # 0.1*(1,0) + 0.1*(4,4)
    w_o = torch.eye(2).expand(2, 2, 2)
    got = write_contrast(needle[None], off[None], 2, 2, w_o, torch.tensor([2.0]),
                         torch.tensor([[1.0, 0.0]]))
    # head 0: φ = (0.05, 0.4, 0, 0.2): mean on the needle 0.2, off it 0.125 -> 0.075
    # head 1: φ = (0.125, 0.25, 0, 0.5): 0.125 - 0.3125 = -0.1875
    assert got.tolist() == pytest.approx([0.075, -0.1875])


def test_positions_after_the_prompt_are_neither_needle_nor_off_needle():
    alpha = torch.tensor([[0.2, 0.3, 0.5]])          # key 2 is a generated token
    values = torch.tensor([[[1.0], [1.0], [10.0]]])
    needle, off = split_values(alpha, values, (1, 2), n_prompt=2)
    assert needle.item() == pytest.approx(0.3) and off.item() == pytest.approx(0.2)


def test_copy_paste_is_the_retrieval_score_by_hand():
    prompt = torch.tensor([7, 8, 9, 10, 11])
    argmax = torch.tensor([[[1, 0]], [[2, 2]], [[2, 4]]])
    assert retrieval_scores(argmax, torch.tensor([8, 9, 9]), prompt, (1, 4))[0].tolist() == \
        pytest.approx([2 / 3, 1 / 3])


def test_cards_name_a_source_and_say_read_or_write():
    assert set(CARDS) == set(DETECTORS)
    assert "2404.15574" in CARDS["copy_paste"].source
    assert "2506.09944" in CARDS["query_focus"].source
    assert "2607.01002" in CARDS["logit_contribution"].source
    assert CARDS["logit_contribution"].circuit.startswith("writes")
    assert CARDS["logit_contribution"].signed and not CARDS["needle_attention"].signed
    with pytest.raises(ValueError, match="some of copy_paste"):
        check_detectors(["copy_paste", "locos"])


# --------------------------------------------------------------------------- positions


@pytest.mark.parametrize("style", ["rhlens", "public-code"])
def test_question_span_holds_the_question(tiny_llama, style):
    tok = tiny_llama.tokenizer
    s = build_sample(tok, NEEDLES[1], HAY, 200, 0.5, prompt_style=style)
    q0, q1 = question_span(tok, s)
    assert tok.decode(s.input_ids[q0:q1]).strip() == NEEDLES[1].question
    assert s.needle_span[1] <= q0


def test_answer_steps_find_the_answer_or_its_tokens(tiny_llama):
    tok = tiny_llama.tokenizer
    s = build_sample(tok, NEEDLES[0], HAY, 200, 0.5)
    ans = tok(" smoked cardamom", add_special_tokens=False)["input_ids"]
    lead = tok(" It is", add_special_tokens=False)["input_ids"]
    assert answer_steps(tok, s, torch.tensor(lead + ans + [13])) == \
        list(range(len(lead), len(lead) + len(ans)))
    first = int(s.input_ids[s.answer_span[0]])  # a partial answer: its tokens still count
    assert answer_steps(tok, s, torch.tensor(lead + [first])) == [len(lead)]
    assert answer_steps(tok, s, torch.tensor(lead)) == []


# --------------------------------------------------------------------------- the passes


def _brute_force(model, sample, rec):
    """Every detector recomputed from one plain forward over prompt + answer (no KV cache,
    eager attention, every row): the reference the one-pass readers must equal."""
    tok = model.tokenizer
    gen = tok(rec["answer"], add_special_tokens=False)["input_ids"]
    n, H = sample.input_ids.numel(), model.cfg.n_heads
    seq = torch.cat([sample.input_ids, torch.tensor(gen[:-1], dtype=torch.long)])
    want = lambda x: x.endswith(("hook_pattern", "hook_v")) or x == "ln_final.hook_scale"  # noqa
    _, cache = model.run_with_cache(seq[None], names_filter=want)
    rows = range(n - 1, n - 1 + len(gen))
    steps = rec["steps"]
    a, b = sample.needle_span
    q0, q1 = question_span(tok, sample)
    w_u = model.W_U
    weight = dict(model.ln_final.named_parameters())["_original_component.weight"]
    scale = cache["ln_final.hook_scale"][0, :, 0]
    out = {k: torch.zeros(model.cfg.n_layers, H) for k in DETECTORS}
    argmax = torch.zeros(len(gen), model.cfg.n_layers, H, dtype=torch.long)
    for layer in range(model.cfg.n_layers):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # [H, q, k]
        v = split_heads(cache[f"blocks.{layer}.attn.hook_v"], None)[0]  # [pos, kv, d]
        v = v.repeat_interleave(H // v.shape[1], dim=1)  # [pos, H, d]
        w_o = model.blocks[layer].attn.W_O
        argmax[:, layer] = pat[:, list(rows)].argmax(-1).T
        out["query_focus"][layer] = pat[:, q0:q1, a:b].sum(-1).mean(-1)
        for h in range(H):
            na, lc = [], []
            for t in steps:
                r = n - 1 + t
                d = weight * w_u[:, gen[t]] / scale[r]
                phi = pat[h, r, :n] * ((v[:n, h] @ w_o[h]) @ d)  # per prompt position
                inside = torch.zeros(n, dtype=torch.bool)
                inside[a:b] = True
                lc.append(phi[inside].mean() - phi[~inside].mean())
                na.append(pat[h, r, a:b].sum())
            out["logit_contribution"][layer, h] = torch.stack(lc).mean()
            out["needle_attention"][layer, h] = torch.stack(na).mean()
    out["copy_paste"] = retrieval_scores(argmax, torch.tensor(gen), sample.input_ids,
                                         sample.span("answer"))
    return out


def test_one_pass_readers_equal_a_brute_force_recomputation(tiny):
    """Every architecture (GQA, Qwen2's biases, Mixtral's experts): the decode hooks' needle
    mass and value sums, the KV cache's values and the question-rows pass give what one full
    eager forward gives."""
    s = build_sample(tiny.tokenizer, NEEDLES[0], HAY, 180, 0.4)
    rec = detect_sample(tiny, s, steps="decode", max_new_tokens=5)
    assert rec["steps"] == list(range(len(rec["steps"]))) and rec["steps"]
    ref = _brute_force(tiny, s, rec)
    for d in DETECTORS:
        got = torch.tensor(rec["maps"][d])
        assert got.shape == (tiny.cfg.n_layers, tiny.cfg.n_heads)
        tol = 1e-3 * float(ref[d].abs().max()) + 1e-6
        assert torch.allclose(got.float(), ref[d].float(), atol=tol), (d, got, ref[d])


def test_logit_contribution_over_every_key_is_the_heads_direct_logit_attribution(tiny_llama):
    """Summed over all keys, φ is what the head writes to the token's logit through the frozen
    final norm: split_values' two parts plus the generated keys rebuild hook_z."""
    s = build_sample(tiny_llama.tokenizer, NEEDLES[2], HAY, 160, 0.5)
    n = s.input_ids.numel()
    _, cache = tiny_llama.run_with_cache(s.input_ids[None], names_filter=lambda x: x.endswith(
        ("hook_pattern", "hook_v", "hook_z")))
    for layer in range(2):
        alpha = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1]
        v = cache[f"blocks.{layer}.attn.hook_v"][0].transpose(0, 1)  # [kv, pos, d]
        needle, off = split_values(alpha, v, s.needle_span, n)
        z = split_heads(cache[f"blocks.{layer}.attn.hook_z"], 4)[0, -1]
        assert torch.allclose(needle + off, z, atol=1e-5)


def test_detect_heads_writes_score_files_and_resumes_only_the_same_run(tiny_llama, tmp_path,
                                                                       monkeypatch):
    grid = Grid([160], [0.3, 0.7], needles=1, haystack=HAY, max_new_tokens=4)
    out = tmp_path / "det"
    run = detect_heads(tiny_llama, grid, rouge_gate=-1, steps="decode", out=out, progress=False)
    assert set(run.maps) == set(DETECTORS)
    loaded = load_maps(out)
    for d in DETECTORS:
        assert torch.allclose(loaded[d], run.maps[d], atol=1e-5)
        assert json.loads((tmp_path / f"det.{d}.json").read_text()).keys() >= {"0-0", "1-3"}
    cards = json.loads((tmp_path / "det.cards.json").read_text())
    assert cards["cards"]["logit_contribution"]["samples"] == 2
    assert cards["prompts"] == 2 and cards["passed"] == 2
    assert (run.maps["logit_contribution"] < 0).any()  # signed values round-trip
    assert list(run.top_table(3).columns[:2]) == ["copy_paste", "copy_paste_value"]
    assert len(plot_maps(run.maps).axes) == 2 * len(DETECTORS)  # a map and its colour bar each

    import rhlens.score.detector_maps as det

    monkeypatch.setattr(det, "detect_sample", lambda *a, **k: pytest.fail("not resumed"))
    again = detect_heads(tiny_llama, grid, rouge_gate=-1, steps="decode", out=out,
                         progress=False)
    assert torch.equal(again.maps["query_focus"], run.maps["query_focus"])
    with pytest.raises(UsageError, match="other settings"):
        detect_heads(tiny_llama, grid, rouge_gate=-1, steps="answer", out=out, progress=False)


def test_a_sample_without_an_answer_step_is_left_out_of_the_step_maps(tiny_llama):
    grid = Grid([160], [0.5], needles=1, haystack=HAY, max_new_tokens=3)
    run = detect_heads(tiny_llama, grid, rouge_gate=-1, steps="answer", progress=False)
    assert run.records[0]["steps"] == [] and run.records[0]["maps"]["needle_attention"] is None
    assert run.per_sample["needle_attention"].shape[0] == 0
    assert run.per_sample["query_focus"].shape[0] == 1


@pytest.mark.slow
def test_smollm2_detectors_agree_with_the_retrieval_score_and_read_the_needle(smollm2):
    """On the embedded model: copy_paste is `rhlens score`'s number for the same sample; the
    answer is found, and the heads that attend most to the needle read it from the question."""
    from rhlens.niah.haystack import default_haystack
    from rhlens.score.detect import score_sample

    s = build_sample(smollm2.tokenizer, NEEDLES[1], default_haystack(), 500, 0.5)
    rec = detect_sample(smollm2, s, max_new_tokens=24)
    assert "purple walrus seventeen" in rec["answer"] and len(rec["steps"]) >= 3
    ref = score_sample(smollm2, s, max_new_tokens=24)
    assert torch.allclose(torch.tensor(rec["maps"]["copy_paste"]), torch.tensor(ref["scores"]))
    maps = {d: torch.tensor(m) for d, m in rec["maps"].items()}
    assert maps["query_focus"].max() > 0.3 and maps["needle_attention"].max() > 0.3
    assert 0 <= float(maps["query_focus"].min()) and float(maps["query_focus"].max()) <= 1
    assert maps["logit_contribution"].max() > 0.1  # some head writes the answer from the needle
