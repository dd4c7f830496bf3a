"""What a paper model's run takes in time (rhlens.models.timing): measured when
benchmarks/bench_gpu.py left a result for its shape, else estimated, and said which."""

from __future__ import annotations

import json

import pytest

from rhlens.models import timing
from rhlens.niah.grid import Grid


def _bench_result(tmp_path, config, gpu="NVIDIA H100 80GB HBM3"):
    rows = [{"length": 8192, "prefill_s": 1.0, "decode_s": 1.6, "steps": 16},
            {"length": 32768, "prefill_s": 7.0, "decode_s": 3.2, "steps": 16}]
    path = tmp_path / "bench_gpu-x.json"
    path.write_text(json.dumps({"gpu": gpu, "date": "2025-01-01T00:00:00",
                                "config": config, "rows": rows}))
    return path


def test_a_measured_time_says_measured_and_an_estimate_says_estimate(tmp_path):
    llama = {"layers": 32, "heads": 32, "kv_heads": 32, "d_model": 4096, "d_mlp": 11008,
             "vocab": 32000}
    _bench_result(tmp_path, llama)
    grid = Grid([8192, 20480], [0.5], needles=2, max_new_tokens=10)
    line = timing.expected_time("llama-2-7b-80k", grid, folder=tmp_path)
    # per prompt: prefill interpolated (1.0 s at 8192, 4.0 s at 20480) + 10 steps of
    # (0.1 s, 0.15 s): 2 x (1.0 + 1.0) + 2 x (4.0 + 1.5) = 15 s
    minutes = timing.measured_minutes(timing.measured_results("llama-2-7b-80k", tmp_path)[0],
                                         grid)
    assert minutes == pytest.approx(15 / 60)
    assert "measured on NVIDIA H100 80GB HBM3" in line and "estimate" not in line
    # a result of another shape is not this model's: an estimate, said so
    other = timing.expected_time("mistral-7b-v0.2", grid, folder=tmp_path)
    assert "an estimate" in other and "measured" not in other
    assert "an estimate" in timing.expected_time("llama-2-7b-80k", grid,
                                                    folder=tmp_path / "none")
