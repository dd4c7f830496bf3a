"""``rhlens detectors``: input checked before any model loads, a run end to end that resumes."""

from __future__ import annotations

import json

from rhlens.cli import main


def test_the_command_checks_its_input_before_loading_a_model(capsys, no_model):
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
