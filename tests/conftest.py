"""Shared fixtures: tiny random-weight models of every architecture, the embedded model, and
what the command-line tests share (offline, a folder of input files, running ``rhlens``)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

import rhlens.models.loading
from rhlens.cli.main import main
from rhlens.models.loading import load_model
from rhlens.models.registry import ARCHITECTURES
from rhlens.models.tiny import tiny_model
from rhlens.run.results import scores_to_json

torch.set_grad_enabled(False)

#: Haystacks of plain sentences: short prompts, the same every run.
HAY = "The river runs past the mill. The baker sells bread at dawn. " * 40
HAY2 = "A cat sat on the mat. The dog barked at night. " * 40


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny(request):
    """A 2-layer random-weight model of each architecture (Llama, Mistral, Qwen2, Mixtral)."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def script():
    """Load a script of the repository (``benchmarks/...``, ``scripts/...``) as a module, fresh
    at each call: ``script("benchmarks/bench_gpu.py")``."""
    root = Path(__file__).resolve().parents[1]

    def load(relative: str):
        path = root / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None, f"no script at {relative}"
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (loaded once per test session)."""
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the network (the hub and datasets are offline), and none runs as a
    launcher's rank unless it says so."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def hay() -> str:
    return HAY


@pytest.fixture
def detector_maps() -> dict[str, torch.Tensor]:
    """Three detectors' maps of a 2-layer, 4-head model (seeded): the copy-paste map has two
    retrieval heads (> 0.1) and a near-threshold one, the others are random."""
    g = torch.Generator().manual_seed(0)
    maps = {d: torch.rand(2, 4, generator=g, dtype=torch.float64) for d in
            ("copy_paste", "query_focus", "logit_contribution")}
    maps["copy_paste"] = torch.tensor([[0.0, 0.6, 0.0, 0.05], [0.3, 0.0, 0.0, 0.0]],
                                      dtype=torch.float64)
    return maps


@pytest.fixture
def files(tmp_path):
    """A folder with two haystacks (``hay.txt``, ``hay2.txt``) and the score file of a
    2-layer x 4-head model whose one retrieval head is L1H1 (``scores.json``)."""
    (tmp_path / "hay.txt").write_text(HAY)
    (tmp_path / "hay2.txt").write_text(HAY2)
    scores = torch.zeros(2, 4)
    scores[1, 1] = 0.9
    (tmp_path / "scores.json").write_text(json.dumps(scores_to_json([scores], 2, 4)))
    return tmp_path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model loads: the error must come before."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(rhlens.models.loading, "load_model", refuse)


def _progress_bar(line: str) -> bool:
    return re.search(r"\d+%\|", line) is not None  # tqdm's "retrieval score:  50%|##  | 1/2"


@pytest.fixture
def cli(capsys):
    """``cli(*argv)``: ``(exit code, stdout, stderr lines)`` of ``rhlens ARGV``, progress bars
    left out."""
    def run(*argv):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, [line for line in err.splitlines()
                         if line.strip() and not _progress_bar(line)]
    return run


@pytest.fixture
def one_error(cli):
    """``one_error(*argv, code=2)``: run a failing command; its stderr (progress bars of
    samples decoded before it failed aside) is exactly one line, without a traceback, which
    is returned."""
    def run(*argv, code=2):
        rc, _, err = cli(*argv)
        assert rc == code, err
        assert len(err) == 1, err
        assert "Traceback" not in err[0]
        return err[0]
    return run


#: Flags of a fast command on the tiny Llama: one depth, two new tokens.
TINY_FLAGS = ["--model", "tiny-llama", "--depths", "0.5", "--max-new-tokens", "2"]


@pytest.fixture
def tiny_flags() -> list[str]:
    return list(TINY_FLAGS)


@pytest.fixture
def score_args():
    """``score_args(files, out, *extra)``: a one-sample ``rhlens score`` on the tiny Llama."""
    def build(files, out, *extra):
        return ["score", *TINY_FLAGS, "--lengths", "160", "--needles", "1", "--rouge-gate", "-1",
                "--haystack", files / "hay.txt", "--out", out, *extra]
    return build


@pytest.fixture
def niah_args():
    """``niah_args(files, out, *extra)``: an ``rhlens niah`` run on the tiny Llama, ranked by
    ``files / "scores.json"``."""
    def build(files, out, *extra):
        return ["niah", *TINY_FLAGS, "--lengths", "160", "--haystack", files / "hay.txt",
                "--scores", files / "scores.json", "--out", out, *extra]
    return build


@pytest.fixture
def snapshot():
    """``snapshot(*paths)``: the files' bytes, to show a refused command changed nothing."""
    return lambda *paths: {str(p): Path(p).read_bytes() for p in paths}
