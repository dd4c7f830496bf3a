"""The whole `score` path on tiny random-weight models of every architecture."""

import json
from pathlib import Path

import pytest
import torch

from rhlens.errors import NoPassingSampleError
from rhlens.niah.grid import Grid
from rhlens.niah.haystack import NEEDLES, default_haystack
from rhlens.niah.prompts import build_sample
from rhlens.run.batch import greedy_decode_batch
from rhlens.run.decode import greedy_decode
from rhlens.run.results import load_scores
from rhlens.score.detect import detect_retrieval_heads


def test_score_path_runs_on_every_architecture(tiny, tmp_path):
    out = tmp_path / "scores.json"
    grid = Grid(lengths=[160], depths=[0.5], needles=1, max_new_tokens=4)
    run = detect_retrieval_heads(tiny, grid, rouge_gate=-1, out=out, progress=False)
    n_layers, n_heads = tiny.cfg.n_layers, tiny.cfg.n_heads
    assert run.scores.shape == (n_layers, n_heads)
    assert ((run.scores >= 0) & (run.scores <= 1)).all()
    data = json.loads(out.read_text())
    assert sorted(data) == sorted(f"{l}-{h}" for l in range(n_layers) for h in range(n_heads))
    assert all(len(v) == 1 for v in data.values())
    assert torch.allclose(load_scores(out), run.scores, atol=1e-5)


def test_decode_reads_one_row_per_step_and_matches_hf_generate(tiny_llama):
    s = build_sample(tiny_llama.tokenizer, NEEDLES[0], default_haystack(), 150, 0.5)
    trace = greedy_decode(tiny_llama, s.input_ids, max_new_tokens=6, stop_at_newline=False,
                          chunk_size=64, record_rows=[(1, 2)])
    hf = tiny_llama.original_model
    ref = hf.generate(s.input_ids[None], max_new_tokens=6, do_sample=False,
                      eos_token_id=None, pad_token_id=0)[0, 150:]
    assert trace.tokens.tolist() == ref[: len(trace.tokens)].tolist()
    assert trace.argmax.shape == (len(trace.tokens), 2, 4)
    # argmax positions are valid keys: prompt plus the answer so far
    for t in range(len(trace.tokens)):
        assert int(trace.argmax[t].max()) < 150 + t
    row = trace.rows[(1, 2)]
    assert row.shape[0] == len(trace.tokens)
    assert torch.allclose(row.sum(-1), torch.ones(len(trace.tokens)), atol=1e-4)
    assert int(row[0].argmax()) == int(trace.argmax[0, 1, 2])


def test_recorded_argmax_equals_full_forward_pattern(tiny_llama):
    """The decode-step rows equal the last rows of a full (uncached) forward's patterns."""
    s = build_sample(tiny_llama.tokenizer, NEEDLES[1], default_haystack(), 140, 0.3)
    trace = greedy_decode(tiny_llama, s.input_ids, max_new_tokens=3, stop_at_newline=False)
    full = torch.cat([s.input_ids, trace.tokens[:-1]])
    _, cache = tiny_llama.run_with_cache(full[None], names_filter=lambda n: n.endswith("hook_pattern"))
    for t in range(len(trace.tokens)):
        q = 140 - 1 + t
        for layer in range(2):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, q, : q + 1]
            assert pattern.argmax(-1).tolist() == trace.argmax[t, layer].tolist()


def test_no_passing_sample_is_an_error_not_an_empty_file(tiny_llama, tmp_path):
    out = tmp_path / "scores.json"
    with pytest.raises(NoPassingSampleError, match="rouge_gate"):
        detect_retrieval_heads(tiny_llama, Grid([160], [0.5], needles=1, max_new_tokens=3),
                               out=out, progress=False)
    assert not out.exists()


def test_rerun_resumes_from_the_log(tiny_llama, tmp_path, monkeypatch):
    out = tmp_path / "scores.json"
    grid = Grid([160], [0.2, 0.8], needles=1, max_new_tokens=3)
    first = detect_retrieval_heads(tiny_llama, grid, rouge_gate=-1, out=out, progress=False)
    import rhlens.score.detect as detect

    def boom(*a, **k):
        raise AssertionError("a finished sample was decoded again")

    monkeypatch.setattr(detect, "score_sample", boom)
    again = detect_retrieval_heads(tiny_llama, grid, rouge_gate=-1, out=out, progress=False)
    assert torch.equal(first.scores, again.scores)


def test_prompt_over_context_is_an_error(tiny_llama):
    ids = torch.arange(10, 4100)
    with pytest.raises(ValueError, match="context"):
        greedy_decode(tiny_llama, ids, max_new_tokens=32)


def _batched_run(model, out, batch_size, monkeypatch=None, sizes=None):
    """A score run of 2 lengths x 4 depths at ``batch_size``; ``sizes`` collects the size of
    every batch decoded."""
    if sizes is not None:
        import rhlens.score.detect as detect

        def spy(model, prompts, *a, **k):
            sizes.append(len(prompts))
            return greedy_decode_batch(model, prompts, *a, **k)

        monkeypatch.setattr(detect, "greedy_decode_batch", spy)
    grid = Grid([160, 200], [0.1, 0.4, 0.6, 0.9], needles=1, max_new_tokens=4)
    return detect_retrieval_heads(model, grid, rouge_gate=-1, out=out,
                                  progress=False, batch_size=batch_size)


def _files(out) -> tuple[bytes, bytes]:
    return out.read_bytes(), Path(f"{out}.samples.jsonl").read_bytes()


def test_batched_run_writes_the_same_files(tiny_llama, tmp_path, monkeypatch):
    one = _batched_run(tiny_llama, tmp_path / "b1.json", 1)
    sizes: list[int] = []
    three = _batched_run(tiny_llama, tmp_path / "b3.json", 3, monkeypatch, sizes)
    assert sorted(sizes) == [1, 1, 3, 3]  # each length's 4 prompts as a batch of 3, then 1
    assert _files(tmp_path / "b3.json") == _files(tmp_path / "b1.json")
    assert three.records == one.records


def test_a_run_resumes_under_another_batch_size(tiny_llama, tmp_path, monkeypatch):
    _batched_run(tiny_llama, tmp_path / "b1.json", 1)
    out = tmp_path / "cut.json"
    _batched_run(tiny_llama, out, 3)
    log = Path(f"{out}.samples.jsonl")
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:4]))  # header + 3
    sizes: list[int] = []
    _batched_run(tiny_llama, out, 2, monkeypatch, sizes)
    assert sum(sizes) == 5  # the 3 logged samples are reused, not decoded again
    assert _files(out) == _files(tmp_path / "b1.json")
