"""Inputs that never end: a FIFO nobody writes to, a device, a file of endless zeros or one far
too large, given as any file a command reads, is refused in one line (before the model loads),
never read until the run hangs or runs out of memory."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

#: The caps rhlens states (rhlens.files): 64 MiB for an input, 1 GiB for a sample log.
MAX_BYTES, MAX_LOG_BYTES = 64 * 2**20, 2**30


@pytest.fixture(autouse=True)
def deadline():
    """A read that blocks fails the test after 20 s instead of hanging the suite."""
    def expire(*_):
        raise TimeoutError("the command blocked on its input")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def endless(files: Path, kind: str, name: str, cap: int = MAX_BYTES) -> Path:
    """``files/name`` as a FIFO without a writer, a symlink to ``/dev/zero``, or a sparse file
    one byte over ``cap``."""
    path = files / name
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as f:
            f.truncate(cap + 1)
    return path


KINDS = ["fifo", "zero", "huge"]
WHY = {"fifo": "is a FIFO (named pipe), not a regular file", "zero": "is a character device",
       "huge": "is over 64 MiB"}


@pytest.mark.parametrize("kind", KINDS)
def test_score_file(files, cli, one_error, kind):
    scores = endless(files, kind, "endless.json")
    assert WHY[kind] in one_error("plot", scores, "--out", files / "p.png")
    assert not (files / "p.png").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_needle_file(files, no_model, one_error, score_args, kind):
    needles = endless(files, kind, "needles.json")
    line = one_error(*score_args(files, files / "s.json", "--needle-file", needles))
    assert WHY[kind] in line and "Needle file" in line


@pytest.mark.parametrize("kind", KINDS)
def test_haystack(files, no_model, one_error, score_args, kind):
    argv = score_args(files, files / "s.json")
    argv[argv.index("--haystack") + 1] = endless(files, kind, "hay.txt")
    line = one_error(*argv)
    assert WHY[kind] in line and "Haystack" in line


@pytest.mark.parametrize("kind", KINDS)
def test_score_files_sample_log(files, no_model, one_error, niah_args, kind):
    """``rhlens niah`` reads the scores' log for the needles it must leave out."""
    endless(files, kind, "scores.json.samples.jsonl", MAX_LOG_BYTES)
    line = one_error(*niah_args(files, files / "n.csv"))
    assert "Sample log" in line and ("over 1 GiB" if kind == "huge" else WHY[kind]) in line


def test_resume_log(files, no_model, monkeypatch, one_error, score_args):
    """The run's own log (``OUT.samples.jsonl``) is read to resume: a FIFO there is refused."""
    import rhlens.models.loading
    from rhlens.models.tiny import tiny_model

    monkeypatch.setattr(rhlens.models.loading, "load_model", lambda *a, **k: tiny_model("llama"))
    endless(files, "fifo", "s.json.samples.jsonl")
    assert "is a FIFO (named pipe); remove it" in one_error(*score_args(files, files / "s.json"))


