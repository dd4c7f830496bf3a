"""Bad input through the command line: one-line errors, exit codes, nothing written or damaged,
resume only what is the same run, and no code run from a cache (issue 13).

Every case drives ``rhlens.cli.main.main`` in-process on the tiny random-weight models (or fails
before any model loads); start-up behaviour that only a real process shows runs as one.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import rhlens.models.loading
from rhlens.cli.main import main
from rhlens.errors import FetchError, UsageError
from rhlens.niah.haystack import NEEDLES, needles_to_json
from rhlens.run.results import fetch_text, load_scores, scores_to_json
from rhlens.run.samplelog import SampleLog

HAY = "The river runs past the mill. The baker sells bread at dawn. " * 40
HAY2 = "A cat sat on the mat. The dog barked at night. " * 40
TINY = ["--model", "tiny-llama", "--depths", "0.5", "--max-new-tokens", "2"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the network: the hub and datasets are offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model loads: the error must come before."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(rhlens.models.loading, "load_model", refuse)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "hay.txt").write_text(HAY)
    (tmp_path / "hay2.txt").write_text(HAY2)
    scores = torch.zeros(2, 4)
    scores[1, 1] = 0.9
    (tmp_path / "scores.json").write_text(json.dumps(scores_to_json([scores], 2, 4)))
    return tmp_path


def cli(capsys, *argv):
    """``(exit code, stdout, stderr lines)`` of ``rhlens ARGV``."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.splitlines() if line.strip()]


def _progress_bar(line: str) -> bool:
    return re.search(r"\d+%\|", line) is not None  # tqdm's "retrieval score:  50%|##  | 1/2"


def one_error(capsys, *argv, code=2):
    """Run a failing command; besides progress bars of samples decoded before it failed,
    its stderr is exactly one line, which is returned."""
    rc, _, err = cli(capsys, *argv)
    assert rc == code, err
    err = [line for line in err if not _progress_bar(line)]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def score_args(files, out, *extra):
    return ["score", *TINY, "--lengths", "160", "--needles", "1", "--rouge-gate", "-1",
            "--haystack", files / "hay.txt", "--out", out, *extra]


def niah_args(files, out, *extra):
    return ["niah", *TINY, "--lengths", "160", "--haystack", files / "hay.txt",
            "--scores", files / "scores.json", "--out", out, *extra]


def snapshot(*paths):
    return {str(p): Path(p).read_bytes() for p in paths}


# --------------------------------------------------------------------------- 1. resume


def test_resume_refuses_a_changed_haystack(files, capsys):
    out = files / "run" / "s.json"
    assert cli(capsys, *score_args(files, out))[0] == 0
    before = snapshot(out, f"{out}.samples.jsonl")
    args = score_args(files, out)
    args[args.index(files / "hay.txt")] = files / "hay2.txt"
    line = one_error(capsys, *args)
    assert "another prompt" in line and "haystack" in line and "--out" in line
    assert snapshot(out, f"{out}.samples.jsonl") == before


@pytest.mark.parametrize("field", ["answer", "question", "answer_prefix"])
def test_resume_refuses_an_edited_needle_file(files, capsys, field):
    needle_file = files / "needles.json"
    needle_file.write_text(needles_to_json(list(NEEDLES[:1])))
    out = files / "nf.csv"
    args = ["niah", *TINY, "--lengths", "160", "--haystack", files / "hay.txt",
            "--needle-file", needle_file, "--out", out]
    assert cli(capsys, *args)[0] == 0
    before = snapshot(out, f"{out}.samples.jsonl")
    raw = json.loads(needle_file.read_text())
    # an answer stays a part of the needle's text (else the file is refused when read)
    raw[0][field] = (raw[0][field].split()[-1] if field == "answer"
                     else raw[0][field] + " (edited)")
    needle_file.write_text(json.dumps(raw))
    line = one_error(capsys, *args)
    assert "needle file" in line and "another prompt or answer" in line
    assert snapshot(out, f"{out}.samples.jsonl") == before


