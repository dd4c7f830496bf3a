"""The paper's measurement, held against an oracle written from the public code's description.

The oracle below is written from this description of the public code's scoring loop
(``retrieval_head_detection.py``), not from its source: for each decode step, each layer and
each query head, take the top-1 key position ``i`` of that head's attention row; if
``start <= i < end`` and ``prompt[i]`` equals the generated token, add ``1 / (end - start)``.
``(start, end)`` is the answer span (the code's ``real_needle``). rhlens's ``score_mode="sum"``
must equal it to 1e-12 on every recorded trace (``tests/data/decode_traces.json``, grouped-query
models included), and ``score_mode="paper"`` the de-duplicated set formula ``|g_h ∩ k| / |k|``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rhlens.models.bridge import embedded_tokenizer
from rhlens.niah.grid import Grid
from rhlens.niah.haystack import NEEDLES, Needle, default_haystack
from rhlens.niah.prompts import build_sample
from rhlens.score.detect import score_sample
from rhlens.score.scoring import retrieval_scores

DATA = Path(__file__).resolve().parents[1] / "data"
TRACES = json.loads((DATA / "decode_traces.json").read_text())
LEGACY = json.loads((DATA / "legacy_needle_span.json").read_text())


# --------------------------------------------------------------------------- the oracle


def oracle_sum(trace: dict, span) -> list[list[float]]:
    """The public code's loop, as described above: plain Python, no rhlens."""
    start, end = span
    argmax, tokens, prompt = trace["argmax"], trace["tokens"], trace["prompt_ids"]
    n_layers, n_heads = len(argmax[0]), len(argmax[0][0])
    score = [[0.0] * n_heads for _ in range(n_layers)]
    for step, token in enumerate(tokens):
        for layer in range(n_layers):
            for head in range(n_heads):
                i = argmax[step][layer][head]
                if start <= i < end and prompt[i] == token:
                    score[layer][head] += 1 / (end - start)
    return score


def oracle_paper(trace: dict, span) -> list[list[float]]:
    """``|g_h ∩ k| / |k|``: the distinct span positions each head copied, over the span size."""
    start, end = span
    argmax, tokens, prompt = trace["argmax"], trace["tokens"], trace["prompt_ids"]
    n_layers, n_heads = len(argmax[0]), len(argmax[0][0])
    copied = [[set() for _ in range(n_heads)] for _ in range(n_layers)]
    for step, token in enumerate(tokens):
        for layer in range(n_layers):
            for head in range(n_heads):
                i = argmax[step][layer][head]
                if start <= i < end and prompt[i] == token:
                    copied[layer][head].add(i)
    return [[len(c) / (end - start) for c in row] for row in copied]


def rhlens_scores(trace: dict, span, mode: str) -> torch.Tensor:
    return retrieval_scores(torch.tensor(trace["argmax"]).reshape(len(trace["tokens"]), -1,
                                                                  len(trace["argmax"][0][0])),
                            torch.tensor(trace["tokens"], dtype=torch.long),
                            torch.tensor(trace["prompt_ids"]), tuple(span), mode)


def synthetic(prompt, span, needle_span, tokens, argmax) -> dict:
    return {"prompt_ids": prompt, "answer_span": span, "needle_span": needle_span,
            "tokens": tokens, "argmax": argmax, "model": "hand-built"}


#: Hand-built traces for the edges: [steps][layers=1][heads=3].
EDGES = {
    # head 0 attends one position before the span and head 1 one after, each where the prompt
    # holds the generated token; head 2 attends inside: only head 2 copies
    "just outside": synthetic([7, 6, 6, 9, 9, 2], [2, 4], [1, 5], [6, 9],
                              [[[1, 4, 2]], [[1, 4, 3]]]),
    # the span holds token 5 twice; head 0 copies the first 5, the second 5, then the first
    # again (sum: 3/3, paper: 2/3); head 1 attends inside the span where the token differs
    "repeat inside": synthetic([1, 5, 8, 5, 2], [1, 4], [0, 5], [5, 5, 5, 8],
                               [[[1, 2, 0]], [[3, 2, 0]], [[1, 2, 0]], [[4, 1, 0]]]),
    # the answer starts at the needle's first token; head 1 copies it at every step
    "answer at needle start": synthetic([3, 4, 5, 6, 2], [1, 3], [1, 4], [4, 5, 4],
                                        [[[0, 1, 4]], [[2, 2, 3]], [[1, 1, 0]]]),
}
EDGE_EXPECTED = {  # (sum, paper) per head, worked out by hand from the comments above
    "just outside": ([0.0, 0.0, 1.0], [0.0, 0.0, 1.0]),
    "repeat inside": ([1.0, 0.0, 0.0], [2 / 3, 0.0, 0.0]),
    "answer at needle start": ([1.0, 1.5, 0.0], [1.0, 1.0, 0.0]),
}


