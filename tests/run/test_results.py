"""Score files in the public format, atomic writes and resumable logs."""

import json

import pytest
import torch

from rhlens.errors import UsageError
from rhlens.run.results import atomic_write_text, load_scores, per_sample_scores, scores_to_json
from rhlens.run.samplelog import SampleLog


def test_score_file_roundtrip(tmp_path):
    maps = [torch.tensor([[0.0, 1.0], [0.5, 0.25]]), torch.tensor([[0.0, 0.5], [0.5, 0.75]])]
    data = scores_to_json(maps, 2, 2)
    assert data["0-1"] == [1.0, 0.5]
    path = tmp_path / "s.json"
    atomic_write_text(path, json.dumps(data))
    assert torch.allclose(load_scores(path), torch.stack(maps).mean(0))


def test_per_sample_scores_read_a_score_file(tmp_path):
    x = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "s.json"
    path.write_text(json.dumps(scores_to_json(list(x), 3, 4)))
    back = per_sample_scores(path)
    assert back.shape == (5, 3, 4) and torch.allclose(back, x.double(), atol=1e-6)
    assert torch.allclose(back.mean(0).float(), load_scores(path))
    path.write_text(json.dumps({"0-0": [0.1, 0.2], "0-1": [0.3]}))
    with pytest.raises(UsageError, match="same number of per-sample scores"):
        per_sample_scores(path)
    path.write_text(json.dumps({"0-0": [0.1], "0-2": [0.3]}))      # checked as load_scores
    with pytest.raises(UsageError, match=r"s\.json: the keys span"):
        per_sample_scores(path)


def test_load_scores_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="rhlens score"):
        load_scores(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="no scores"):
        load_scores(bad)
    bad.write_text('{"a-b": [1]}')
    with pytest.raises(ValueError, match="layer-head"):
        load_scores(bad)


def test_sample_log_resumes_and_drops_torn_line(tmp_path):
    path = tmp_path / "run.samples.jsonl"
    log = SampleLog(path, {"model": "m"})
    log.add({"key": "a", "v": 1})
    log.add({"key": "b", "v": 2})
    with open(path, "a") as f:
        f.write('{"key": "c", "v"')  # a crash mid-write
    again = SampleLog(path, {"model": "m"})
    assert "a" in again and "b" in again and "c" not in again
    assert path.read_text().count("\n") == 3
    with pytest.raises(ValueError, match="other settings"):
        SampleLog(path, {"model": "other"})
