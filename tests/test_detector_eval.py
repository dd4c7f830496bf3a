"""Detectors held against the interventions: needle sets, shared controls, masking equal to
run_niah, patching and the tables with intervals; ``rhlens detectors`` end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from rhlens.ablation import Mask
from rhlens.cli import main
from rhlens.detector_eval import (NEEDLE_SETS, default_ks, intervention_groups, intervention_table,
                                  load_needle_set, map_correlations, mask_grids,
                                  masking_summary, patch_grids, shared_words)
from rhlens.grid import Grid
from rhlens.heads import control_pool, top_heads
from rhlens.niah_grid import run_niah

HAY = "The river runs past the mill. The baker sells bread at dawn. " * 40


def _maps(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    maps = {d: torch.rand(2, 4, generator=g, dtype=torch.float64) for d in
            ("copy_paste", "query_focus", "logit_contribution")}
    maps["copy_paste"] = torch.tensor([[0.0, 0.6, 0.0, 0.05], [0.3, 0.0, 0.0, 0.0]],
                                      dtype=torch.float64)
    return maps


def test_nonliteral_needles_share_no_content_word_with_their_question():
    nonliteral, literal = load_needle_set("nonliteral"), load_needle_set("literal")
    assert NEEDLE_SETS == ("literal", "nonliteral") and len(nonliteral) >= 12
    assert all(not shared_words(n) for n in nonliteral), [(n.question, shared_words(n))
                                                           for n in nonliteral if shared_words(n)]
    assert all(shared_words(n) for n in literal)  # the built-ins echo their needle
    assert len({n.text for n in nonliteral} & {n.text for n in literal}) == 0
    with pytest.raises(ValueError, match="literal, nonliteral"):
        load_needle_set("paraphrased")


def test_controls_are_shared_seeded_and_never_a_top_head_or_a_retrieval_head():
    maps = _maps()
    groups = intervention_groups(maps, [1, 2], seeds=[0, 1])
    tops = {h for (kind, k, _), hs in groups.items() if kind != "control" for h in hs}
    pool = set(control_pool(maps["copy_paste"], 0.1, same_layers=True))
    for (kind, k, seed), heads in groups.items():
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
                                                                          monkeypatch):
    grid = Grid([160], [0.3, 0.7], needles=1, haystack=HAY, max_new_tokens=5)
    maps = {"copy_paste": torch.tensor([[0.9, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]]),
            "query_focus": torch.tensor([[0.0, 0.0, 0.0, 0.8], [0.0, 0.0, 0.7, 0.0]])}
    groups = intervention_groups(maps, [1, 2], seeds=[0])
    out = tmp_path / "ev"
    df = mask_grids(tiny_llama, {"literal": grid}, groups, out=out, progress=False)
    assert len(df) == 2 * (1 + len(groups))
    for (kind, k, seed), heads in list(groups.items()) + [(("none", 0, -1), ())]:
        ref = run_niah(tiny_llama, grid, Mask(heads), progress=False)
        got = df[(df.kind == kind) & (df.k == k) & (df.seed == seed)]
        assert got.answer.tolist() == ref.answer.tolist(), (kind, k, seed)
        assert got.score.tolist() == ref.score.tolist()
    assert pd.read_csv(f"{out}.niah.csv").shape[0] == len(df)
    import rhlens.detector_eval as ev

    monkeypatch.setattr(ev, "decode_conditions", lambda *a, **k: pytest.fail("not resumed"))
    assert mask_grids(tiny_llama, {"literal": grid}, groups, out=out,
                      progress=False).answer.tolist() == df.answer.tolist()


def test_patching_and_the_intervention_table_have_every_detector_and_control(tiny_llama):
    grid = Grid([160], [0.3, 0.7], needles=2, haystack=HAY, max_new_tokens=5)
    maps = _maps()
    groups = intervention_groups(maps, [1, 2], seeds=[0, 1])
    patch = patch_grids(tiny_llama, {"literal": grid}, groups, force_answer=True, progress=False)
    assert patch.pair.nunique() == 4 and set(patch.set) == {"literal"}
    assert set(patch[patch.measure == "group"].kind) == {*maps, "control"}
    niah = mask_grids(tiny_llama, {"literal": grid}, groups, progress=False)
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


def test_the_command_checks_its_input_before_loading_a_model(capsys, monkeypatch):
    import rhlens.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    cases = [(["--detectors", "copy_paste,locos"], "--detectors must be 'all' or some of"),
             (["--eval-sets", "poems"], "--eval-sets must be 'none' or some of"),
             (["--ks", "0"], "--ks has no group size above 0"),
             (["--eval-depths", "0.5,2"], "--eval-depths must be a comma-separated list"),
             (["--pairs", "0"], "--pairs must be at least 1"),
             (["--rouge-gate", "1.5"], "--rouge-gate must be below 1")]
    for extra, message in cases:
        assert main(["detectors", "--model", "tiny-llama", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_the_command_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["detectors", "--model", "tiny-llama", "--lengths", "160", "--depths", "0.3,0.7",
            "--needles", "1", "--rouge-gate", "-1", "--steps", "decode", "--max-new-tokens", "3",
            "--eval-lengths", "160", "--eval-depths", "0.5", "--ks", "1,2", "--seeds", "0",
            "--pairs", "2", "--force-answer", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Spearman with the per-head patching map" in text and "nonliteral" in text
    groups = json.loads((tmp_path / "run.groups.json").read_text())
    assert {"copy_paste|1|-1", "logit_contribution|2|-1", "control|2|0"} <= set(groups)
    before = {p.name: p.read_text() for p in tmp_path.iterdir() if p.suffix in (".csv", ".json")}
    assert main(args) == 0  # resumes: nothing recomputed, nothing changed
    after = {p.name: p.read_text() for p in tmp_path.iterdir() if p.suffix in (".csv", ".json")}
    assert after == before
    assert main([*args[:-2], "--seeds", "1", "--out", str(out)]) == 2  # another run: refused
    assert "other settings" in capsys.readouterr().err


# --------------------------------------------------------------------------- chapter 10's checkers


def _contrast(alpha, values, span, n_prompt, w_o, direction, scale, *, with_generated=False):
    from rhlens.detectors import split_values, write_contrast

    n_needle = span[1] - span[0]
    needle, off = split_values(alpha, values, span, alpha.shape[1] if with_generated else n_prompt)
    n_off = (alpha.shape[1] if with_generated else n_prompt) - n_needle
    return write_contrast(needle[None], off[None], n_needle, n_off, w_o,
                          torch.tensor([scale], dtype=w_o.dtype), direction[None])


@pytest.mark.parametrize("name,reference,wrong", [
    ("check_query_focus", lambda rows, span: rows[..., span[0]:span[1]].sum(-1).mean(-1),
     lambda rows, span: rows[..., span[0]:span[1]].sum(-1).sum(-1)),
    ("check_write_contrast", _contrast,
     lambda *args: _contrast(*args, with_generated=True)),
])
def test_chapter_10_checkers_accept_the_reference_and_reject_a_wrong_answer(name, reference,
                                                                           wrong, capsys):
    from rhlens.exercises import ch10
    from rhlens.exercises.check import ExerciseFailed

    checker = getattr(ch10, name)
    assert hasattr(checker, "__wrapped__")  # one line, not a traceback, for a stub
    checker(reference)
    assert capsys.readouterr().out.startswith("✓ ")
    with pytest.raises(ExerciseFailed) as err:
        checker(wrong)
    first, *rest = str(err.value).splitlines()
    assert first.startswith("✗ ") and rest[0].strip().startswith("hint: ")
