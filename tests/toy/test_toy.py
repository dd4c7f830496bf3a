"""Toy retrieval task, training, scoring through the shared rhlens code, and head masking."""

from __future__ import annotations

import pytest
import torch

from rhlens.analyze.statistics import pearson
from rhlens.intervene.mask import Mask
from rhlens.score.heads import control_pool, random_heads, top_heads
from rhlens.toy import (
    ASST,
    ATTN_ONLY_2L,
    BOS,
    SEP,
    USER,
    ToyModelConfig,
    ToyTask,
    build_model,
    masked_accuracy,
    to_bridge,
    toy_retrieval_scores,
    toy_tokenizer,
    train,
)

TINY = ToyModelConfig(n_layers=2, n_heads=2, d_model=32)


# --- task generator ------------------------------------------------------------------

def test_sample_shapes_and_needle_placement():
    task = ToyTask(length=30, value_len=4)
    batch = task.sample(16, seed=3)
    assert batch.input_ids.shape == (16, 30) and batch.values.shape == (16, 4)
    for i in range(16):
        row = batch.input_ids[i]
        start, end = batch.needle_span(i)
        assert row[start:end].tolist() == batch.values[i].tolist()
        key = int(row[start - 1])
        assert key in task.vocab.keys and int(row[-1]) == key  # the key asks the question
        assert row[0] == BOS
        # value tokens appear nowhere else in the prompt
        others = torch.cat([row[:start], row[end:]])
        assert not torch.isin(batch.values[i], others).any()
    assert batch.full().shape == (16, 30 + 4 + 1)


def test_sample_is_seeded_and_depth_controls_position():
    task = ToyTask()
    assert torch.equal(task.sample(4, seed=1).input_ids, task.sample(4, seed=1).input_ids)
    assert not torch.equal(task.sample(4, seed=1).input_ids, task.sample(4, seed=2).input_ids)
    early = task.sample(8, seed=0, depth=0.0).needle_start
    late = task.sample(8, seed=0, depth=1.0).needle_start
    assert (early == 1).all() and (late == task.length - 1 - 1 - task.value_len).all()


def test_chat_format_and_distractors():
    task = ToyTask(length=28, chat=True, n_distractors=2)
    batch = task.sample(8, seed=0)
    row = batch.input_ids[0]
    assert row[:2].tolist() == [BOS, USER] and row[-3] == SEP and row[-1] == ASST
    key = int(row[-2])
    assert (row == key).sum() == 2  # needle key + query key; distractors use other keys
    assert int((torch.isin(row, torch.tensor(list(task.vocab.keys)))).sum()) == 2 + 2


def test_bad_task_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="longer length"):
        ToyTask(length=5, value_len=4)
    with pytest.raises(ValueError, match="n_filler"):
        ToyTask(value_len=20)


def test_tokenizer_roundtrip():
    tok = toy_tokenizer()
    ids = ToyTask().sample(1, seed=0).input_ids[0]
    assert tok(tok.decode(ids[1:])).input_ids == ids.tolist()


# --- training and scoring --------------------------------------------------------------

def test_training_is_deterministic_and_lowers_the_loss():
    torch.manual_seed(123)
    task = ToyTask(length=16, value_len=2)
    histories = []
    for _ in range(2):
        model = build_model(TINY, task.vocab, seed=0)
        histories.append(train(model, task, steps=60, eval_every=30, eval_n=64, warmup=10))
    a, b = histories
    assert a.loss.tolist() == pytest.approx(b.loss.tolist(), rel=1e-5)
    assert a.loss.iloc[-1] < 0.8 * a.loss.iloc[0]


def test_attention_only_model_has_zero_mlps():
    model = build_model(ATTN_ONLY_2L, seed=0)
    for layer in model.model.layers:
        assert not layer.mlp.down_proj.weight.any()
        assert not layer.mlp.down_proj.weight.requires_grad


def test_retrieval_scores_use_the_shared_pipeline():
    task = ToyTask(length=16, value_len=2)
    bridge = to_bridge(build_model(TINY, task.vocab, seed=0))
    run = toy_retrieval_scores(bridge, task, n=3)
    assert run.scores.shape == (2, 2) and run.per_sample.shape == (3, 2, 2)
    assert ((run.scores >= 0) & (run.scores <= 1)).all()


