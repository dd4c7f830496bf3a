"""The command line, including the exact commands of the README, and bad input."""

import json
import subprocess
import sys

import pytest

from rhlens.cli.main import main
from rhlens.run.results import load_scores


def test_unknown_model_lists_what_is_accepted(capsys):
    code = main(["score", "--model", "/no/such/model-dir", "--lengths", "200", "--out", "x.json"])
    err = capsys.readouterr().err
    assert code == 2
    assert "smollm2-135m" in err and "llama-2-7b-80k" in err and "tiny-llama" in err


def test_bad_lists_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--lengths", "500,abc"])
    assert "comma-separated list of ints" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", "--depths", "0.5,1.5"])


def test_too_many_needles_is_a_clear_error(capsys):
    assert main(["score", "--model", "tiny-llama", "--needles", "50"]) == 2
    assert "only 10" in capsys.readouterr().err


def test_score_then_plot_on_a_tiny_model(tmp_path, capsys):
    out, png = tmp_path / "s.json", tmp_path / "heads.png"
    code = main(["score", "--model", "tiny-qwen2", "--lengths", "160", "--depths", "0.5",
                 "--needles", "1", "--rouge-gate", "-1", "--max-new-tokens", "3", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "share of heads > 0.1" in text and "top heads" in text
    assert load_scores(out).shape == (2, 4)
    assert main(["plot", str(out), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000


def test_console_script_is_installed():
    res = subprocess.run([sys.executable, "-m", "rhlens", "models"], capture_output=True,
                         text=True, check=True)
    assert "yaofu/llama-2-7b-80k" in res.stdout


@pytest.mark.slow
def test_smollm2_has_sparse_retrieval_heads(tmp_path, capsys):
    """What the paper predicts of a model that passes NIAH: a few strong heads, most at zero."""
    out = tmp_path / "scores.json"
    args = ["score", "--model", "smollm2-135m", "--lengths", "700", "--depths", "0.3,0.7",
            "--needles", "2", "--out", str(out)]
    assert main(args) == 0
    log = [json.loads(l) for l in open(f"{out}.samples.jsonl")][1:]
    assert sum(r["passed"] for r in log) >= 3, [r["answer"] for r in log]
    scores = load_scores(out)
    assert scores.shape == (30, 9)
    assert scores.max() > 0.5
    assert (scores > 0.1).float().mean() < 0.10
    assert (scores == 0).float().mean() > 0.5
    # a second run resumes: same file, no new samples
    before = out.read_text()
    assert main(args) == 0
    assert out.read_text() == before
    assert len(open(f"{out}.samples.jsonl").readlines()) == len(log) + 1


def _score(tmp_path, name, *extra):
    out = tmp_path / name
    args = ["score", "--model", "tiny-llama", "--lengths", "160", "--depths", "0.5", "--needles",
            "1", "--rouge-gate", "-1", "--max-new-tokens", "3", "--out", str(out), *extra]
    return main(args), out


def test_score_records_span_stemming_and_refuses_to_resume_with_another_span(tmp_path, capsys):
    code, out = _score(tmp_path, "s.json")
    assert code == 0
    header = json.loads(open(f"{out}.samples.jsonl").readline())["settings"]
    assert header["span"] == "answer" and header["rouge_stemmer"] is True
    assert header["mode"] == "paper" and header["max_new_tokens"] == 3
    capsys.readouterr()
    before = out.read_bytes(), open(f"{out}.samples.jsonl").read()
    code, _ = _score(tmp_path, "s.json", "--span", "needle")
    err = capsys.readouterr().err
    assert code == 2 and "span 'answer' there, 'needle' here" in err, err
    code, _ = _score(tmp_path, "s.json", "--no-stem")
    err = capsys.readouterr().err
    assert code == 2 and "rouge_stemmer True there, False here" in err, err
    assert (out.read_bytes(), open(f"{out}.samples.jsonl").read()) == before


def test_compat_public_code_sets_its_flags_and_refuses_contrary_ones(tmp_path, capsys):
    out = tmp_path / "c.json"
    args = ["score", "--model", "tiny-llama", "--lengths", "200", "--depths", "0.5", "--needles",
            "1", "--rouge-gate", "-1", "--compat", "public-code", "--out", str(out)]
    assert main(args) == 0
    lines = [json.loads(l) for l in open(f"{out}.samples.jsonl")]
    s = lines[0]["settings"]
    assert (s["mode"], s["span"], s["rouge_stemmer"], s["max_new_tokens"]) == (
        "sum", "answer", True, 50)
    assert s["prompt"] == "public-code"
    capsys.readouterr()
    for contrary in (["--mode", "paper"], ["--span", "needle"], ["--no-stem"],
                     ["--prompt", "rhlens"], ["--max-new-tokens", "20"]):
        assert main(args + contrary) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--compat public-code sets" in err[0], err
    # a flag given with the preset's own value is fine
    assert main(args + ["--mode", "sum", "--stem"]) == 0