def derived(trace: dict) -> dict:
    """A recorded trace whose generated token at each step is set to the prompt token that the
    first head attending inside the answer attends to (else inside the needle, else head
    L0H0's), so that random-weight models copy too; their argmaxes are kept as recorded."""
    (a0, a1), (n0, n1) = trace["answer_span"], trace["needle_span"]
    tokens = []
    for step in trace["argmax"]:
        flat = [i for row in step for i in row]
        i = next((i for i in flat if a0 <= i < a1), next((i for i in flat if n0 <= i < n1), flat[0]))
        tokens.append(trace["prompt_ids"][i])
    return {**trace, "tokens": tokens, "model": trace["model"] + " (tokens copied)"}


ALL = ([(f"{t['model']}:{t['prompt_style']}:{t['needle'][:12]}", t) for t in TRACES]
       + [(f"{t['model']}:derived", derived(t)) for t in TRACES[:4]])


@pytest.mark.parametrize("name,trace", ALL, ids=[n for n, _ in ALL])
@pytest.mark.parametrize("span_name", ["answer_span", "needle_span"])
def test_sum_mode_equals_the_oracle_on_every_trace(name, trace, span_name):
    span = trace[span_name]
    got = rhlens_scores(trace, span, "sum")
    want = torch.tensor(oracle_sum(trace, span), dtype=torch.float64)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-12
    paper = rhlens_scores(trace, span, "paper")
    assert (paper - torch.tensor(oracle_paper(trace, span), dtype=torch.float64)).abs().max() <= 1e-12


def test_the_traces_copy_and_cover_grouped_query_models():
    # the oracle is only worth something on traces where heads do copy
    def copies(trace, span_name):
        return max(map(max, oracle_sum(trace, trace[span_name]))) > 0

    answer = [n for n, t in ALL if copies(t, "answer_span")]
    needle = [n for n, t in ALL if copies(t, "needle_span")]
    assert any("smollm2" in n and "derived" not in n for n in answer)  # 9 query heads, 3 KV
    assert any("mixtral" in n for n in answer)  # 4 query heads, 2 KV, top-2 experts
    assert {n.split(":")[0] for n in needle} >= {f"tiny-{a}" for a in
                                                 ("llama", "mistral", "qwen2", "mixtral")}
    smol = [t for t in TRACES if t["model"] == "smollm2-135m"]
    assert {t["prompt_style"] for t in smol} == {"rhlens", "public-code"}
    assert len(smol[0]["argmax"][0][0]) == 9


@pytest.mark.parametrize("edge", list(EDGES))
def test_edges_against_the_oracle_and_by_hand(edge):
    trace = EDGES[edge]
    span = trace["answer_span"]
    want_sum, want_paper = EDGE_EXPECTED[edge]
    assert oracle_sum(trace, span)[0] == pytest.approx(want_sum, abs=1e-12)
    assert oracle_paper(trace, span)[0] == pytest.approx(want_paper, abs=1e-12)
    assert rhlens_scores(trace, span, "sum")[0].tolist() == pytest.approx(want_sum, abs=1e-12)
    assert rhlens_scores(trace, span, "paper")[0].tolist() == pytest.approx(want_paper, abs=1e-12)


# --------------------------------------------------------------------------- the spans


def test_recorded_prompts_and_spans_are_what_rhlens_builds_today():
    tok = embedded_tokenizer()
    hay = default_haystack()
    by_text = {n.text: n for n in NEEDLES}
    for t in TRACES:
        s = build_sample(tok, by_text[t["needle"]], hay, t["length"], t["depth"],
                         prompt_style=t["prompt_style"])
        assert s.input_ids.tolist() == t["prompt_ids"], "prompts changed: rerun record_traces.py"
        assert list(s.needle_span) == t["needle_span"] and list(s.answer_span) == t["answer_span"]