# --- masking ----------------------------------------------------------------------------

def test_mask_hooks_only_touch_decode_positions_and_heads():
    task = ToyTask(length=16, value_len=2)
    bridge = to_bridge(build_model(TINY, task.vocab, seed=0))
    ids = task.sample(2, seed=0).full()[:, :-1]
    clean, cache = bridge.run_with_cache(ids)
    seen = {}

    def grab(pattern, hook):
        seen["p"] = pattern.clone()

    from_pos = task.length - 1
    for mode in ("uniform", "zero"):
        hooks = Mask([(1, 0)], mode).hooks(bridge, from_pos=from_pos)
        masked = bridge.run_with_hooks(ids, fwd_hooks=[*hooks, ("blocks.1.attn.hook_pattern", grab)])
        assert torch.allclose(masked[:, :from_pos], clean[:, :from_pos], atol=1e-5)
        assert not torch.allclose(masked[:, from_pos:], clean[:, from_pos:])
        row = seen["p"][0, 0, from_pos]
        if mode == "uniform":
            assert torch.allclose(row[: from_pos + 1], torch.full((from_pos + 1,), 1 / (from_pos + 1)))
        else:  # "zero" sets the head's output (hook_z) to 0, its pattern is left alone
            assert torch.allclose(row, cache["blocks.1.attn.hook_pattern"][0, 0, from_pos])
        untouched = cache["blocks.1.attn.hook_pattern"][0, 1]
        assert torch.allclose(seen["p"][0, 1], untouched)
    with pytest.raises(ValueError, match="means"):
        Mask([(0, 0)], "mean").hooks(bridge)


def test_head_selection_helpers():
    scores = torch.tensor([[0.0, 0.9], [0.3, 0.05]])
    assert top_heads(scores, 2) == [(0, 1), (1, 0)]
    drawn = random_heads(scores, 2, seed=0, threshold=None, exclude=[(0, 1), (1, 0)])
    assert sorted(drawn) == [(0, 0), (1, 1)]
    assert random_heads(scores, 1, seed=5) == random_heads(scores, 1, seed=5)
    assert pearson(scores, 2 * scores) == pytest.approx(1.0)
    # non-retrieval heads (<= 0.1) in the layers holding a retrieval head: (0, 0) and (1, 1)
    assert sorted(random_heads(scores, 2, seed=0, same_layers=True)) == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="smaller k"):
        random_heads(scores, 3, seed=0)


def test_control_pool_never_holds_a_retrieval_head():
    scores = torch.tensor([[0.0, 0.02, 0.3], [0.95, 0.05, 0.0], [0.0, 0.0, 0.0]])
    # same_layers: only layers 0 and 1 hold a head >= 0.1
    assert control_pool(scores, same_layers=True) == [(0, 0), (0, 1), (1, 1), (1, 2)]
    everywhere = control_pool(scores)
    assert (2, 0) in everywhere and all(scores[hd] <= 0.1 for hd in everywhere)


@pytest.mark.slow
def test_masking_top_head_breaks_retrieval_random_heads_do_not():
    """Trains the chapter's 2-layer model (about a minute) and checks the causal claim."""
    from rhlens.toy import trained_model

    bridge, history = trained_model("attn-only-2l", cache=False)
    assert history.accuracy.iloc[-1] >= 0.95
    task = ToyTask()
    run = toy_retrieval_scores(bridge, task, n=16)
    retrieval = [hd for hd in top_heads(run.scores, 8) if run.scores[hd] > 0.5]
    acc_top = masked_accuracy(bridge, task, Mask(retrieval), n=128)
    assert acc_top < 0.2
    control = [hd for hd in control_pool(run.scores, same_layers=True)][: len(retrieval)]
    if control:  # non-retrieval heads of the retrieval heads' layer barely matter
        assert masked_accuracy(bridge, task, Mask(control), n=128) > 0.8


