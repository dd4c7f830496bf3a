"""No file a command writes may replace a file it reads, nor another of its outputs, however
the path reaches it: the same name, ``..``, a symlink or a hard link. Each case is refused in
one line before the model loads, and the input is left as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rhlens.niah.haystack import NEEDLES, needles_to_json


@pytest.fixture
def needle_file(files):
    path = files / "needles.json"
    path.write_text(needles_to_json(list(NEEDLES[:2])))
    return path


def _link(kind: str, target: Path, link: Path) -> Path:
    """``link`` naming ``target``: ``"same"`` (the path itself), ``"dots"`` (through ``..``),
    ``"symlink"`` or ``"hardlink"``."""
    if kind == "same":
        return target
    if kind == "dots":
        sub = target.parent / "sub"
        sub.mkdir(exist_ok=True)
        return sub / ".." / target.name
    if kind == "symlink":
        link.symlink_to(target)
    else:
        os.link(target, link)
    return link


@pytest.mark.parametrize("how", ["same", "dots", "symlink", "hardlink"])
def test_score_out_never_replaces_the_haystack(files, no_model, one_error, score_args, snapshot, how):
    out = _link(how, files / "hay.txt", files / "out.json")
    before = snapshot(files / "hay.txt")
    line = one_error(*score_args(files, out))
    assert line.startswith("rhlens score: error: --out") and "the haystack (--haystack)" in line
    assert snapshot(files / "hay.txt") == before


def test_score_out_and_plot_never_replace_the_needle_file(files, needle_file, no_model, one_error,
                                                          score_args, snapshot):
    before = snapshot(needle_file)
    link = _link("symlink", needle_file, files / "n.json")
    line = one_error(*score_args(files, link, "--needles", "1", "--needle-file", needle_file))
    assert "the needle file (--needle-file)" in line
    line = one_error(*score_args(files, files / "s.json", "--needle-file", needle_file,
                                 "--plot", _link("hardlink", needle_file, files / "h.png")))
    assert line.startswith("rhlens score: error: --plot") and "the needle file" in line
    assert snapshot(needle_file) == before


def test_score_outputs_never_replace_each_other(files, no_model, one_error, score_args):
    out = files / "s.json"
    line = one_error(*score_args(files, out, "--plot", f"{out}.samples.jsonl"))
    assert line.startswith("rhlens score: error: --plot") and "--out (its sample log)" in line
    line = one_error(*score_args(files, out, "--plot", _link("symlink", out, files / "p.png")))
    assert "--plot" in line and "writes too" in line


def test_score_haystack_folder_files_are_inputs(files, no_model, one_error, score_args, snapshot):
    folder = files / "essays"
    folder.mkdir()
    (folder / "a.txt").write_text((files / "hay.txt").read_text())
    before = snapshot(folder / "a.txt")
    argv = score_args(files, folder / "a.txt")
    argv[argv.index("--haystack") + 1] = folder
    assert "the haystack" in one_error(*argv)
    assert snapshot(folder / "a.txt") == before


def test_score_out_never_replaces_a_local_checkpoint(files, no_model, one_error, score_args):
    ckpt = files / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    argv = score_args(files, ckpt / "config.json")
    argv[argv.index("--model") + 1] = ckpt
    assert "a file of the model (--model)" in one_error(*argv)
    assert json.loads((ckpt / "config.json").read_text()) == {"model_type": "llama"}


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_niah_out_never_replaces_the_score_files_log(files, no_model, one_error, niah_args,
                                                     snapshot, how):
    log = files / "scores.json.samples.jsonl"
    log.write_text(json.dumps({"settings": {"mode": "paper"}}) + "\n")
    before = snapshot(log, files / "scores.json")
    line = one_error(*niah_args(files, _link(how, log, files / "n.csv")))
    assert "the score file's sample log" in line
    line = one_error(*niah_args(files, files / "o.csv", "--plot", _link("symlink", files / "scores.json",
                                                                         files / "k.png")))
    assert line.startswith("rhlens niah: error: --plot") and "the score file" in line
    assert snapshot(log, files / "scores.json") == before


def test_niah_sweep_files_never_replace_an_input(files, needle_file, no_model, one_error, niah_args,
                                                 snapshot):
    out = files / "sweep.csv"
    target = files / "sweep.csv.k0.top.csv"  # the file of K = 0 that the sweep writes
    needle_file.rename(target)
    before = snapshot(target)
    line = one_error(*niah_args(files, out, "--sweep-k", "0,1", "--needle-file", target))
    assert "the per-K files of --sweep-k" in line and "the needle file" in line
    assert snapshot(target) == before


def test_plot_out_never_replaces_its_score_file(files, cli, one_error, snapshot):
    scores = files / "scores.json"
    before = snapshot(scores)
    for how, name in [("symlink", "s.png"), ("hardlink", "h.png"), ("dots", None)]:
        line = one_error("plot", scores, "--out", _link(how, scores, files / (name or "x")))
        assert line.startswith("rhlens plot: error: --out") and "the score file" in line
    log = Path(f"{scores}.samples.jsonl")
    log.write_text("{}\n")
    assert "sample log" in one_error("plot", scores, "--out", _link("symlink", log, files / "l.png"))
    assert snapshot(scores) == before


def test_patch_out_never_replaces_an_input(files, no_model, one_error, snapshot):
    before = snapshot(files / "hay.txt", files / "scores.json")
    base = ["patch", "--model", "tiny-llama", "--lengths", "160", "--depths", "0.5",
            "--haystack", files / "hay.txt", "--scores", files / "scores.json", "--out"]
    assert "the haystack" in one_error(*base, _link("symlink", files / "hay.txt", files / "p.csv"))
    assert "the score file" in one_error(*base, _link("hardlink", files / "scores.json", files / "q.csv"))
    assert snapshot(files / "hay.txt", files / "scores.json") == before