def test_needle_file_whose_answer_is_not_in_its_text_is_a_usage_error(files, capsys):
    needle_file = files / "needles.json"
    raw = json.loads(needles_to_json(list(NEEDLES[:2])))
    raw[1]["answer"] = "smoked walrus"  # words of the text, but not contiguous
    needle_file.write_text(json.dumps(raw))
    out = files / "bad.csv"
    line = one_error(capsys, "niah", *TINY, "--lengths", "160", "--haystack", files / "hay.txt",
                     "--needle-file", needle_file, "--out", out)
    assert str(needle_file) in line and "not a contiguous part" in line
    assert not out.exists()


def test_resume_extends_a_grid_and_refuses_other_settings(files, capsys, monkeypatch):
    out = files / "g.csv"
    assert cli(capsys, *niah_args(files, out, "--needles", "1"))[0] == 0
    # same run, one more length: the finished sample is reused, the new one decoded
    assert cli(capsys, *niah_args(files, out, "--needles", "1", "--lengths", "160,200"))[0] == 0
    assert len(pd.read_csv(out)) == 2
    log = f"{out}.samples.jsonl"
    assert len(Path(log).read_text().splitlines()) == 3
    before = snapshot(out, log)
    line = one_error(capsys, *niah_args(files, out, "--needles", "1", "--max-new-tokens", "3"))
    assert "other settings" in line and "max_new_tokens 2 there, 3 here" in line
    line = one_error(capsys, *niah_args(files, out, "--needles", "1", "--mask-top", "1"))
    assert "heads [] there, [[1, 1]] here" in line
    assert snapshot(out, log) == before


def test_resume_refuses_changed_weights_and_dtype(tmp_path):
    from rhlens.intervene.niah import run_niah
    from rhlens.models.tiny import tiny_model
    from rhlens.niah.grid import Grid

    grid = Grid([160], [0.5], NEEDLES[:1], HAY, max_new_tokens=2)
    kw = dict(progress=False, out=tmp_path / "w.csv")
    run_niah(tiny_model("llama", seed=0), grid, **kw)
    with pytest.raises(UsageError, match="weights"):  # a checkpoint whose weights changed
        run_niah(tiny_model("llama", seed=1), grid, **kw)
    half = tiny_model("llama", seed=0)
    half.cfg.dtype = torch.bfloat16  # what a --dtype bfloat16 load records
    with pytest.raises(UsageError, match="dtype 'float32' there, 'bfloat16' here"):
        run_niah(half, grid, **kw)


def test_duplicate_grid_points_count_once(files, capsys):
    out = files / "dup.csv"
    assert cli(capsys, *niah_args(files, out, "--needles", "1", "--lengths", "160,160",
                                  "--depths", "0.5,0.50"))[0] == 0
    assert len(pd.read_csv(out)) == 1
    assert len(Path(f"{out}.samples.jsonl").read_text().splitlines()) == 2
    sc = files / "dup.json"
    assert cli(capsys, *score_args(files, sc, "--lengths", "160,160"))[0] == 0
    assert all(len(v) == 1 for v in json.loads(sc.read_text()).values())


def test_depths_past_print_precision_do_not_collide(files, capsys):
    out = files / "close.csv"
    assert cli(capsys, *niah_args(files, out, "--needles", "1",
                                  "--depths", "0.1234567,0.1234568"))[0] == 0
    assert pd.read_csv(out)["depth"].tolist() == [0.1234567, 0.1234568]
    assert len(Path(f"{out}.samples.jsonl").read_text().splitlines()) == 3


def test_interrupted_run_resumes_byte_identical(files, capsys):
    """Kept behaviour: a run cut after its first sample, rerun, equals an uninterrupted one."""
    full, cut = files / "full.csv", files / "cut.csv"
    args = ["--needles", "1", "--depths", "0.2,0.8"]
    assert cli(capsys, *niah_args(files, full, *args))[0] == 0
    assert cli(capsys, *niah_args(files, cut, *args))[0] == 0
    log = Path(f"{cut}.samples.jsonl")
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]) + '{"key": "to')
    cut.unlink()
    assert cli(capsys, *niah_args(files, cut, *args))[0] == 0
    assert cut.read_bytes() == full.read_bytes()
    sc_full, sc_cut = files / "full.json", files / "cut.json"
    assert cli(capsys, *score_args(files, sc_full, "--depths", "0.2,0.8"))[0] == 0
    assert cli(capsys, *score_args(files, sc_cut, "--depths", "0.2,0.8"))[0] == 0
    log = Path(f"{sc_cut}.samples.jsonl")
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
    assert cli(capsys, *score_args(files, sc_cut, "--depths", "0.2,0.8"))[0] == 0
    assert sc_cut.read_bytes() == sc_full.read_bytes()