def test_emergence_replays_checkpoints_on_a_bridge_and_restores_the_weights():
    from rhlens.toy import accuracy, emergence

    task = ToyTask(length=16, value_len=2)
    model = build_model(TINY, task.vocab, seed=0)
    history = train(model, task, steps=20, eval_every=10, eval_n=32, warmup=5, checkpoint_every=10)
    bridge = to_bridge(model)  # checkpoints were saved before wrapping: plain names
    final_loss = accuracy(bridge, task, 32)["loss"]
    em = emergence(bridge, task, history, n=2)
    assert sorted(em.step.unique()) == [0, 10, 20] and len(em) == 3 * 2 * 2
    assert accuracy(bridge, task, 32)["loss"] == pytest.approx(final_loss)
    assert final_loss == pytest.approx(history.loss.iloc[-1], rel=1e-5)


# --- the alias variant: retrieval that plain induction cannot do ------------------------

def test_alias_variant_asks_with_a_token_that_never_occurred_before():
    from rhlens.toy import ALIAS_VOCAB

    task = ToyTask(alias=True, vocab=ALIAS_VOCAB)
    batch = task.sample(16, seed=4)
    for i in range(16):
        row = batch.input_ids[i].tolist()
        start, end = batch.needle_span(i)
        key, question = row[start - 1], row[-1]
        assert key in ALIAS_VOCAB.keys and question in ALIAS_VOCAB.aliases
        assert question == ALIAS_VOCAB.alias_of(key)          # a fixed pairing, learnable
        assert question not in row[:-1]                       # induction has nothing to match
        assert row[start:end] == batch.values[i].tolist()
    # the plain task is unchanged by the larger vocabulary's existence
    plain = ToyTask().sample(4, seed=1)
    assert torch.equal(plain.input_ids[:, -1], plain.input_ids[torch.arange(4), plain.needle_start])
    tok = toy_tokenizer(ALIAS_VOCAB)
    assert tok.decode([ALIAS_VOCAB.alias_of(ALIAS_VOCAB.keys[2])]) == "a2"


def test_alias_variant_needs_alias_tokens():
    with pytest.raises(ValueError, match="ALIAS_VOCAB"):
        ToyTask(alias=True)


def test_plain_induction_answers_the_plain_task_and_never_the_alias_variant():
    from rhlens.toy import ALIAS_VOCAB, induction_accuracy

    assert induction_accuracy(ToyTask(), n=64) == 1.0
    assert induction_accuracy(ToyTask(chat=True), n=64) == 1.0
    assert induction_accuracy(ToyTask(alias=True, vocab=ALIAS_VOCAB), n=64) == 0.0


def test_retrieval_vs_induction_reports_both_scores_for_each_head_and_variant():
    from rhlens.toy import ALIAS_VOCAB, retrieval_vs_induction

    plain = ToyTask(length=16, value_len=2)
    alias = plain.with_(alias=True, vocab=ALIAS_VOCAB)
    models = {"plain": (to_bridge(build_model(TINY, plain.vocab, seed=0)), plain),
              "alias": (to_bridge(build_model(TINY, alias.vocab, seed=0)), alias)}
    table = retrieval_vs_induction(models, n=2)
    assert len(table) == 2 * 2 * 2
    assert {"retrieval", "first_step", "induction", "prev_token"} <= set(table.columns)
    assert table.groupby("variant").induction_accuracy.first().to_dict() == {"alias": 0.0, "plain": 1.0}
    assert table[["retrieval", "first_step", "induction"]].apply(lambda c: c.between(0, 1).all()).all()


def test_best_permutation_and_matching_a_model_with_itself():
    from rhlens.toy import best_permutation, match_heads

    sim = torch.tensor([[0.1, 0.2, 0.9], [0.8, 0.1, 0.0], [0.0, 0.7, 0.2]])
    assert best_permutation(sim) == (2, 0, 1)
    with pytest.raises(ValueError, match="too many"):
        best_permutation(torch.zeros(9, 9))
    task = ToyTask(length=16, value_len=2)
    bridge = to_bridge(build_model(TINY, task.vocab, seed=0))
    scores = torch.tensor([[0.0, 0.1], [0.9, 0.3]])
    same = match_heads(bridge, bridge, task, scores, scores, layer=1, n=4)
    assert same.head_b.tolist() == ["L1H0", "L1H1"]
    assert same.similarity.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert same.attrs["pearson_matched"] == pytest.approx(1.0)
