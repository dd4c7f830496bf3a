"""NIAH grids with masks: CSV rows, resume, heatmap, K sweep and curve, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from rhlens.intervene.mask import Mask
from rhlens.intervene.niah import k_curve, k_sweep, run_niah
from rhlens.niah.grid import Grid, held_out_needles, needles_used_by
from rhlens.niah.haystack import NEEDLES, needles_to_json
from rhlens.viz.runs import niah_heatmap, plot_k_curve


def test_run_niah_csv_and_resume(tiny_llama, tmp_path, hay):
    out = tmp_path / "niah.csv"
    kw = dict(progress=False, out=out)
    grid = Grid([160, 200], [0.0, 1.0], NEEDLES[:1], hay, max_new_tokens=3)
    df = run_niah(tiny_llama, grid, Mask([(1, 2)]), **kw)
    assert list(df.columns[:5]) == ["needle", "length", "depth", "score", "answer"]
    assert len(df) == 4 and df["score"].between(0, 100).all()
    on_disk = pd.read_csv(out)
    assert len(on_disk) == 4 and set(on_disk["length"]) == {160, 200}
    again = run_niah(tiny_llama, grid, Mask([(1, 2)]), **kw)
    assert again["answer"].tolist() == df["answer"].tolist()
    with pytest.raises(ValueError, match="other settings"):  # other heads, same log
        run_niah(tiny_llama, grid.replace(lengths=[160], depths=[0.0]), Mask([(0, 0)]), **kw)
    ax = niah_heatmap(df)
    assert ax.get_ylabel() == "needle depth"


def test_mask_changes_answers(tiny_llama, hay):
    """Zeroing every head changes what the model says (the hooks are really active)."""
    grid = Grid([160], [0.5], NEEDLES[:1], hay, max_new_tokens=4)
    base = run_niah(tiny_llama, grid, progress=False)
    every = [(l, h) for l in range(2) for h in range(4)]
    masked = run_niah(tiny_llama, grid, Mask(every, "zero"), progress=False)
    assert base["answer"][0] != masked["answer"][0]


def test_k_sweep_and_curve(tiny_llama, tmp_path, hay):
    scores = torch.zeros(2, 4)
    scores[1, 1], scores[0, 3] = 0.8, 0.4
    grid = Grid([160], [0.5], NEEDLES[:1], hay, max_new_tokens=3)
    df = k_sweep(tiny_llama, grid, scores, [0, 2], seeds=(0, 1), progress=False,
                 out=tmp_path / "sweep.csv")
    assert sorted(set(zip(df.k, df.kind))) == [(0, "top"), (2, "random"), (2, "top")]
    assert (df[(df.kind == "top") & (df.k == 2)]["heads"] == "L1H1 L0H3").all()
    rnd = df[df.kind == "random"]["heads"]
    assert not rnd.str.contains("L1H1|L0H3").any()
    curve = k_curve(df)
    assert list(curve["k"]) == [0, 2] and curve.loc[0, "random"] == curve.loc[0, "top"]
    assert (tmp_path / "sweep.csv").exists()
    assert plot_k_curve(curve).get_xlabel().startswith("K")


def test_k_curve_spread():
    df = pd.DataFrame({"k": [0, 5, 5, 5, 5], "kind": ["top", "top", "random", "random", "random"],
                       "seed": [-1, -1, 0, 1, 2], "score": [90, 10, 80, 90, 100]})
    c = k_curve(df).set_index("k")
    assert c.loc[5, "top"] == 10 and c.loc[5, "random"] == 90
    assert c.loc[5, "random_std"] == pytest.approx((200 / 3) ** 0.5)


def test_held_out_needles(tmp_path):
    log = tmp_path / "s.json.samples.jsonl"
    log.write_text(json.dumps({"settings": {}}) + "\n" + json.dumps({"key": "k", "needle": NEEDLES[0].text}) + "\n")
    used = needles_used_by(tmp_path / "s.json")
    assert used == {NEEDLES[0].text}
    assert held_out_needles(NEEDLES[:3], used) == list(NEEDLES[1:3])
    with pytest.raises(ValueError, match="already used"):
        held_out_needles(NEEDLES[:1], used)
    assert needles_used_by(tmp_path / "missing.json") == set()


@pytest.mark.parametrize("bad", ["null", "[1, 2]", '"text"', '{"key": "k", "needle": null}',
                                 '{"key": "k", "needle": ["a", "b"]}', '{"needle": {"x": 1}}'])
def test_needles_used_by_skips_records_present_but_wrong(tmp_path, bad):
    """A damaged line of the score run's log is passed over, not an internal TypeError."""
    log = tmp_path / "s.json.samples.jsonl"
    good = json.dumps({"key": "k", "needle": NEEDLES[1].text})
    log.write_text(json.dumps({"settings": {}}) + "\n" + bad + "\n" + good + "\n")
    assert needles_used_by(tmp_path / "s.json") == {NEEDLES[1].text}