# --------------------------------------------------------------------------- 2. bad counts


@pytest.mark.parametrize("extra, message", [
    (["--mask-random", "-3"], "--mask-random must be at least 0, got -3."),
    (["--mask-top", "-1"], "--mask-top must be at least 0, got -1."),
    (["--needles", "-1"], "--needles must be at least 1, got -1."),
    (["--needles", "0"], "--needles must be at least 1, got 0."),
    (["--skip-needles", "-1"], "--skip-needles must be at least 0, got -1."),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0."),
    (["--lengths", "0"], "--lengths must be at least 1, got 0."),
    (["--sweep-k=-1"], "--sweep-k must be 'auto' or a comma-separated list of head counts"),
    (["--mask-top", "9"], "--mask-top: cannot mask 9 heads of a model with 8."),
    (["--mask-random", "8"], "--mask-random: only 7 heads score <= 0.1"),
    (["--sweep-k", "0,8"], "--sweep-k: only 7 heads score <= 0.1"),
    (["--threshold", "nan"], "--threshold must be a finite number"),
    (["--mask-top", "1", "--sweep-k", "1"], "--sweep-k chooses the masked heads itself"),
])
def test_niah_bad_counts_fail_before_the_model_loads(files, capsys, no_model, extra, message):
    out = files / "bad.csv"
    assert message in one_error(capsys, *niah_args(files, out, *extra))
    assert not out.exists() and not Path(f"{out}.samples.jsonl").exists()


@pytest.mark.parametrize("extra, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0."),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be at least 1, got -1."),
    (["--needles", "0"], "--needles must be at least 1, got 0."),
    (["--rouge-gate", "nan"], "--rouge-gate must be a finite number"),
    (["--rouge-gate", "1"], "--rouge-gate must be below 1"),
    (["--lengths", "4090", "--max-new-tokens", "8"],
     "--lengths: a 4090-token prompt plus 8 new tokens exceeds the model's context of 4096"),
])
def test_score_bad_counts_fail_before_the_model_loads(files, capsys, no_model, extra, message):
    out = files / "bad.json"
    assert message in one_error(capsys, *score_args(files, out, *extra))
    assert not out.exists() and not Path(f"{out}.samples.jsonl").exists()


def test_library_refuses_negative_counts(tiny_llama):
    from rhlens.niah.grid import Grid
    from rhlens.score.heads import random_heads

    with pytest.raises(ValueError, match="k must be at least 0"):
        random_heads(torch.zeros(2, 4), -3, seed=0)
    with pytest.raises(UsageError, match="max_new_tokens must be at least 1"):
        Grid([160], [0.5], 1, HAY, max_new_tokens=0)


# --------------------------------------------------------------------------- 3. one-line errors


def test_out_inside_a_regular_file(files, capsys, no_model):
    (files / "afile").write_text("x")
    line = one_error(capsys, *score_args(files, files / "afile" / "s.json"))
    assert "is a file, not a folder" in line and line.startswith("rhlens score: error: --out")
    assert (files / "afile").read_text() == "x"


def test_out_an_existing_directory(files, capsys, no_model):
    (files / "adir").mkdir()
    assert "is a folder; name a file in it" in one_error(capsys, *score_args(files, files / "adir"))
    assert sorted(p.name for p in files.iterdir() if p.name.startswith("adir")) == ["adir"]
    assert list((files / "adir").iterdir()) == []


def test_plot_into_a_missing_folder_is_created(files, capsys):
    png = files / "figs" / "new" / "h.png"
    assert cli(capsys, *score_args(files, files / "p.json", "--plot", png))[0] == 0
    assert png.stat().st_size > 1000