@pytest.mark.parametrize("needle", NEEDLES, ids=lambda n: n.answer)
def test_answer_span_is_the_answer_inside_the_needle(needle):
    tok = embedded_tokenizer()
    s = build_sample(tok, needle, default_haystack(), 300, 0.5)
    (n0, n1), (a0, a1) = s.needle_span, s.answer_span
    assert n0 <= a0 < a1 <= n1
    text = tok.decode(s.input_ids[a0:a1])
    assert text.strip().lower() == needle.answer.lower()
    # minimal: dropping either edge token loses part of the answer
    assert needle.answer.lower() not in tok.decode(s.input_ids[a0 + 1:a1]).lower()
    assert needle.answer.lower() not in tok.decode(s.input_ids[a0:a1 - 1]).lower()


def test_answer_at_the_needles_first_token():
    tok = embedded_tokenizer()
    needle = Needle("Saffron Thunder won the 1893 Brackenfold fair.",
                    "Which horse won the 1893 Brackenfold fair?", "Saffron Thunder")
    s = build_sample(tok, needle, default_haystack(), 200, 0.5)
    assert s.answer_span[0] == s.needle_span[0] < s.answer_span[1] < s.needle_span[1]


def test_a_slow_tokenizer_finds_the_same_answer_span(monkeypatch):
    """Tokenizers without offsets find the span from decoded prefixes."""
    from rhlens.niah import prompts

    tok = embedded_tokenizer()
    for needle in NEEDLES:
        fast = prompts.answer_offsets(tok, needle)
        prompts.answer_offsets.cache_clear()
        monkeypatch.setattr(type(tok), "is_fast", property(lambda self: False), raising=False)
        slow = prompts.answer_offsets(tok, needle)
        monkeypatch.undo()
        prompts.answer_offsets.cache_clear()
        assert slow == fast


def test_answer_must_be_a_contiguous_part_of_the_needle():
    with pytest.raises(ValueError, match="not a contiguous part"):
        Needle("The code is red fox nine.", "What is the code?", "red nine")
    assert Needle("The code is Red Fox.", "What is the code?", "red fox").answer_chars() == (12, 19)


# --------------------------------------------------------------------------- end to end


def test_score_sample_reads_the_answer_span_by_default(tiny_llama):
    s = build_sample(tiny_llama.tokenizer, NEEDLES[0], default_haystack(), 150, 0.5)
    from rhlens.run.decode import greedy_decode

    trace = greedy_decode(tiny_llama, s.input_ids, 6)
    rec = {"argmax": trace.argmax.tolist(), "tokens": trace.tokens.tolist(),
           "prompt_ids": s.input_ids.tolist()}
    for span_name, span in (("answer", s.answer_span), ("needle", s.needle_span)):
        r = score_sample(tiny_llama, s, score_mode="sum", max_new_tokens=6, score_span=span_name)
        got = torch.tensor(r["scores"], dtype=torch.float64)
        assert (got - torch.tensor(oracle_sum(rec, span), dtype=torch.float64)).abs().max() <= 1e-12


def _legacy(name: str):
    if name == "smollm2-135m":
        from rhlens.models.loading import load_model

        return load_model("smollm2-135m", device="cpu"), Grid([400], [0.3, 0.7], needles=2,
                                                              max_new_tokens=24)
    from rhlens.models.tiny import tiny_model

    return tiny_model(name.removeprefix("tiny-")), Grid([160], [0.5], needles=1, max_new_tokens=6)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "smol" in n else n
                                  for n in LEGACY])
def test_span_needle_reproduces_the_sentence_scores_of_before(name):
    """``score_span="needle"`` with the unstemmed gate gives the numbers rhlens gave before the
    answer span became the default (``tests/data/record_legacy.py``), at the float32 precision
    they were stored in (scores are float64 now)."""
    model, grid = _legacy(name)
    want = iter(LEGACY[name])
    for sample in grid.samples(model.tokenizer, model.cfg.n_ctx):
        for mode in ("paper", "sum"):
            old = next(want)
            assert (old["needle"], old["length"], old["depth"], old["mode"]) == (
                sample.needle.text, sample.length, sample.depth, mode)
            new = score_sample(model, sample, score_mode=mode, max_new_tokens=grid.max_new_tokens,
                               score_span="needle", rouge_stemmer=False)
            assert new["answer"] == old["answer"] and new["rouge"] == old["rouge"]
            assert torch.equal(torch.tensor(new["scores"], dtype=torch.float32),
                               torch.tensor(old["scores"], dtype=torch.float32))
