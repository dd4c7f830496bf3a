"""Detectors held against the interventions: shared seeded controls, masking of every
condition in one batch equal to run_niah mask by mask, and a run config that checks itself."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from rhlens.errors import UsageError
from rhlens.intervene.detector_eval import EvalConfig, default_ks, intervention_groups, mask_grids
from rhlens.intervene.mask import Mask
from rhlens.intervene.niah import run_niah
from rhlens.niah.grid import Grid
from rhlens.score.heads import control_pool, top_heads


def test_controls_are_shared_seeded_and_never_a_top_head_or_a_retrieval_head(detector_maps):
    maps = detector_maps
    groups = intervention_groups(maps, [1, 2], seeds=[0, 1])
    tops = {h for (kind, k, _), hs in groups.items() if kind != "control" for h in hs}
    pool = set(control_pool(maps["copy_paste"], 0.1, same_layers=True))
    for (kind, k, _), heads in groups.items():
        assert len(heads) == k
        if kind == "control":
            assert not set(heads) & tops and set(heads) <= pool
        else:
            assert list(heads) == top_heads(maps[kind], k)
    assert intervention_groups(maps, [1, 2], seeds=[0, 1]) == groups
    assert default_ks(270) == [5, 13]
    with pytest.raises(ValueError, match="above 0"):
        intervention_groups(maps, [0], seeds=[0])


def test_masking_all_conditions_in_one_batch_equals_run_niah_mask_by_mask(tiny_llama, tmp_path,
                                                                          monkeypatch, hay):
    grid = Grid([160], [0.3, 0.7], needles=1, haystack=hay, max_new_tokens=5)
    maps = {"copy_paste": torch.tensor([[0.9, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]]),
            "query_focus": torch.tensor([[0.0, 0.0, 0.0, 0.8], [0.0, 0.0, 0.7, 0.0]])}
    groups = intervention_groups(maps, [1, 2], seeds=[0])
    out = tmp_path / "ev"
    config = EvalConfig({"literal": grid}, groups)
    df = mask_grids(tiny_llama, config, out=out, progress=False)
    assert len(df) == 2 * (1 + len(groups))
    for (kind, k, seed), heads in list(groups.items()) + [(("none", 0, -1), ())]:
        ref = run_niah(tiny_llama, grid, Mask(heads), progress=False)
        got = df[(df.kind == kind) & (df.k == k) & (df.seed == seed)]
        assert got.answer.tolist() == ref.answer.tolist(), (kind, k, seed)
        assert got.score.tolist() == ref.score.tolist()
    assert pd.read_csv(f"{out}.niah.csv").shape[0] == len(df)
    import rhlens.intervene.detector_eval as ev

    monkeypatch.setattr(ev, "decode_conditions", lambda *a, **k: pytest.fail("not resumed"))
    assert mask_grids(tiny_llama, config, out=out, progress=False).answer.tolist() == df.answer.tolist()


def test_the_config_names_what_is_wrong(tiny_llama, hay):
    grid = Grid([160], [0.5], needles=1, haystack=hay)
    groups = {("copy_paste", 1, -1): ((0, 0),)}
    with pytest.raises(UsageError, match="held_out must map"):
        EvalConfig({"literal": [grid]}, groups)
    with pytest.raises(UsageError, match="groups must name"):
        EvalConfig({"literal": grid}, {("copy_paste", 1, -1): ()})
    with pytest.raises(UsageError, match="mode only"):
        EvalConfig({"literal": grid}, groups, mask=Mask([(0, 1)]))
    config = EvalConfig({"literal": grid}, groups)
    assert list(config.groups) == ["copy_paste|1|-1"]
    assert set(config.conditions()) == {"none|0|-1", "copy_paste|1|-1"}