def test_plot_inside_a_file_fails_first(files, capsys, no_model):
    (files / "afile").write_text("x")
    line = one_error(capsys, *score_args(files, files / "p.json", "--plot", files / "afile" / "h.png"))
    assert line.startswith("rhlens score: error: --plot")
    assert not (files / "p.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--dtype", "foo"], "--dtype must be one of float32, bfloat16"),
    (["--device", "gpu0"], "--device must be cpu, cuda or cuda:N"),
])
def test_bad_dtype_and_device(files, capsys, no_model, extra, message):
    out = files / "x.json"
    assert message in one_error(capsys, *score_args(files, out, *extra))
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--sweep-k", "abc"], "--sweep-k must be 'auto' or a comma-separated list"),
    (["--sweep-k", "1", "--seeds", "x"], "--seeds must be a comma-separated list of whole numbers"),
])
def test_bad_lists_fail_before_the_model_loads(files, capsys, no_model, extra, message):
    assert message in one_error(capsys, *niah_args(files, files / "l.csv", *extra))


def test_argparse_errors_are_one_line(capsys):
    line = one_error(capsys, "score", "--lengths", "500,abc")
    assert "comma-separated list of ints" in line and "rhlens score --help" in line


@pytest.mark.parametrize("value, message", [
    ("null", "head '0-0' has null; scores must be numbers"),
    ('"a"', "head '0-0' has \"a\"; scores must be numbers"),
    ("[true]", "head '0-0' has true"),
    ("NaN", "NaN is not a score"),
    ("Infinity", "Infinity is not a score"),
    ("[-Infinity]", "-Infinity is not a score"),
    ("[1e400]", "non-finite score"),
    ("[-0.5]", "negative score (-0.5)"),
])
def test_score_file_values_are_checked(files, capsys, value, message):
    src = files / "bad.json"
    body = ", ".join(f'"{l}-{h}": [0.1]' for l in range(2) for h in range(2) if (l, h) != (0, 0))
    src.write_text('{"0-0": ' + value + ", " + body + "}")
    line = one_error(capsys, "plot", src, "--out", files / "p.png")
    assert str(src) in line and message in line
    assert not (files / "p.png").exists()


@pytest.mark.parametrize("text, message", [
    ('{"0-0": [0.1], "1_0-0": [0.5]}', "key '1_0-0' is not 'layer-head'"),
    ('{"0-0": [0.7], "00-0": [0.1]}', "key '00-0' is not 'layer-head'"),
    ('{"0-0": [0.7], "0-0": [0.1]}', "key '0-0' appears twice"),
    ('{" 0-0": [0.7]}', "is not 'layer-head'"),
    ('{"1000000-1000000": [1]}', "1000001 layers x 1000001 heads but list only 1 of those"),
    ('{"0-0": [0.1], "1-1": [0.2]}', "'0-1' is missing"),
    ("[1, 2]", "holds no scores"),
    ("{", "is not JSON"),
])
def test_score_file_keys_are_checked(files, capsys, text, message):
    src = files / "keys.json"
    src.write_text(text)
    line = one_error(capsys, "plot", src, "--out", files / "p.png")
    assert message in line and str(src) in line


def test_score_file_range_depends_on_its_mode(files, capsys):
    """A paper-mode file lies in [0, 1]; a file of unknown mode (the paper's published files
    are sum-mode, up to ~1.8) only needs finite non-negative numbers."""
    data = {f"{l}-{h}": [0, 0.25, 1.8] if (l, h) == (1, 1) else [0, 0, 0]
            for l in range(2) for h in range(4)}
    published = files / "Published-7B.json"
    published.write_text(json.dumps(data))
    assert cli(capsys, "plot", published, "--out", files / "pub.png")[0] == 0
    assert load_scores(published)[1, 1] == pytest.approx(2.05 / 3)
    ours = files / "ours.json"
    ours.write_text(json.dumps(data))
    Path(f"{ours}.samples.jsonl").write_text(json.dumps({"settings": {"mode": "paper"}}) + "\n")
    assert "above 1, but a paper-mode score lies in [0, 1]" in one_error(
        capsys, "plot", ours, "--out", files / "ours.png")
    Path(f"{ours}.samples.jsonl").write_text(json.dumps({"settings": {"mode": "sum"}}) + "\n")
    assert cli(capsys, "plot", ours, "--out", files / "ours.png")[0] == 0


