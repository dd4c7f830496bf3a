"""Exact tests of the retrieval-score arithmetic on hand-built cases."""

import pytest
import torch

from rhlens.score.heads import head_table, summarize
from rhlens.score.scoring import copy_hits, retrieval_scores

PROMPT = torch.tensor([50, 10, 11, 12, 13, 60, 61])  # needle = positions 1..4 -> ids 10..13
SPAN = (1, 5)


def steps(*rows):
    """[T, L=1, H] argmax tensor from per-step lists of head positions."""
    return torch.tensor([[r] for r in rows])


def test_copy_inside_needle_counts():
    hits = copy_hits(torch.tensor([[2, 2]]), 11, PROMPT, SPAN)
    assert hits.tolist() == [[True, True]]


def test_copy_outside_needle_does_not_count():
    # position 5 holds 60 and the model emits 60: a copy, but not from the needle
    assert copy_hits(torch.tensor([[5]]), 60, PROMPT, SPAN).tolist() == [[False]]
    # position 0 (before the needle) likewise
    assert copy_hits(torch.tensor([[0]]), 50, PROMPT, SPAN).tolist() == [[False]]


def test_attending_needle_without_copying_does_not_count():
    assert copy_hits(torch.tensor([[3]]), 11, PROMPT, SPAN).tolist() == [[False]]


def test_attending_generated_tokens_is_never_a_hit():
    # key positions >= len(prompt) are the answer so far, not the needle
    assert copy_hits(torch.tensor([[7, 9]]), 61, PROMPT, SPAN).tolist() == [[False, False]]


def test_full_copy_scores_one():
    argmax = steps([1], [2], [3], [4])
    tokens = torch.tensor([10, 11, 12, 13])
    assert retrieval_scores(argmax, tokens, PROMPT, SPAN).item() == pytest.approx(1.0)


def test_repeated_tokens_are_deduplicated_in_paper_mode():
    # the head copies needle position 2 three times: one distinct token out of four
    argmax = steps([2], [2], [2])
    tokens = torch.tensor([11, 11, 11])
    assert retrieval_scores(argmax, tokens, PROMPT, SPAN).item() == pytest.approx(0.25)
    assert retrieval_scores(argmax, tokens, PROMPT, SPAN, score_mode="sum").item() == pytest.approx(0.75)


def test_sum_mode_exceeds_one_like_the_public_code():
    # every needle token copied, then the last one copied three more times
    argmax = steps([1], [2], [3], [4], [4], [4], [4])
    tokens = torch.tensor([10, 11, 12, 13, 13, 13, 13])
    paper = retrieval_scores(argmax, tokens, PROMPT, SPAN)
    public = retrieval_scores(argmax, tokens, PROMPT, SPAN, score_mode="sum")
    assert paper.item() == pytest.approx(1.0)
    assert public.item() == pytest.approx(7 / 4)
    assert public.item() > 1


def test_repeated_token_at_two_needle_positions_counts_twice():
    prompt = torch.tensor([0, 7, 7, 9])  # needle [7, 7, 9]
    argmax = steps([1], [2], [3])
    tokens = torch.tensor([7, 7, 9])
    assert retrieval_scores(argmax, tokens, prompt, (1, 4)).item() == pytest.approx(1.0)


def test_gqa_heads_are_scored_per_query_head():
    # 2 layers x 4 query heads; under GQA (2 KV heads) heads 0,1 share keys but each query
    # head has its own argmax, and each gets its own score
    argmax = torch.zeros(2, 2, 4, dtype=torch.long)
    argmax[:, 1, 1] = torch.tensor([1, 2])  # layer 1, head 1 copies 10, 11
    argmax[:, 0, 3] = torch.tensor([1, 6])  # layer 0, head 3 copies 10 only
    tokens = torch.tensor([10, 11])
    scores = retrieval_scores(argmax, tokens, PROMPT, SPAN)
    expected = torch.zeros(2, 4, dtype=torch.float64)
    expected[1, 1] = 0.5
    expected[0, 3] = 0.25
    assert torch.allclose(scores, expected)


def test_no_tokens_gives_zero():
    scores = retrieval_scores(torch.zeros(0, 3, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                              PROMPT, SPAN)
    assert scores.shape == (3, 2) and scores.sum() == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        retrieval_scores(steps([1]), torch.tensor([10]), PROMPT, SPAN, score_mode="max")
    with pytest.raises(ValueError, match="one step per token"):
        retrieval_scores(steps([1], [2]), torch.tensor([10]), PROMPT, SPAN)
    with pytest.raises(ValueError, match="Empty needle"):
        retrieval_scores(steps([1]), torch.tensor([10]), PROMPT, (3, 3))


def test_summary_and_table():
    scores = torch.tensor([[0.0, 0.6], [0.2, 0.05]])
    s = summarize(scores)
    assert s["share_above_0.1"] == 0.5
    assert s["share_above_0.5"] == 0.25
    assert s["share_zero"] == 0.25
    assert s["top"][0] == ("L0H1", 0.6)
    assert head_table(scores).name.tolist() == ["L0H1", "L1H0", "L1H1", "L0H0"]
