"""The detectors' intervention table and map correlations, with bootstrap intervals."""

from __future__ import annotations

from rhlens.analyze.detectors import intervention_table, map_correlations, masking_summary
from rhlens.intervene.detector_eval import EvalConfig, intervention_groups, mask_grids, patch_grids
from rhlens.niah.grid import Grid


def test_patching_and_the_intervention_table_have_every_detector_and_control(tiny_llama, hay,
                                                                               detector_maps):
    grid = Grid([160], [0.3, 0.7], needles=2, haystack=hay, max_new_tokens=5)
    maps = detector_maps
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