def test_score_file_of_another_shape_fails_before_the_model_loads(files, capsys, no_model):
    big = files / "smollm2.json"
    big.write_text(json.dumps(scores_to_json([torch.zeros(30, 9)], 30, 9)))
    line = one_error(capsys, *niah_args(files, files / "s.csv", "--scores", big, "--mask-top", "1"))
    assert "scores 30 x 9 heads, but the model has 2 x 4" in line


def test_a_directory_as_score_file(files, capsys):
    (files / "sdir").mkdir()
    assert "is a folder" in one_error(capsys, "plot", files / "sdir", "--out", files / "p.png")
    before = snapshot(files / "scores.json")
    line = one_error(capsys, "plot", files / "scores.json", "--out", files / "scores.json")
    assert "--out must name another file than the score file" in line
    assert snapshot(files / "scores.json") == before


@pytest.fixture
def server(files):
    """An HTTP server on 127.0.0.1 serving ``files``."""
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda *a, **k: None})
    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(files), **k))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_score_url_errors(files, capsys, server):
    line = one_error(capsys, "plot", f"{server}/missing.json", "--out", files / "p.png")
    assert "answered HTTP 404" in line  # a wrong address: usage error
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    line = one_error(capsys, "plot", f"http://127.0.0.1:{port}/s.json", "--out",
                     files / "p.png", code=1)
    assert "Cannot fetch" in line and "refused" in line.lower()
    with pytest.raises(OSError):  # what the book's offline cells catch
        load_scores(f"http://127.0.0.1:{port}/s.json")
    (files / "nan.json").write_text('{"0-0": [NaN]}')  # fetched files are checked too
    assert "NaN is not a score" in one_error(capsys, "plot", f"{server}/nan.json", "--out",
                                             files / "p.png")
    assert cli(capsys, "plot", f"{server}/scores.json", "--out", files / "p.png")[0] == 0


def test_fetch_has_a_size_cap_a_deadline_and_no_downgrade(files, server):
    (files / "big.json").write_text("[" + "0," * 500 + "0]")
    with pytest.raises(UsageError, match="limit of a score file"):
        fetch_text(f"{server}/big.json", max_bytes=100)
    with pytest.raises(UsageError, match="only https"):
        fetch_text("ftp://127.0.0.1/x.json")

    listener = socket.create_server(("127.0.0.1", 0))

    def drip():  # headers, then one byte every 0.2 s: never finishes within the deadline
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(40):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=drip, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(FetchError, match="longer than 1 s"):
        fetch_text(f"http://127.0.0.1:{listener.getsockname()[1]}/slow.json", timeout=1.0)
    assert time.monotonic() - start < 5
    listener.close()

    import urllib.request

    from rhlens.run.results import _NoDowngrade

    req = urllib.request.Request("https://example.org/s.json")
    with pytest.raises(FetchError, match="may only redirect to https"):
        _NoDowngrade().redirect_request(req, None, 302, "Found", {}, "http://example.org/s.json")


