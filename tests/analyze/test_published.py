"""The paper's published score maps, shipped as derived data: faithful, offline, and named
as ``rhlens models`` names them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rhlens.analyze.compare import correlation_matrix, family_table
from rhlens.analyze.maps import as_map
from rhlens.analyze.published import (
    NAMES,
    activation_table,
    always_on,
    counterpart,
    families,
    load_published,
    published,
    published_maps,
    published_rows,
    share_range,
    source,
)
from rhlens.cli.main import main
from rhlens.models.registry import PAPER_MODELS
from rhlens.score.heads import sparsity

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "rhlens" / "data" / "published_heads.json"

#: The expected figures are the table of the README that accompanies the byte-for-byte copies of
#: the paper's head_score/ files (nightdessert/Retrieval_Head, commit
#: 7ea1f00a85825f0b3619a233f924c698b9d03a9f), computed there from the raw files: heads (layers x
#: heads), samples per head, share of heads with mean > 0.1 (%), share at exactly 0 (%), and the
#: largest mean. The tests read only the shipped package data.
README_TABLE = {
    "llama-2-7b-80k": ((32, 32), 586, 3.22, 70.2, 0.94),
    "llama-2-13b-64k": ((40, 40), 367, 2.06, 73.2, 0.90),
    "mistral-7b-v0.2": ((32, 32), 362, 4.20, 65.0, 0.94),
    "mixtral-8x7b": ((32, 32), 390, 6.15, 57.6, 0.95),
    "qwen1.5-14b": ((40, 40), 390, 3.81, 53.4, 1.00),
    "qwen1.5-14b-chat": ((40, 40), 221, 4.25, 71.1, 0.52),
    "yi-6b-200k": ((32, 32), 567, 5.18, 49.4, 0.78),
}


def test_names_are_the_seven_files_and_known_models():
    assert set(NAMES) == set(README_TABLE)
    assert set(NAMES) <= set(PAPER_MODELS), "every published map needs a `rhlens models` entry"
    assert PAPER_MODELS["mistral-7b-v0.2"].hf_id == "mistral-community/Mistral-7B-v0.2"
    assert PAPER_MODELS["llama-2-13b-64k"].shape == (40, 40, 40)
    assert PAPER_MODELS["mistral-7b-v0.2"].shape == (32, 32, 8)


@pytest.mark.parametrize("name", list(README_TABLE))
def test_shares_reproduce_the_readme_table(name):
    shape, samples, above, zero, max_mean = README_TABLE[name]
    p = published(name)
    s = sparsity(p.scores)
    assert p.shape == shape and p.samples == samples
    assert round(100 * s["share_above_0.1"], 2) == pytest.approx(above)
    assert round(100 * s["share_zero"], 1) == pytest.approx(zero)
    assert round(float(p.scores.max()), 2) == pytest.approx(max_mean)
    row = next(r for r in published_rows() if r["name"] == name)
    assert row["share_above_0_1"] == pytest.approx(above, abs=0.005)
    assert row["share_zero"] == pytest.approx(zero, abs=0.05)


@pytest.mark.parametrize("name", list(README_TABLE))
def test_every_name_loads_offline_as_a_score_map(name, monkeypatch):
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("the published maps must load without network access")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    m = load_published(name)
    assert isinstance(m, torch.Tensor) and m.dtype == torch.float32 and m.ndim == 2
    assert tuple(m.shape) == README_TABLE[name][0]
    assert torch.equal(as_map(name).float(), m)  # any comparison function takes the name
    m[0, 0] = 99.0  # a copy: the cached data stays intact
    assert float(load_published(name)[0, 0]) != 99.0


def test_counts_are_consistent():
    for name in NAMES:
        p = published(name)
        assert (p.count_above_0_1 <= p.count_above_0).all()
        assert (p.count_above_0 <= p.samples).all()
        assert torch.equal(p.scores == 0, p.count_above_0 == 0)
        assert (p.max_score >= p.scores - 1e-6).all()
        assert 0 <= p.silent_samples < p.samples
    assert float(published("mixtral-8x7b").max_score.max()) > 1  # the code's summing score


def test_bad_names_list_the_valid_ones(capsys, tmp_path):
    with pytest.raises(ValueError) as err:
        load_published("llama-3-8b")
    assert all(n in str(err.value) for n in NAMES)
    assert main(["plot", "no-such-map", "--out", str(tmp_path / "x.png")]) == 2
    assert "mixtral-8x7b" in capsys.readouterr().err


def test_data_is_small_derived_and_attributed():
    assert DATA.stat().st_size < 300_000
    doc = json.loads(DATA.read_text())
    assert "7ea1f00a85825f0b3619a233f924c698b9d03a9f" in doc["source"]
    assert "nightdessert/Retrieval_Head" in doc["source"] and "2404.15574" in doc["paper"]
    assert source()["source"] == doc["source"]
    for _name, rec in doc["models"].items():
        for field in ("mean", "count_above_0", "count_above_0_1", "max"):
            grid = rec[field]  # one value per head: no per-sample lists are shipped
            assert len(grid) == rec["n_layers"] and {len(r) for r in grid} == {rec["n_heads"]}
            assert all(isinstance(v, (int, float)) for r in grid for v in r)


def test_cli_json_has_the_documented_keys(capsys):
    assert main(["published", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(NAMES)
    for r in rows:
        assert set(r) == {"name", "n_layers", "n_heads", "samples", "share_above_0_1",
                          "share_zero", "top"}
        assert len(r["top"]) == 5 and all(len(t) == 3 for t in r["top"])
        assert r["top"][0][2] >= r["top"][-1][2]
    llama = rows[0]
    assert llama["top"][0][:2] == [16, 19] and llama["share_above_0_1"] == pytest.approx(3.22)


def test_cli_table_and_plot(capsys, tmp_path):
    assert main(["published", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert all(re.search(rf"^{re.escape(n)} ", out, re.M) for n in NAMES)
    assert "L16H19 0.94" in out and "7ea1f00a" in out
    png = tmp_path / "q.png"
    assert main(["plot", "qwen1.5-14b-chat", "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000


def test_readme_shows_what_the_cli_prints(capsys):
    """The README pastes `rhlens published`'s output; it must be what the command prints."""
    assert main(["published"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(model +layers x heads.*?)```", readme, re.S)
    assert block, "README.md should show the output of `rhlens published`"
    assert block.group(1).strip().splitlines() == printed[:len(NAMES) + 1]
    lo, hi = share_range(0.1)
    zero = [r["share_zero"] for r in published_rows()]
    assert f"{100 * lo:.1f}–{100 * hi:.1f}% of heads score above 0.1" in readme
    assert f"{min(zero):.0f}–{max(zero):.0f}% score exactly 0" in readme


def test_the_papers_family_claims_hold_on_the_data():
    maps = published_maps()
    r = correlation_matrix(maps)
    assert r.loc["mistral-7b-v0.2", "mixtral-8x7b"] > 0.8
    assert r.loc["qwen1.5-14b", "qwen1.5-14b-chat"] > 0.8
    assert r.isna().loc["llama-2-7b-80k", "llama-2-13b-64k"]  # 32x32 vs 40x40
    fams = families()
    across = [r.loc[a, b] for a in NAMES for b in NAMES
              if fams[a] != fams[b] and r.notna().loc[a, b]]
    assert across and max(abs(x) for x in across) < 0.1
    t = family_table(maps, fams, n_null=200)
    assert set(t[t["same family"] & t.pearson.notna()].verdict) == {"same family"}
    assert set(t[~t["same family"] & t.pearson.notna()].verdict) == {"different families"}
    lo, hi = share_range()
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (2.1, 6.2)


def test_always_on_heads_of_llama_2_7b_80k():
    """The paper: 12 heads of Llama-2-7B always retrieve. The file: 12 heads score > 0 on all
    586 samples of Llama-2-7B-80K, each a retrieval head (mean > 0.1), L16H19 first."""
    heads = always_on("llama-2-7b-80k")
    assert len(heads) == 12 and heads[0] == (16, 19)
    assert all(float(load_published("llama-2-7b-80k")[h]) > 0.1 for h in heads)
    t = activation_table().set_index("model")
    assert t.loc["llama-2-7b-80k", "always"] == 12
    nearly = t.filter(like="nearly_always (").iloc[:, 0]
    n_heads = {n: published(n).scores.numel() for n in NAMES}
    assert ((nearly + t.some + t.never) == [n_heads[n] for n in t.index]).all()
    # a sample on which no head copied anything leaves no head "always" on
    assert (t[t.silent_samples > 0].always == 0).all()
    with pytest.raises(ValueError, match="> 0 and > 0.1"):
        published("yi-6b-200k").activation(0.5)


def test_counterpart_of_a_run():
    assert counterpart("qwen1.5-14b")[0] == "qwen1.5-14b"
    name, note = counterpart("mistral-7b-instruct-v0.2")
    assert name == "mistral-7b-v0.2" and "base" in note
    assert counterpart("smollm2-135m")[0] is None
