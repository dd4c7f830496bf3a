"""Every exercise checker accepts the package's own answer and rejects a wrong one with a hint.

Like ARENA's ``tests.py`` against ``solutions.py``: the reference of each concept is the
rhlens function itself, so checkers and library cannot drift apart, and a learner's mistake
gets the one-line ``✗ exercise: ...`` plus a ``hint:`` instead of a traceback wall.
"""

from __future__ import annotations

import pytest
import torch

from rhlens.ablation import Mask
from rhlens.answers import classify_answer, classify_score, niah_score, token_f1
from rhlens.downstream import eval_chain
from rhlens.exercises import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09
from rhlens.exercises.check import ExerciseFailed
from rhlens.heads import head_name, pearson, random_heads, sparsity
from rhlens.kvcache import kv_cache_bytes, kv_heads_of
from rhlens.rope import ntk_theta
from rhlens.scoring import copy_hits, retrieval_scores


def _uniform(scores, heads):
    ((_, hook),) = Mask([(0, h) for h in heads]).hooks(n_heads=scores.shape[1])
    return hook(scores, None)


def _zero_all(scores, heads):
    scores[:, heads] = 0.0  # also un-hides future keys: the leak the causal mask prevents
    return scores


def _kv_full(n_layers, n_kv, d_head, n_tokens, bytes_per_value=2):
    return kv_cache_bytes(n_layers, n_kv, d_head, n_tokens, bytes_per_value=bytes_per_value,
                          compress_all=False)["full"]


def _kv_kept(n_layers, n_kv, d_head, n_tokens, n_full, sink, window):
    full = [(i // n_kv, i % n_kv) for i in range(n_full)]
    return kv_cache_bytes(n_layers, n_kv, d_head, n_tokens, full, sink, window)["kept"]


def _cosine(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


#: (checker, reference answer, wrong answer)
CASES = [
    (ch01.check_exact_value_accuracy,
     lambda logits, values: (logits.argmax(-1) == values).all(1).float().mean(),
     lambda logits, values: (logits.argmax(-1) == values).float().mean()),
    (ch01.check_uniform_row, lambda k: torch.full((k,), 1.0 / k), lambda k: torch.ones(k)),
    (ch02.check_copy_hits, copy_hits,
     lambda argmax, token, prompt, span: prompt[argmax.clamp(0, len(prompt) - 1)] == token),
    (ch02.check_retrieval_scores, retrieval_scores,
     lambda a, t, p, s: retrieval_scores(a, t, p, s, score_mode="sum")),
    (ch03.check_sparsity, sparsity,
     lambda m: {"share_above_0.1": float((m >= 0.1).float().mean()),
                "share_above_0.5": float((m >= 0.5).float().mean()),
                "share_zero": float((m == 0).float().mean())}),
    (ch03.check_pearson, pearson, _cosine),
    (ch04.check_uniform_scores, _uniform, _zero_all),
    (ch04.check_random_heads, random_heads,
     lambda scores, k, seed, threshold: [(l, h) for l in range(4) for h in range(5)][:k]),
    (ch05.check_restored_fraction, lambda p, clean, cf: (p - cf) / (clean - cf),
     lambda p, clean, cf: p / clean),
    (ch05.check_classify, classify_answer,
     lambda answer, output: classify_score(niah_score(answer, output))),
    (ch06.check_top_head_per_sample,
     lambda per: [head_name(*divmod(int(p.flatten().argmax()), per.shape[2])) for p in per],
     lambda per: [head_name(*reversed(divmod(int(p.flatten().argmax()), per.shape[2])))
                  for p in per]),
    (ch07.check_token_f1, token_f1, lambda pred, truth: float(pred == truth)),
    (ch07.check_eval_chain, eval_chain, lambda lines: {}),
    (ch08.check_kv_cache_bytes, _kv_full, lambda L, K, d, n, b=2: L * K * d * n * b),
    (ch08.check_ntk_theta, ntk_theta, lambda theta, *rest: theta),
    (ch09.check_kv_heads_of, kv_heads_of,
     lambda heads, n, k: sorted({(l, h % k) for l, h in heads})),
    (ch09.check_kv_bytes, _kv_kept, lambda L, K, d, n, f, s, w: 2 * L * K * d * n),
]
IDS = [checker.__module__.rsplit(".", 1)[-1] + "." + checker.__name__ for checker, _, _ in CASES]


@pytest.mark.parametrize("checker,reference,wrong", CASES, ids=IDS)
def test_checker_accepts_the_reference_and_rejects_a_wrong_answer(checker, reference, wrong,
                                                                   capsys):
    checker(reference)
    assert capsys.readouterr().out.startswith("✓ ")
    with pytest.raises(ExerciseFailed) as err:
        checker(wrong)
    first, *rest = str(err.value).splitlines()
    assert first.startswith("✗ ") and ":" in first
    assert rest and rest[0].strip().startswith("hint: ")
