"""Every exercise checker accepts the package's own answer and rejects a wrong one with a hint.

Like ARENA's ``tests.py`` against ``solutions.py``: the reference of each concept is the
rhlens function itself, so checkers and library cannot drift apart, and a learner's mistake
gets the one-line ``✗ exercise: ...`` plus a ``hint:`` instead of a traceback wall.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
import torch

from rhlens.analyze.statistics import null_pearson, pearson
from rhlens.apps.downstream import summarize_conditions
from rhlens.apps.kvcache import kv_cache_bytes, kv_heads_of, top_kv_heads
from rhlens.apps.tasks import eval_chain
from rhlens.book.exercises import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10
from rhlens.book.exercises.check import NOT_ATTEMPTED_HINT, ExerciseFailed
from rhlens.book.exercises.generate import chapters, exercises, source_of
from rhlens.intervene.mask import Mask
from rhlens.models.rope import ntk_theta
from rhlens.niah.answers import classify_answer, classify_score, niah_score, token_f1
from rhlens.run.decode import greedy_decode, new_cache, prefill
from rhlens.score.detectors import split_values, write_contrast
from rhlens.score.heads import head_name, random_heads, sparsity
from rhlens.score.logit import head_dla
from rhlens.score.scoring import copy_hits, retrieval_scores


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


def _argmax_hook(pattern, hook, store):
    store.setdefault(hook.layer(), []).append(pattern[0, :, -1].argmax(-1))


def _argmax_over_heads(pattern, hook, store):
    store.setdefault(hook.layer(), []).append(pattern[0, :, -1].argmax(0))


def _p_value(a, b, n, seed):
    return float((null_pearson(a, b, n=n, seed=seed) >= pearson(a, b) - 1e-9).double().mean())


def _fair_controls(scores, k, seeds, threshold=0.1):
    return [random_heads(scores, k, s, threshold, same_layers=True) for s in seeds]


def _masked_class(model, ids, answer, mask, max_new_tokens=24):
    return classify_answer(answer, greedy_decode(model, ids, max_new_tokens, mask=mask).text)


def _unmasked_class(model, ids, answer, mask, max_new_tokens=24):
    return classify_answer(answer, greedy_decode(model, ids, max_new_tokens).text)


def _firing(counts, samples, nearly=0.95):
    share = counts.double() / samples
    return {"always": int((share >= 1).sum()), "nearly_always": int((share >= nearly).sum()),
            "some": int(((share > 0) & (share < nearly)).sum()), "never": int((share == 0).sum())}


def _copy_trace(argmax, tokens, prompt_ids, span, layer, head):
    return [(t, int(argmax[t, layer, head])) for t in range(len(tokens))
            if bool(copy_hits(argmax[t], int(tokens[t]), prompt_ids, span)[layer, head])]


def _chunked(model, ids, chunk_size):
    return prefill(model, ids, new_cache(model), chunk_size)


def _chunked_fresh_cache(model, ids, chunk_size):
    for start in range(0, ids.numel(), chunk_size):
        logits = model(ids[start:start + chunk_size][None])[0, -1]
    return logits


def _budget(scores, n_kv, d_head, n_tokens, budget, sink, window):
    L = scores.shape[0]
    if kv_cache_bytes(L, n_kv, d_head, n_tokens, [], sink, window)["kept"] > budget:
        raise ValueError("even compressing every KV head exceeds the budget")
    k = 0
    while k < L * n_kv and kv_cache_bytes(L, n_kv, d_head, n_tokens, top_kv_heads(
            scores, n_kv, k + 1), sink, window)["kept"] <= budget:
        k += 1
    return top_kv_heads(scores, n_kv, k)


#: (checker, reference answer, wrong answer)

def _contrast(alpha, values, span, n_prompt, w_o, direction, scale, *, with_generated=False):
    """Chapter 10's write contrast from the library's two parts (``with_generated``: the
    mistake of counting generated keys as off-needle)."""
    n_needle = span[1] - span[0]
    n = alpha.shape[1] if with_generated else n_prompt
    needle, off = split_values(alpha, values, span, n)
    return write_contrast(needle[None], off[None], n_needle, n - n_needle, w_o,
                          torch.tensor([scale], dtype=w_o.dtype), direction[None])

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
    (ch04.check_fair_controls, _fair_controls,
     lambda scores, k, seeds, threshold: [random_heads(scores, k, s, threshold) for s in seeds]),
    (ch04.check_masked_class, _masked_class, _unmasked_class),
    (ch02.check_argmax_hook, _argmax_hook, _argmax_over_heads),
    (ch03.check_shuffle_p_value, _p_value, lambda a, b, n, seed: 0.5),
    (ch06.check_firing_counts, _firing, lambda c, n, nearly=0.95: {
        **_firing(c, n, nearly), "some": int((c > 0).sum())}),
    (ch06.check_copy_trace, _copy_trace,
     lambda a, t, p, s, layer, head: sorted(set(_copy_trace(a, t, p, s, layer, head)),
                                            key=lambda e: e[1])[:1]),
    (ch07.check_summarize, summarize_conditions,
     lambda frame, metric: summarize_conditions(frame, metric).assign(
         spread=frame[frame.condition.str.startswith("random")][metric].std())),
    (ch08.check_chunked_prefill, _chunked, _chunked_fresh_cache),
    (ch09.check_kv_budget, _budget, lambda scores, n_kv, d, n, budget, sink, window:
     top_kv_heads(scores, n_kv, 1)),
    (ch05.check_restored_fraction, lambda p, clean, cf: (p - cf) / (clean - cf),
     lambda p, clean, cf: p / clean),
    (ch05.check_head_dla, head_dla,
     lambda z, w_o, scale, d: head_dla(z, w_o, torch.ones_like(scale), d)),
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
    (ch10.check_query_focus, lambda rows, span: rows[..., span[0]:span[1]].sum(-1).mean(-1),
     lambda rows, span: rows[..., span[0]:span[1]].sum(-1).sum(-1)),
    (ch10.check_write_contrast, _contrast, lambda *args: _contrast(*args, with_generated=True)),
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


def _not_attempted(*args, **kwargs):
    raise NotImplementedError("Exercise 9.9: Not yet")


@pytest.mark.parametrize("checker", [c for c, _, _ in CASES], ids=IDS)
def test_an_unsolved_stub_fails_with_one_line_and_the_hint(checker):
    with pytest.raises(ExerciseFailed) as err:
        checker(_not_attempted)
    first, hint = str(err.value).splitlines()
    assert first.startswith("✗ ") and "not attempted yet (Exercise 9.9: Not yet)" in first
    assert hint.strip() == f"hint: {NOT_ATTEMPTED_HINT}"
    assert err.value.__cause__ is None and err.value.__context__ is None  # no chained traceback
    assert err.value._render_traceback_() == str(err.value).splitlines()


# --------------------------------------------------------------------------- the notebooks

ROOT = Path(__file__).resolve().parents[2]


def _exercise_params(folder: Path):
    params = []
    for path in chapters(ROOT / "notebooks"):
        nb = json.loads((folder / path.name).read_text())
        for ex in exercises(nb):
            if ex["solution"] is not None:
                params.append(pytest.param(nb, ex, id=ex["label"].split(":")[0]))
    return params


def _run_exercise(nb: dict, ex: dict) -> None:
    """Run an exercise as a learner would: its code cell on its own (torch and the chapter's
    checker module imported), then the check call of the next cell."""
    ns = {"torch": torch,
          f"ch{ex['chapter']:02d}": importlib.import_module(f"rhlens.book.exercises.ch{ex['chapter']:02d}")}
    exec(compile(source_of(nb["cells"][ex["solution"]]), ex["label"], "exec"), ns)
    assert ex["check"] is not None, f"{ex['label']}: no cell after the solution"
    tree = ast.parse(source_of(nb["cells"][ex["check"]]))
    calls = [node.value for node in tree.body if isinstance(node, ast.Expr)
             and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute)
             and node.value.func.attr.startswith("check_")]
    assert calls, f"{ex['label']}: the cell after the solution has no check_* call"
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno < calls[0].lineno:
            exec(compile(ast.Module([node], []), ex["label"], "exec"), ns)
    eval(compile(ast.Expression(calls[0]), ex["label"], "eval"), ns)


@pytest.mark.parametrize("nb,ex", _exercise_params(ROOT / "notebooks"))
def test_every_solution_passes_its_check(nb, ex, capsys):
    _run_exercise(nb, ex)
    assert capsys.readouterr().out.splitlines()[-1].startswith("✓ ")


@pytest.mark.parametrize("nb,ex", _exercise_params(ROOT / "notebooks" / "exercises"))
def test_every_stub_fails_its_check_with_the_hint(nb, ex):
    with pytest.raises(ExerciseFailed) as err:
        _run_exercise(nb, ex)
    first, hint = str(err.value).splitlines()
    assert first.startswith("✗ ") and f"not attempted yet ({ex['label']})" in first
    assert hint.strip() == f"hint: {NOT_ATTEMPTED_HINT}"


def test_every_chapter_from_2_on_has_a_harder_exercise():
    """At least one exercise of difficulty 3 or more, with a check, in chapters 2-9 (as far as
    they use the exercise convention yet)."""
    for path in chapters(ROOT / "notebooks"):
        found = exercises(json.loads(path.read_text()))
        if int(path.name[:2]) < 2 or not found:
            continue
        assert any(ex["difficulty"] >= 3 and ex["check"] for ex in found), path.name


def test_every_checker_turns_a_stub_into_one_line():
    """Every check_* of every chapter module is wrapped by rhlens.book.exercises.check.checker."""
    modules = [ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10]
    bare = [f"{m.__name__}.{name}" for m in modules for name in dir(m)
            if name.startswith("check_") and not hasattr(getattr(m, name), "__wrapped__")]
    assert not bare, f"decorate these with @checker: {bare}"
    tested = {c.__module__ + "." + c.__name__ for c, _, _ in CASES}
    untested = [f"{m.__name__}.{name}" for m in modules for name in dir(m)
                if name.startswith("check_") and f"{m.__name__}.{name}" not in tested]
    assert not untested, f"checkers without a (reference, wrong answer) case in CASES: {untested}"