def test_cli_niah(tmp_path, monkeypatch, capsys, hay):
    """`rhlens niah` end to end on a tiny model: masks top heads, leaves out score needles."""
    import rhlens.models.loading
    from rhlens.cli.main import main
    from rhlens.models.tiny import tiny_model
    from rhlens.run.results import scores_to_json

    monkeypatch.setattr(rhlens.models.loading, "load_model", lambda *a, **k: tiny_model("llama"))
    scores = torch.zeros(2, 4)
    scores[1, 1] = 0.9
    (tmp_path / "scores.json").write_text(json.dumps(scores_to_json([scores], 2, 4)))
    (tmp_path / "scores.json.samples.jsonl").write_text(
        json.dumps({"settings": {}}) + "\n" + json.dumps({"key": "x", "needle": NEEDLES[0].text}) + "\n")
    (tmp_path / "hay.txt").write_text(hay)
    needle_file = tmp_path / "needles.json"
    needle_file.write_text(needles_to_json(list(NEEDLES[:2])))
    out = tmp_path / "niah.csv"
    rc = main(["niah", "--model", "tiny-llama", "--scores", str(tmp_path / "scores.json"), "--mask-top", "1",
               "--lengths", "160", "--depths", "0.5", "--needle-file", str(needle_file),
               "--haystack", str(tmp_path / "hay.txt"), "--max-new-tokens", "3",
               "--out", str(out), "--plot", str(tmp_path / "h.png")])
    assert rc == 0
    df = pd.read_csv(out)
    assert df["needle"].tolist() == [NEEDLES[1].text]  # the score run's needle is left out
    assert (tmp_path / "h.png").exists()
    assert "L1H1" in capsys.readouterr().out
    rc = main(["niah", "--mask-top", "1", "--out", str(out)])
    assert rc == 2  # masking without --scores is a clear error


def _niah_files(out) -> tuple[bytes, bytes]:
    return out.read_bytes(), Path(f"{out}.samples.jsonl").read_bytes()


@pytest.mark.parametrize("mask", [Mask([(1, 2), (0, 1)], "zero"),
                                  Mask([(1, 2)], "zero", prefill=True)],
                         ids=["decode", "prefill"])
def test_batched_niah_writes_the_same_files(tiny_llama, tmp_path, monkeypatch, hay, mask):
    """A masked NIAH run decoded 3 prompts at a time, and with ``"auto"``, writes the CSV and
    the sample log byte for byte as one at a time does."""
    import rhlens.intervene.niah as niah
    from rhlens.run.batch import greedy_decode_batch

    sizes: list[int] = []

    def spy(model, prompts, *a, **k):
        sizes.append(len(prompts))
        return greedy_decode_batch(model, prompts, *a, **k)

    monkeypatch.setattr(niah, "greedy_decode_batch", spy)
    grid = Grid([160, 200], [0.1, 0.4, 0.6, 0.9], NEEDLES[:1], hay, max_new_tokens=4)
    runs = {b: run_niah(tiny_llama, grid, mask, out=tmp_path / f"b{b}.csv", progress=False,
                        batch_size=b) for b in (1, 3, "auto")}
    assert sizes == [3, 1, 3, 1, 4, 4]  # B=1 never batches; auto is 4 on a CPU
    for b in (3, "auto"):
        assert _niah_files(tmp_path / f"b{b}.csv") == _niah_files(tmp_path / "b1.csv")
        assert runs[b].equals(runs[1])
