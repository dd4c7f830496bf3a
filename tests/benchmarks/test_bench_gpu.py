"""``benchmarks/bench_gpu.py`` runs end to end (its ``--tiny`` shape, on the CPU): the GPU record
is made by a script no CI machine can time, so its code path is checked here, not its ratios."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(script):
    return script("benchmarks/bench_gpu.py")


def test_the_tiny_run_writes_every_row_and_the_extrapolated_grid(bench, tmp_path, capsys):
    out = tmp_path / "result.json"
    bench.main(["--tiny", "--lengths", "64", "128", "--batch-lengths", "64", "--batch", "3",
                "--new-tokens", "4", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["length"] for r in result["rows"]] == [64, 128]
    for row in result["rows"]:
        assert row["steps"] == 4 and row["hf_s"] > 0 and row["prefill_s"] > 0
    (batched,) = result["batch_rows"]
    assert batched["batch"] == 3 and batched["steps"] == 4
    assert batched["throughput_ratio"] == pytest.approx(batched["one_at_a_time_s"]
                                                        / batched["rhlens_s"])
    grid = result["paper_grid_minutes"]
    assert grid["extrapolated"] is True and grid["minutes"] > 0
    assert len(grid["lengths"]) == 20 and grid["lengths"][-1] == 80_000 and grid["depths"] == 10
    # the results file names the shape it measured, which rhlens.models.timing matches on
    assert result["config"]["kv_heads"] == bench.TINY["num_key_value_heads"]
    printed = capsys.readouterr().out
    assert "EXTRAPOLATED" in printed and "throughput" in printed


def test_the_grid_extrapolation_uses_the_batch_where_it_is_faster(bench):
    one = [{"length": 1000, "prefill_s": 1.0, "decode_s": 3.2, "steps": 32},
           {"length": 80_000, "prefill_s": 10.0, "decode_s": 6.4, "steps": 32}]
    alone = bench.paper_grid_minutes(one, [])
    # per prompt at 1,000 tokens: 1.0 s prefill + 32 steps x 0.1 s = 4.2 s alone; a batch of
    # 4 that took 8 s gives 2 s a prompt
    batched = bench.paper_grid_minutes(one, [{"length": 1000, "batch": 4, "rhlens_s": 8.0,
                                              "steps": 32}])
    assert batched == pytest.approx(alone - 10 * (4.2 - 2.0) / 60)
