"""Bad input through the command line: one-line errors naming the flag, exit codes, and nothing
written or loaded before the error.

Every case drives ``rhlens.cli.main.main`` in-process on the tiny random-weight models (or fails
before any model loads); start-up behaviour that only a real process shows runs as one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rhlens.cli.main import main
from rhlens.errors import UsageError

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
    (["--batch-size", "0"], "--batch-size must be a whole number of at least 1 or 'auto', got 0"),
    (["--batch-size", "four"], "--batch-size must be a whole number of at least 1 or 'auto', got 'four'"),
])
def test_niah_bad_counts_fail_before_the_model_loads(files, no_model, extra, message, one_error, niah_args):
    out = files / "bad.csv"
    assert message in one_error(*niah_args(files, out, *extra))
    assert not out.exists() and not Path(f"{out}.samples.jsonl").exists()


@pytest.mark.parametrize("extra, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0."),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be at least 1, got -1."),
    (["--needles", "0"], "--needles must be at least 1, got 0."),
    (["--rouge-gate", "nan"], "--rouge-gate must be a finite number"),
    (["--rouge-gate", "1"], "--rouge-gate must be below 1"),
    (["--batch-size", "0"], "--batch-size must be a whole number of at least 1"),
    (["--lengths", "4090", "--max-new-tokens", "8"],
     "--lengths: a 4090-token prompt plus 8 new tokens exceeds the model's context of 4096"),
])
def test_score_bad_counts_fail_before_the_model_loads(files, no_model, extra, message, one_error, score_args):
    out = files / "bad.json"
    assert message in one_error(*score_args(files, out, *extra))
    assert not out.exists() and not Path(f"{out}.samples.jsonl").exists()


def test_library_refuses_negative_counts(tiny_llama, hay):
    from rhlens.niah.grid import Grid
    from rhlens.score.heads import random_heads

    with pytest.raises(ValueError, match="k must be at least 0"):
        random_heads(torch.zeros(2, 4), -3, seed=0)
    with pytest.raises(UsageError, match="max_new_tokens must be at least 1"):
        Grid([160], [0.5], 1, hay, max_new_tokens=0)


# --------------------------------------------------------------------------- 3. one-line errors


def test_out_inside_a_regular_file(files, no_model, one_error, score_args):
    (files / "afile").write_text("x")
    line = one_error(*score_args(files, files / "afile" / "s.json"))
    assert "is a file, not a folder" in line and line.startswith("rhlens score: error: --out")
    assert (files / "afile").read_text() == "x"


def test_out_an_existing_directory(files, no_model, one_error, score_args):
    (files / "adir").mkdir()
    assert "is a folder; name a file in it" in one_error(*score_args(files, files / "adir"))
    assert sorted(p.name for p in files.iterdir() if p.name.startswith("adir")) == ["adir"]
    assert list((files / "adir").iterdir()) == []


def test_plot_into_a_missing_folder_is_created(files, cli, score_args):
    png = files / "figs" / "new" / "h.png"
    assert cli(*score_args(files, files / "p.json", "--plot", png))[0] == 0
    assert png.stat().st_size > 1000


def test_plot_inside_a_file_fails_first(files, no_model, one_error, score_args):
    (files / "afile").write_text("x")
    line = one_error(*score_args(files, files / "p.json", "--plot", files / "afile" / "h.png"))
    assert line.startswith("rhlens score: error: --plot")
    assert not (files / "p.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--dtype", "foo"], "--dtype must be one of float32, bfloat16"),
    (["--device", "gpu0"], "--device must be cpu, cuda or cuda:N"),
])
def test_bad_dtype_and_device(files, no_model, extra, message, one_error, score_args):
    out = files / "x.json"
    assert message in one_error(*score_args(files, out, *extra))
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--sweep-k", "abc"], "--sweep-k must be 'auto' or a comma-separated list"),
    (["--sweep-k", "1", "--seeds", "x"], "--seeds must be a comma-separated list of whole numbers"),
])
def test_bad_lists_fail_before_the_model_loads(files, no_model, extra, message, one_error, niah_args):
    assert message in one_error(*niah_args(files, files / "l.csv", *extra))


def test_argparse_errors_are_one_line(one_error):
    line = one_error("score", "--lengths", "500,abc")
    assert "comma-separated list of ints" in line and "rhlens score --help" in line


def test_hf_haystack_offline_and_malformed(files, no_model, monkeypatch, one_error, score_args):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    # the offline switches are read when the libraries are imported: set them here too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if hasattr(datasets.config, name):
            monkeypatch.setattr(datasets.config, name, True)
    line = one_error(*score_args(files, files / "hf.json", "--haystack",
                                         "hf:no-such-org/no-such-dataset"), code=1)
    assert "Cannot load the haystack dataset" in line and "Offline?" in line
    line = one_error(*score_args(files, files / "hf.json", "--haystack", "hf:"))
    assert line.startswith("rhlens score: error: Haystack 'hf:' names no dataset")
    assert not (files / "hf.json").exists()


def test_runtime_failures_exit_1(files, monkeypatch, one_error, tiny_flags):
    line = one_error("score", *tiny_flags, "--lengths", "160", "--needles", "1",
                     "--haystack", files / "hay.txt", "--out", files / "gate.json", code=1)
    assert "passed the ROUGE-1 recall gate" in line
    assert not (files / "gate.json").exists()

    import rhlens.viz.plots

    def bug(*a, **k):
        raise TypeError("a bug")

    monkeypatch.setattr(rhlens.viz.plots, "plot_scores", bug)
    line = one_error("plot", files / "scores.json", "--out", files / "p.png", code=1)
    assert "internal error: TypeError: a bug" in line and "RHLENS_TRACEBACK=1" in line
    for off in ("0", "", "no", "false"):  # only a value that says so shows the traceback
        monkeypatch.setenv("RHLENS_TRACEBACK", off)
        assert "a bug" in one_error("plot", files / "scores.json", "--out", files / "p.png", code=1)
    monkeypatch.setenv("RHLENS_TRACEBACK", "1")
    with pytest.raises(TypeError, match="a bug"):
        main(["plot", str(files / "scores.json"), "--out", str(files / "p.png")])


def test_ctrl_c_during_start_up_is_one_line(files, score_args):
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


def test_ctrl_c_swallowed_by_a_library_still_stops_the_command(files, score_args, monkeypatch,
                                                              capsys):
    """A library that catches everything while it loads (``except BaseException``) can swallow
    Ctrl-C's KeyboardInterrupt; the command remembers the press and stops once the model has
    loaded, before any sample, with its one line and exit code 130."""
    import rhlens.models.loading as loading

    real = loading.load_model

    def swallowing_load(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the library loads
            time.sleep(1)  # the handler runs here
        except BaseException:  # noqa: BLE001 (the library's catch-all)
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load_model", swallowing_load)
    before = signal.getsignal(signal.SIGINT)
    out = files / "swallowed.json"
    assert main([str(a) for a in score_args(files, out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists() and not Path(f"{out}.samples.jsonl").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the command's handler is gone again


# --------------------------------------------------------------------------- 4. inputs accepted


def test_binary_haystack_and_needle_files_are_refused(files, no_model, one_error, score_args):
    (files / "bin.txt").write_bytes(bytes(range(256)) * 40)
    line = one_error(*score_args(files, files / "b.json", "--haystack", files / "bin.txt"))
    assert "is not text" in line and "bin.txt" in line
    (files / "zeros.txt").write_bytes(b"\0" * 1000)  # valid UTF-8, but not text
    assert "is not text" in one_error(*score_args(files, files / "b.json", "--haystack", files / "zeros.txt"))
    (files / "bin.json").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    line = one_error(*score_args(files, files / "b.json", "--needle-file", files / "bin.json"))
    assert "Needle file" in line and "is not text" in line
    assert not (files / "b.json").exists()


@pytest.mark.parametrize("content, message", [
    ([], "holds no needles"),
    ([{"text": "A fact.", "question": "Q?", "answer": "fact"}] * 2, "twice"),
    ([{"text": 5, "question": "Q?", "answer": "a"}], "'text' must be a string"),
    ({"text": "A"}, "not a needle file"),
])
def test_bad_needle_files(files, no_model, content, message, one_error, score_args):
    (files / "n.json").write_text(json.dumps(content))
    assert message in one_error(*score_args(files, files / "n.json.out",
                                                    "--needle-file", files / "n.json"))


def test_needle_file_that_is_a_folder(files, no_model, one_error, score_args):
    assert "is a folder" in one_error(*score_args(files, files / "o.json",
                                                          "--needle-file", files))


def test_unknown_model_fails_fast(files, one_error, score_args):
    start = time.monotonic()
    line = one_error(*score_args(files, files / "m.json", "--model", "no-org/no-model"))
    assert time.monotonic() - start < 10
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in line and "tiny-llama" in line
    line = one_error(*score_args(files, files / "m.json", "--model", "./no/such/dir"))
    assert "no such file or folder" in line
    line = one_error(*score_args(files, files / "m.json", "--model", "llama-2-7b-80k"))
    assert "yaofu/llama-2-7b-80k" in line and "not in the Hugging Face cache" in line
    assert not (files / "m.json").exists()


def test_exit_codes_are_documented(cli):
    rc, out, _ = cli("--help")
    assert rc == 0 and "exit codes:" in out and "130" in out
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "| exit code |" in readme


# --------------------------------------------------------------------------- scale-out flags


@pytest.mark.parametrize("extra, message", [
    (["--device-map", "auto", "--device", "cpu"],
     "--device-map places the model itself; leave out --device (or --device-map)."),
    (["--shard", "2/2"], "--shard 2/2 does not exist: write i/n with 0 <= i < n"),
    (["--shard", "1of2"], "--shard '1of2' is not i/n"),
])
def test_scale_out_flags_fail_before_the_model_loads(files, no_model, extra, message, one_error, score_args, niah_args):
    for args in (score_args(files, files / "s.json", *extra),
                 niah_args(files, files / "n.csv", *extra)):
        assert message in one_error(*args)


def test_device_map_needs_accelerate(files, no_model, monkeypatch, one_error, score_args):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real(name, *a))
    err = one_error(*score_args(files, files / "s.json", "--device-map", "auto"))
    assert err.endswith("--device-map needs accelerate: `pip install accelerate` (or `pip "
                        "install 'rhlens[gpu]'`).")
    err = one_error(*score_args(files, files / "s.json", "--device-map", "everywhere"))
    assert "invalid choice: 'everywhere'" in err


def test_merge_usage_errors_are_one_line(files, one_error):
    assert "required: --out" in one_error("merge", files / "a.json")
    assert "the following arguments are required: SHARD_FILE" in one_error("merge", "--out", files / "m.json")
    (files / "bad.json.samples.jsonl").write_text("not json\n")
    err = one_error("merge", "--out", files / "m.json", files / "bad.json")
    assert "has no readable header" in err


@pytest.mark.parametrize("flag, value", [("--seed", str(2**64)), ("--seed", str(-(2**63) - 1)),
                                         ("--seeds", f"0,{2**70}")])
def test_seeds_torch_cannot_take_are_named_before_the_model(files, no_model, one_error, niah_args,
                                                            flag, value):
    extra = ["--mask-random", "1"] if flag == "--seed" else ["--sweep-k", "1"]
    line = one_error(*niah_args(files, files / "n.csv", flag, value, *extra))
    assert line.startswith(f"rhlens niah: error: {flag} must be at")


@pytest.mark.parametrize("command", ["score", "niah"])
def test_max_new_tokens_beyond_the_context_is_blamed_on_itself(files, no_model, one_error,
                                                               score_args, niah_args, command):
    build = score_args if command == "score" else niah_args
    line = one_error(*build(files, files / "o.out", "--max-new-tokens", str(10**9)))
    assert line.startswith(f"rhlens {command}: error: --max-new-tokens 1000000000 leaves no room")


def test_out_ending_in_a_slash_is_refused_before_anything_is_written(files, no_model, one_error,
                                                                   score_args, niah_args):
    for argv in (score_args(files, f"{files}/new/"), niah_args(files, f"{files}/new/"),
                 ["plot", files / "scores.json", "--out", f"{files}/new/"]):
        line = one_error(*argv)
        assert "--out" in line and "names a folder (it ends in /)" in line
    assert not (files / "new").exists()
