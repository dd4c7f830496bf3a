"""The book's model switch (rhlens.book.runtime): which branch a chapter takes, on which model."""

from __future__ import annotations

import pytest

from rhlens.book.runtime import (
    MEMORY_GB,
    STANDIN_LENGTHS,
    chapter_runtime,
    estimate_minutes,
    model_menu,
    shrink,
)
from rhlens.errors import UsageError
from rhlens.models.registry import PAPER_MODELS
from rhlens.niah.grid import Grid

PAPER_GRID = Grid([1000, 8000, 32000], [0.0, 0.5, 1.0], needles=3, max_new_tokens=24)
CPU_GRID = Grid([500], [0.5], needles=2)


def test_cpu_without_a_name_runs_the_embedded_model():
    rt = chapter_runtime(paper="llama-2-7b-80k", env={}, gpu=None)
    assert (rt.model, rt.kind, rt.paper, rt.standin) == ("smollm2-135m", "embedded", False, False)
    assert rt.grid(paper=PAPER_GRID, cpu=CPU_GRID) is CPU_GRID
    assert rt.pick(paper=50, cpu=10) == 10
    assert rt.rouge_gate == 0.5 and rt.expect(PAPER_GRID) == ""


def test_a_gpu_runs_the_chapters_paper_model_with_its_full_grid():
    rt = chapter_runtime(paper="mistral-7b-v0.2", env={}, gpu=("NVIDIA H100 80GB HBM3", 80))
    assert (rt.model, rt.kind, rt.paper, rt.checkpoint) == ("mistral-7b-v0.2", "paper", True, True)
    assert rt.grid(paper=PAPER_GRID, cpu=CPU_GRID) is PAPER_GRID
    assert rt.load_in_4bit is None and rt.max_tokens is None
    assert "H100" in rt.expect(PAPER_GRID) and "27 prompts" in rt.expect(PAPER_GRID)


def test_a_t4_loads_4bit_and_caps_prompts_at_8k():
    rt = chapter_runtime(paper="llama-2-7b-80k", env={}, gpu=("Tesla T4", 15.8))
    assert rt.load_in_4bit is True and rt.max_tokens == 8000
    assert rt.grid(paper=PAPER_GRID, cpu=CPU_GRID).lengths == (1000, 8000)
    assert rt.lengths(paper=[2000, 32000], cpu=[500]) == [2000, 8000]
    assert "4-bit" in rt.describe() and "8000 tokens" in rt.describe()
    assert "huggingface-cli login" not in rt.describe()          # yaofu/llama-2-7b-80k is open
    gated = chapter_runtime("mistral-7b-instruct-v0.2", paper="llama-2-7b-80k", env={},
                            gpu=("Tesla T4", 15.8))
    assert "huggingface-cli login" in gated.describe()


def test_the_environment_names_the_model_and_a_stand_in_takes_the_paper_branch():
    rt = chapter_runtime(paper="llama-2-7b-80k", env={"RHLENS_MODEL": "tiny-mixtral-8x7b"}, gpu=None)
    assert (rt.kind, rt.paper, rt.standin, rt.checkpoint, rt.key) == (
        "standin", True, True, False, "mixtral-8x7b")
    grid = rt.grid(paper=PAPER_GRID, cpu=CPU_GRID)
    assert grid.lengths == STANDIN_LENGTHS and grid.depths == (0.0, 1.0)
    assert grid.needles == PAPER_GRID.needles and grid.max_new_tokens == 8
    assert rt.rouge_gate < 0                      # random weights pass no gate
    assert rt.pick(paper=50, cpu=10, standin=4) == 4 and rt.pick(paper=50, cpu=10) == 50
    assert "meaningless" in rt.describe()


def test_a_name_in_the_cell_beats_the_environment():
    rt = chapter_runtime("qwen1.5-14b", paper="llama-2-7b-80k", env={"RHLENS_MODEL": "tiny-llama"},
                         gpu=("NVIDIA A100-SXM4-40GB", 40))
    assert rt.model == "qwen1.5-14b" and rt.paper
    assert rt.load_in_4bit is True               # 14B in bf16 needs 48 GB


def test_bad_switches_fail_in_one_line():
    with pytest.raises(UsageError, match="RHLENS_MODEL is set but empty"):
        chapter_runtime(paper="llama-2-7b-80k", env={"RHLENS_MODEL": " "}, gpu=None)
    with pytest.raises(UsageError, match="not a paper model"):
        chapter_runtime(paper="smollm2-135m", env={}, gpu=None)


def test_shrink_keeps_the_needles_and_one_length_stays_one():
    g = shrink(Grid([16000], [0.5], needles=4, max_new_tokens=4))
    assert g.lengths == STANDIN_LENGTHS[:1] and g.depths == (0.5,) and len(g.needles) == 4
    assert g.max_new_tokens == 4


def test_every_paper_model_has_a_memory_need_and_an_estimate():
    assert set(MEMORY_GB) == set(PAPER_MODELS)
    menu = model_menu()
    assert all(key in menu for key in PAPER_MODELS)
    small = estimate_minutes("llama-2-7b-80k", Grid([1000], [0.5], needles=1))
    big = estimate_minutes("llama-2-7b-80k", Grid([32000], [0.5], needles=1))
    assert 0 < small < big                         # attention makes long prompts cost more


@pytest.mark.parametrize("key", ["llama-2-7b-80k", "mistral-7b-v0.2", "qwen1.5-14b", "mixtral-8x7b"])
def test_stand_ins_load_by_name_with_their_architecture(key):
    from rhlens.models.loading import load_model
    from rhlens.models.registry import STANDIN_SHAPE

    model = load_model(f"tiny-{key}")
    spec = PAPER_MODELS[key]
    assert model.cfg.n_layers == STANDIN_SHAPE["n_layers"]
    assert model.cfg.n_heads == STANDIN_SHAPE["n_heads"]
    config = model.original_model.config
    assert type(config).__name__.lower().startswith(spec.arch)