def test_hf_haystack_offline_and_malformed(files, capsys, no_model, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    # the offline switches are read when the libraries are imported: set them here too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if hasattr(datasets.config, name):
            monkeypatch.setattr(datasets.config, name, True)
    line = one_error(capsys, *score_args(files, files / "hf.json", "--haystack",
                                         "hf:no-such-org/no-such-dataset"), code=1)
    assert "Cannot load the haystack dataset" in line and "Offline?" in line
    line = one_error(capsys, *score_args(files, files / "hf.json", "--haystack", "hf:"))
    assert line.startswith("rhlens score: error: Haystack 'hf:' names no dataset")
    assert not (files / "hf.json").exists()


def test_sample_log_with_a_bad_header_is_repaired(files, capsys):
    out = files / "h.json"
    Path(f"{out}.samples.jsonl").write_text("[]\n")
    rc, _, err = cli(capsys, *score_args(files, out))
    assert rc == 0 and any("rewrote its damaged header" in line for line in err)
    header = json.loads(Path(f"{out}.samples.jsonl").read_text().splitlines()[0])
    assert header["settings"]["model"] == "tiny-llama"
    Path(f"{out}.samples.jsonl").write_text("")  # empty: header written again
    rc, _, err = cli(capsys, *score_args(files, out))
    assert rc == 0 and any("was empty" in line for line in err)


def test_torn_header_keeps_the_finished_samples(files, capsys, monkeypatch):
    out = files / "t.json"
    assert cli(capsys, *score_args(files, out, "--depths", "0.2,0.8"))[0] == 0
    log = Path(f"{out}.samples.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0][:20] + "\n" + "".join(lines[1:]))  # the header torn
    before = out.read_bytes()

    import rhlens.score.detect

    def boom(*a, **k):
        raise AssertionError("a finished sample was decoded again")

    monkeypatch.setattr(rhlens.score.detect, "score_sample", boom)
    rc, _, err = cli(capsys, *score_args(files, out, "--depths", "0.2,0.8"))
    assert rc == 0 and any("kept 2 finished sample(s)" in line for line in err), err
    assert out.read_bytes() == before
    assert log.read_text().splitlines()[1:] == [l.rstrip("\n") for l in lines[1:]]


def test_torn_header_with_samples_of_another_run_is_refused(files, capsys):
    out = files / "o.json"
    assert cli(capsys, *score_args(files, out))[0] == 0
    log = Path(f"{out}.samples.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("{torn\n" + "".join(lines[1:]))
    before = log.read_bytes()
    line = one_error(capsys, *score_args(files, out, "--max-new-tokens", "3"))
    assert "damaged header" in line and "other settings" in line
    assert log.read_bytes() == before


def test_record_lacking_a_field_is_recomputed(files, capsys):
    out = files / "r.json"
    assert cli(capsys, *score_args(files, out))[0] == 0
    before = out.read_bytes()
    log = Path(f"{out}.samples.jsonl")
    header, record = log.read_text().splitlines()
    rec = json.loads(record)
    del rec["scores"]
    log.write_text(header + "\n" + json.dumps(rec) + "\n")
    rc, _, err = cli(capsys, *score_args(files, out))
    assert rc == 0 and any("dropped line 2 (no 'scores')" in line for line in err)
    assert out.read_bytes() == before  # recomputed to the same result


def test_runtime_failures_exit_1(files, capsys, monkeypatch):
    line = one_error(capsys, "score", *TINY, "--lengths", "160", "--needles", "1",
                     "--haystack", files / "hay.txt", "--out", files / "gate.json", code=1)
    assert "passed the ROUGE-1 recall gate" in line
    assert not (files / "gate.json").exists()

    import rhlens.viz.plots

    def bug(*a, **k):
        raise TypeError("a bug")

    monkeypatch.setattr(rhlens.viz.plots, "plot_scores", bug)
    line = one_error(capsys, "plot", files / "scores.json", "--out", files / "p.png", code=1)
    assert "internal error: TypeError: a bug" in line and "RHLENS_TRACEBACK=1" in line


def test_ctrl_c_during_start_up_is_one_line(files):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhlens", *map(str, score_args(files, files / "c.json"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # until torch is being loaded
        try:
            if "libtorch" in maps.read_text():
                break
        except OSError:
            time.sleep(1.0)  # no /proc: the imports take seconds anyway
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(lines) == 1 and "interrupted" in lines[0], err


# --------------------------------------------------------------------------- 4. inputs accepted


def test_binary_haystack_and_needle_files_are_refused(files, capsys, no_model):
    (files / "bin.txt").write_bytes(bytes(range(256)) * 40)
    line = one_error(capsys, *score_args(files, files / "b.json", "--haystack", files / "bin.txt"))
    assert "is not text" in line and "bin.txt" in line
    (files / "zeros.txt").write_bytes(b"\0" * 1000)  # valid UTF-8, but not text
    assert "is not text" in one_error(
        capsys, *score_args(files, files / "b.json", "--haystack", files / "zeros.txt"))
    (files / "bin.json").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    line = one_error(capsys, *score_args(files, files / "b.json", "--needle-file", files / "bin.json"))
    assert "Needle file" in line and "is not text" in line
    assert not (files / "b.json").exists()


@pytest.mark.parametrize("content, message", [
    ([], "holds no needles"),
    ([{"text": "A fact.", "question": "Q?", "answer": "fact"}] * 2, "twice"),
    ([{"text": 5, "question": "Q?", "answer": "a"}], "'text' must be a string"),
    ({"text": "A"}, "not a needle file"),
])
def test_bad_needle_files(files, capsys, no_model, content, message):
    (files / "n.json").write_text(json.dumps(content))
    assert message in one_error(capsys, *score_args(files, files / "n.json.out",
                                                    "--needle-file", files / "n.json"))


def test_needle_file_that_is_a_folder(files, capsys, no_model):
    assert "is a folder" in one_error(capsys, *score_args(files, files / "o.json",
                                                          "--needle-file", files))


def test_unknown_model_fails_fast(files, capsys):
    start = time.monotonic()
    line = one_error(capsys, *score_args(files, files / "m.json", "--model", "no-org/no-model"))
    assert time.monotonic() - start < 10
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in line and "tiny-llama" in line
    line = one_error(capsys, *score_args(files, files / "m.json", "--model", "./no/such/dir"))
    assert "no such file or folder" in line
    line = one_error(capsys, *score_args(files, files / "m.json", "--model", "llama-2-7b-80k"))
    assert "yaofu/llama-2-7b-80k" in line and "not in the Hugging Face cache" in line
    assert not (files / "m.json").exists()


# --------------------------------------------------------------------------- 5. files, security


class _Payload:
    """Unpickling this calls :func:`_ran`: what a planted cache file could do."""

    def __reduce__(self):
        return (_ran, ())


RAN: list[int] = []


def _ran():
    RAN.append(1)
    return {}


def test_toy_cache_loads_weights_only(tmp_path, monkeypatch):
    from rhlens.toy import recipes

    path = tmp_path / "toy" / "entry.pt"
    state = {"w": torch.arange(4.0)}
    import numpy as np

    history = {"step": [np.int64(0), np.int64(10)], "loss": [np.float64(2.5), 1.0]}
    recipes.save_cached(path, {"state": state, "history": history, "checkpoints": {0: state}})
    assert [p.name for p in path.parent.iterdir()] == ["entry.pt"]  # no temporary left
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    saved = recipes.load_cached(path)
    assert calls and calls[0]["weights_only"] is True
    assert torch.equal(saved["state"]["w"], state["w"]) and saved["history"]["step"] == [0, 10]
    # a planted file that would run code is refused, and nothing runs
    torch.save({"state": {}, "history": _Payload(), "checkpoints": {}}, path)
    assert recipes.load_cached(path) is None and RAN == []


def test_toy_cache_writes_race_safely(tmp_path):
    from rhlens.toy import recipes

    path = tmp_path / "race.pt"
    entry = {"state": {"w": torch.zeros(1000)}, "history": {"step": [0]}, "checkpoints": {}}
    errors = []

    def write():
        try:
            for _ in range(5):
                recipes.save_cached(path, entry)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and recipes.load_cached(path) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["race.pt"]


def test_result_files_follow_the_umask(files, capsys):
    old = os.umask(0o022)
    try:
        out, csv = files / "u.json", files / "u.csv"
        assert cli(capsys, *score_args(files, out))[0] == 0
        assert cli(capsys, *niah_args(files, csv, "--needles", "1"))[0] == 0
        for p in (out, f"{out}.samples.jsonl", csv, f"{csv}.samples.jsonl"):
            assert Path(p).stat().st_mode & 0o777 == 0o644, p
        os.chmod(out, 0o640)  # a file the user restricted keeps its mode when rewritten
        Path(f"{out}.samples.jsonl").unlink()
        assert cli(capsys, *score_args(files, out))[0] == 0
        assert out.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_sweep_files_are_documented_and_negative_seeds_do_not_share_one(files, capsys):
    rc, out, _ = cli(capsys, "niah", "--help")
    assert rc == 0 and "OUT.kK.randomSEED.csv" in " ".join(out.split())
    sweep = files / "sw.csv"
    assert cli(capsys, *niah_args(files, sweep, "--needles", "1", "--sweep-k", "1",
                                  "--seeds=-1,-2,-2"))[0] == 0
    names = sorted(p.name for p in files.iterdir() if p.name.startswith("sw.csv.k1"))
    assert names == ["sw.csv.k1.random-1.csv", "sw.csv.k1.random-1.csv.samples.jsonl",
                     "sw.csv.k1.random-2.csv", "sw.csv.k1.random-2.csv.samples.jsonl",
                     "sw.csv.k1.top.csv", "sw.csv.k1.top.csv.samples.jsonl"]
    df = pd.read_csv(sweep)
    assert sorted(df[df.kind == "random"].seed) == [-2, -1]


def test_exit_codes_are_documented(capsys):
    rc, out, _ = cli(capsys, "--help")
    assert rc == 0 and "exit codes:" in out and "130" in out
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "| exit code |" in readme


def test_sample_log_api_repairs_and_refuses(tmp_path, capsys):
    path = tmp_path / "a.samples.jsonl"
    log = SampleLog(path, {"model": "m"})
    log.add({"key": "n|160|0.5|aaaa", "needle": "n", "length": 160, "depth": 0.5})
    with pytest.raises(UsageError, match="another prompt or answer"):
        SampleLog(path, {"model": "m"}).check_keys(["n|160|0.5|bbbb"])
    SampleLog(path, {"model": "m"}).check_keys(["n|160|0.5|aaaa", "n|200|0.5|cccc"])
    old = '{"settings": {"model": "m"}}\n{"key": "x"}\n'  # an older rhlens: moved aside
    path.write_text(old)
    log = SampleLog(path, {"model": "m"})
    assert "older rhlens" in capsys.readouterr().err and log.records == {}
    assert Path(f"{path}.old").read_text() == old
    assert json.loads(path.read_text())["settings"]["log_format"] == 2


@pytest.mark.slow
def test_embedded_model_facts_match_the_loaded_model(smollm2):
    from rhlens.models.available import model_facts

    facts = model_facts("smollm2-135m")
    assert (facts["n_layers"], facts["n_heads"], facts["n_ctx"]) == (
        smollm2.cfg.n_layers, smollm2.cfg.n_heads, smollm2.cfg.n_ctx)


# --------------------------------------------------------------------------- scale-out flags


@pytest.mark.parametrize("extra, message", [
    (["--device-map", "auto", "--device", "cpu"],
     "--device-map places the model itself; leave out --device (or --device-map)."),
    (["--shard", "2/2"], "--shard 2/2 does not exist: write i/n with 0 <= i < n"),
    (["--shard", "1of2"], "--shard '1of2' is not i/n"),
])
def test_scale_out_flags_fail_before_the_model_loads(files, capsys, no_model, extra, message):
    for args in (score_args(files, files / "s.json", *extra),
                 niah_args(files, files / "n.csv", *extra)):
        assert message in one_error(capsys, *args)


def test_device_map_needs_accelerate(files, capsys, no_model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real(name, *a))
    err = one_error(capsys, *score_args(files, files / "s.json", "--device-map", "auto"))
    assert err.endswith("--device-map needs accelerate: `pip install accelerate` (or `pip "
                        "install 'rhlens[gpu]'`).")
    err = one_error(capsys, *score_args(files, files / "s.json", "--device-map", "everywhere"))
    assert "invalid choice: 'everywhere'" in err


def test_merge_usage_errors_are_one_line(files, capsys):
    assert "required: --out" in one_error(capsys, "merge", files / "a.json")
    assert "the following arguments are required: SHARD_FILE" in one_error(
        capsys, "merge", "--out", files / "m.json")
    (files / "bad.json.samples.jsonl").write_text("not json\n")
    err = one_error(capsys, "merge", "--out", files / "m.json", files / "bad.json")
    assert "has no readable header" in err
