"""The detectors' intervention table and map correlations, with bootstrap intervals."""

from __future__ import annotations

import torch

from rhlens.analyze.detectors import intervention_table, map_correlations, masking_summary
from rhlens.intervene.detector_eval import EvalConfig, intervention_groups, mask_grids, patch_grids
from rhlens.niah.grid import Grid

HAY = "The river runs past the mill. The baker sells bread at dawn. " * 40


def _maps(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    maps = {d: torch.rand(2, 4, generator=g, dtype=torch.float64) for d in
            ("copy_paste", "query_focus", "logit_contribution")}
    maps["copy_paste"] = torch.tensor([[0.0, 0.6, 0.0, 0.05], [0.3, 0.0, 0.0, 0.0]],
                                      dtype=torch.float64)
    return maps


def test_patching_and_the_intervention_table_have_every_detector_and_control(tiny_llama):
    grid = Grid([160], [0.3, 0.7], needles=2, haystack=HAY, max_new_tokens=5)
    maps = _maps()
    groups = intervention_groups(maps, [1, 2], seeds=[0, 1])
    config = EvalConfig({"literal": grid}, groups, force_answer=True)
    patch = patch_grids(tiny_llama, config, progress=False)
    assert patch.pair.nunique() == 4 and set(patch.set) == {"literal"}
    assert set(patch[patch.measure == "group"].kind) == {*maps, "control"}
    niah = mask_grids(tiny_llama, config, progress=False)
    table = intervention_table(niah, patch, n_boot=50)
    assert set(table.kind) == {*maps, "control"} and set(table.k) == {1, 2}
    for col in ("niah", "drop", "restored", "destroyed"):
        assert (table[f"{col}_lo"] <= table[col] + 1e-9).all()
        assert (table[col] <= table[f"{col}_hi"] + 1e-9).all()
    m = masking_summary(niah, n_boot=50)
    assert (m[m.kind == "none"]["drop"] == 0).all() and (m.prompts == 4).all()
    corr = map_correlations(maps, patch, n_boot=20, n_null=20)
    assert set(corr.detector) == set(maps) and corr.spearman.between(-1, 1).all()
    assert (corr.pairs == 4).all()
