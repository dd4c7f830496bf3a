"""Downstream tasks: generators, metrics, head sets and batched decoding under masks."""

from __future__ import annotations

import pytest
import torch

from rhlens.apps.downstream import evaluate_cot, evaluate_qa, head_conditions, summarize_conditions
from rhlens.apps.kvcache import compressed_cache_hooks
from rhlens.apps.tasks import cot_prompt, eval_chain, make_cot_tasks, make_qa_items, qa_prompt
from rhlens.intervene.mask import Mask
from rhlens.models.bridge import embedded_tokenizer
from rhlens.niah.answers import extract_number, normalize_answer, token_f1
from rhlens.run.decode import batched_hooks, decode_conditions, greedy_decode
from rhlens.score.heads import random_heads, top_heads


def test_token_f1_matches_squad_definition():
    assert token_f1("The Amber Heron.", "amber heron") == 1.0
    assert token_f1("purple walrus", "purple walrus seventeen") == pytest.approx(0.8)
    assert token_f1("blue", ["red", "blue sky"]) == pytest.approx(2 / 3)
    assert token_f1("nothing here", "smoked cardamom") == 0.0
    assert normalize_answer("An  Owl, the Owl!") == "owl owl"


def test_qa_items_answers_are_spans_and_not_repeated():
    items = make_qa_items(12, seed=0)
    assert items == make_qa_items(12, seed=0)
    assert len({it.context for it in items}) == 12
    for it in items:
        assert it.answer in it.context
        assert it.context.count(it.answer) >= 1
    assert make_qa_items(3, seed=1)[0].context != items[0].context
    tok = embedded_tokenizer()
    lengths = [len(qa_prompt(tok, it)) for it in items]
    assert all(300 <= n <= 600 for n in lengths), lengths


def test_cot_tasks_need_the_chain():
    for steps in (1, 2, 3):
        for task in make_cot_tasks(20, steps=steps, distractors=2, seed=steps):
            env = eval_chain(task.lines)
            assert env[task.target] == task.answer
            assert task.reasoning.count("=") == 2 * steps
            assert extract_number(task.reasoning) == task.answer
            defined = set()
            for line in task.lines:  # every variable is defined before it is used
                var, expr = (s.strip() for s in line.split("="))
                assert all(t.isdigit() or t in "+-" or t in defined for t in expr.split())
                defined.add(var)
            assert 0 <= task.answer


def test_cot_prompt_styles_differ():
    tok = embedded_tokenizer()
    task = make_cot_tasks(1, seed=0)[0]
    with_cot = tok.decode(cot_prompt(tok, task, cot=True))
    without = tok.decode(cot_prompt(tok, task, cot=False))
    assert with_cot.endswith("step by step:") and without.endswith("The answer is")
    assert "\n".join(task.lines) in with_cot


def test_extract_number():
    assert extract_number(" 7.") == 7
    assert extract_number("a = 3 + 4 = 7, The answer is 12. then 5") == 12
    assert extract_number("none") is None


def test_head_sets_are_seeded_and_below_threshold():
    scores = torch.zeros(6, 4)
    scores[2, 1], scores[4, 3], scores[0, 0] = 0.9, 0.5, 0.05
    assert top_heads(scores, 2) == [(2, 1), (4, 3)]
    draw = random_heads(scores, 5, seed=3)
    assert draw == random_heads(scores, 5, seed=3)
    assert draw != random_heads(scores, 5, seed=4)
    assert all(scores[l, h] < 0.1 for l, h in draw)
    assert len(set(draw)) == 5
    with pytest.raises(ValueError, match="cannot draw"):
        random_heads(scores, 23, seed=0)
    conds = head_conditions(scores, 2, seeds=(0, 1))
    assert list(conds) == ["none", "top-2", "random-2-s0", "random-2-s1"]
    assert conds["top-2"].heads == ((2, 1), (4, 3)) and conds["none"].heads == ()
    assert not set(conds["random-2-s0"].heads) & {(2, 1), (4, 3)}


def test_batched_hooks_touch_only_their_row():
    class H:
        name = "blocks.0.attn.hook_attn_scores"

    def add(v):
        def fn(t, hook):
            t += v
            return t
        return fn

    hooks = batched_hooks([[], [(H.name, add(1.0))], [(lambda n: "attn" in n, add(5.0))]])
    ((filt, fn),) = hooks
    assert filt(H.name) and not filt("blocks.0.hook_resid_pre")
    out = fn(torch.zeros(3, 2), H())
    assert out.tolist() == [[0, 0], [1, 1], [5, 5]]
    assert batched_hooks([[], []]) == []


def test_uniform_mask_gives_uniform_attention(tiny_llama):
    ids = torch.arange(200, 230)
    rows = {}

    def rec(pattern, hook):
        rows.setdefault(hook.name, []).append(pattern[0, :, -1].clone())

    hooks = Mask([(1, 2)]).hooks(tiny_llama) + [(lambda n: n.endswith("hook_pattern"), rec)]
    greedy_decode(tiny_llama, ids, 3, decode_hooks=hooks, stop_at_newline=False)
    for row in rows["blocks.1.attn.hook_pattern"]:
        n = row.shape[-1]
        assert torch.allclose(row[2], torch.full((n,), 1.0 / n), atol=1e-6)
        assert not torch.allclose(row[0], torch.full((n,), 1.0 / n), atol=1e-6)


def test_decode_conditions_match_greedy_decode(tiny_llama):
    ids = torch.arange(300, 340)
    conds = {
        "none": [],
        "mask": Mask([(0, 0), (1, 3)]).hooks(tiny_llama),
        "sink": compressed_cache_hooks([], 2, 4, 2, sink=1, window=0),
    }
    outs = decode_conditions(tiny_llama, ids, conds, max_new_tokens=6, stop_at_newline=False)
    for name, hooks in conds.items():
        ref = greedy_decode(tiny_llama, ids, 6, decode_hooks=hooks, stop_at_newline=False)
        assert outs[name] == ref.text, name
    assert outs["sink"] != outs["none"]


def test_evaluate_and_summarize_on_tiny(tiny_llama):
    scores = torch.rand(2, 4) * 0.05
    scores[1, 2] = 0.8
    conds = head_conditions(scores, 1, seeds=(0, 1))
    qa = evaluate_qa(tiny_llama, make_qa_items(2), conds, max_new_tokens=3, progress=False)
    assert len(qa) == 2 * 4 and qa["f1"].between(0, 100).all()
    cot = evaluate_cot(tiny_llama, make_cot_tasks(2), conds, cot=False, max_new_tokens=2,
                       progress=False)
    assert set(cot["correct"]) <= {0.0, 100.0}
    qa.loc[qa["condition"] == "none", "f1"] = 50.0
    qa.loc[qa["condition"] == "top-1", "f1"] = 25.0
    qa.loc[qa["condition"] == "random-1-s0", "f1"] = 40.0
    qa.loc[qa["condition"] == "random-1-s1", "f1"] = 60.0
    table = summarize_conditions(qa).set_index("condition")
    assert list(table.index) == ["none", "top-1", "random-1"]
    assert table.loc["top-1", "change"] == pytest.approx(-50.0)
    assert table.loc["random-1", "mean"] == pytest.approx(50.0)
    assert table.loc["random-1", "spread"] == pytest.approx(14.142, abs=1e-3)
    assert table.loc["random-1", "n_seeds"] == 2
