"""Map cards: written beside every score file (score, merge, the library), printed by
``rhlens card``, kept with the file on resume and merge, and checked by the comparisons."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from rhlens.card import (MEASUREMENT, MODEL_FIELDS, MapCardWarning, card_path, differences,
                         flatten, read_card, resume_card, scores_match, warn_if_incomparable)
from rhlens.cli import main
from rhlens.compare import compare_scores, same_family_test
from rhlens.detect import detect_retrieval_heads
from rhlens.errors import UsageError
from rhlens.grid import Grid
from rhlens.results import load_scores, scores_to_json

HAY = "The river runs past the mill. The baker sells bread at dawn. " * 40
GRID = ["--model", "tiny-llama", "--lengths", "160,200", "--depths", "0.2,0.8", "--needles", "2",
        "--max-new-tokens", "3", "--rouge-gate", "-1"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def cli(capsys, *argv):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.splitlines() if line.strip() and "%|" not in line]


def score(tmp_path, out, *extra):
    (tmp_path / "hay.txt").write_text(HAY)
    return ["score", *GRID, "--haystack", tmp_path / "hay.txt", "--out", out, *extra]


def test_score_writes_a_card_with_every_field_and_card_prints_it(tmp_path, capsys):
    out = tmp_path / "s.json"
    rc, text, _ = cli(capsys, *score(tmp_path, out))
    assert rc == 0 and "s.json.card.json" in text
    # the score file stays in the public format: every key is "layer-head"
    assert all(len(k.split("-")) == 2 for k in json.loads(out.read_text()))
    card = read_card(out)
    assert card == read_card(card_path(out))
    fields = flatten(card)
    for f in (*MEASUREMENT, *MODEL_FIELDS, "model.id", "model.n_heads", "grid.needles",
              "samples.passed", "samples.rejected", "seed", "run", "scores.sha256"):
        assert f in fields, f
    assert fields["model.id"] == "tiny-llama" and fields["model.dtype"] == "float32"
    assert len(fields["model.weights"]) == 16 and len(fields["tokenizer.digest"]) == 16
    assert fields["grid.lengths"] == [160, 200] and fields["grid.depths"] == [0.2, 0.8]
    assert fields["grid.n_prompts"] == 8 and len(fields["grid.needles"]) == 2
    assert (fields["score.mode"], fields["score.span"]) == ("paper", "answer")
    assert (fields["rouge.gate"], fields["rouge.stemmer"]) == (-1.0, True)
    assert fields["grid.prompt"] == "rhlens" and fields["seed"] is None
    assert card["samples"] == {"run": 8, "passed": 8, "rejected": 0}
    assert fields["versions.transformer_lens"] and fields["versions.torch"]
    assert scores_match(card, out) is True
    # the card names the run its sample log's records belong to
    logged = [json.loads(line) for line in Path(f"{out}.samples.jsonl").read_text().splitlines()]
    assert {r["run"] for r in logged[1:]} == {card["run"]}
    rc, text, _ = cli(capsys, "card", out)
    assert rc == 0
    for line in ("model        tiny-llama", "paper mode over the answer span",
                 "recall > -1.0, stemmed", "8 passed, 0 rejected of 8 run",
                 "(matches the file)", "transformer-lens"):
        assert line in text, line
    rc, text, _ = cli(capsys, "card", out, "--json")
    assert rc == 0 and json.loads(text) == card


def test_card_counts_rejected_samples_and_notes_a_changed_file(tmp_path, capsys):
    out = tmp_path / "s.json"
    # a random-weight model answers nothing: a gate below 0 keeps all, at 0 none pass
    assert cli(capsys, *score(tmp_path, out))[0] == 0
    card = read_card(out)
    data = json.loads(out.read_text())
    data["0-0"][0] += 0.5
    out.write_text(json.dumps(data))
    assert scores_match(card, out) is False
    assert "the file has changed since" in cli(capsys, "card", out)[1]


def test_card_of_a_file_without_one_is_a_one_line_usage_error(tmp_path, capsys):
    bare = tmp_path / "public.json"
    bare.write_text(json.dumps(scores_to_json([torch.zeros(2, 2)], 2, 2)))
    rc, _, err = cli(capsys, "card", bare)
    assert rc == 2 and len(err) == 1 and "has no map card" in err[0]
    rc, _, err = cli(capsys, "card", tmp_path / "missing.json")
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0]
    card_path(bare).write_text("{not json")
    rc, _, err = cli(capsys, "card", bare)
    assert rc == 2 and len(err) == 1 and "damaged map card" in err[0]
    card_path(bare).write_text(json.dumps({"card_format": 99}))
    with pytest.raises(UsageError, match="not a map card of format 1"):
        read_card(bare)


def test_a_resumed_run_keeps_its_card_in_step_with_the_file(tmp_path, capsys):
    out = tmp_path / "s.json"
    args = score(tmp_path, out)
    assert cli(capsys, *args)[0] == 0
    first = card_path(out).read_bytes()
    # an interrupted run: the score file was rewritten but its card was not
    card_path(out).unlink()
    log = Path(f"{out}.samples.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-3]))                # three samples to do again
    assert cli(capsys, *args)[0] == 0
    assert card_path(out).read_bytes() == first
    assert scores_match(read_card(out), out) is True


def test_a_resumed_run_under_other_versions_lists_both(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert cli(capsys, *score(tmp_path, out))[0] == 0
    card = read_card(out)
    old = {**card, "versions": {**card["versions"], "transformers": "5.0.0"}}
    card_path(out).write_text(json.dumps(old))
    now = resume_card(card, out)
    assert now["versions"]["transformers"] == ["5.0.0", card["versions"]["transformers"]]
    assert differences(now, card) == []          # a list agrees with a version it holds
    # a card of another run is not carried over
    other = {**old, "run": "0" * 16}
    card_path(out).write_text(json.dumps(other))
    assert resume_card(card, out)["versions"] == card["versions"]


def test_merged_card_is_the_unsharded_card(tmp_path, capsys):
    full, part = tmp_path / "full.json", tmp_path / "p.json"
    assert cli(capsys, *score(tmp_path, full))[0] == 0
    for i in range(2):
        assert cli(capsys, *score(tmp_path, part, "--shard", f"{i}/2"))[0] == 0
    shard0 = read_card(tmp_path / "p.shard0of2.json")
    assert shard0["shard"] == {"index": 0, "count": 2, "n_prompts": 4}
    assert shard0["samples"]["run"] == 4
    merged = tmp_path / "m.json"
    shards = [tmp_path / "p.shard1of2.json", tmp_path / "p.shard0of2.json"]
    assert cli(capsys, "merge", "--out", merged, *shards)[0] == 0
    assert card_path(merged).read_bytes() == card_path(full).read_bytes()
    assert scores_match(read_card(merged), merged) is True


def test_merge_without_shard_cards_still_writes_what_the_logs_know(tmp_path, capsys):
    part = tmp_path / "p.json"
    for i in range(2):
        assert cli(capsys, *score(tmp_path, part, "--shard", f"{i}/2"))[0] == 0
        card_path(tmp_path / f"p.shard{i}of2.json").unlink()
    merged = tmp_path / "m.json"
    rc, _, err = cli(capsys, "merge", "--out", merged, tmp_path / "p.shard0of2.json",
                     tmp_path / "p.shard1of2.json")
    assert rc == 0 and any("no readable map card" in e for e in err)
    card = read_card(merged)
    assert card["score"] == {"mode": "paper", "span": "answer"}
    assert card["model"]["id"] == "tiny-llama" and card["samples"]["run"] == 8
    assert card["tokenizer"] is None and scores_match(card, merged) is True


def test_library_run_writes_the_card_and_returns_it(tiny_llama, tmp_path):
    grid = Grid([160], [0.5], needles=1, haystack=HAY, max_new_tokens=3)
    run = detect_retrieval_heads(tiny_llama, grid, rouge_gate=-1, out=tmp_path / "s.json",
                                 progress=False)
    written = read_card(tmp_path / "s.json")
    assert run.card["samples"] == written["samples"] == {"run": 1, "passed": 1, "rejected": 0}
    assert {k: v for k, v in written.items() if k != "scores"} == \
        {k: v for k, v in run.card.items() if k != "scores"}
    run = detect_retrieval_heads(tiny_llama, grid, rouge_gate=-1, progress=False)
    assert run.card["model"]["n_kv_heads"] == 2


def test_comparisons_warn_when_maps_were_measured_differently(tmp_path, capsys):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert cli(capsys, *score(tmp_path, a))[0] == 0
    assert cli(capsys, *score(tmp_path, b, "--span", "needle", "--mode", "sum"))[0] == 0
    assert cli(capsys, *score(tmp_path, c))[0] == 0
    with pytest.warns(MapCardWarning, match=r"score\.mode paper vs sum; score\.span answer vs "
                                            r"needle"):
        compare_scores({"a": a, "b": b})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_scores({"a": a, "c": c})                     # the same measurement: silent
        compare_scores({"a": a, "t": load_scores(b)})        # a bare tensor has no card
    # a field of the model counts only for the same model id
    card_a = read_card(a)
    other_weights = {**card_a, "model": {**card_a["model"], "weights": "f" * 16}}
    assert differences(card_a, other_weights) == [f"model.weights {card_a['model']['weights']} "
                                                  f"vs {'f' * 16}"]
    other_model = {**other_weights, "model": {**other_weights["model"], "id": "another"}}
    assert differences(card_a, other_model) == []
    card_path(c).write_text(json.dumps({**card_a, "rouge": {"gate": 0.5, "stemmer": False}}))
    with pytest.warns(MapCardWarning):
        assert len(warn_if_incomparable({"a": a, "c": c, "b": b})) == 3


def test_same_family_test_warns_on_cards(tmp_path):
    maps = {}
    for name, mode in (("x", "paper"), ("y", "sum")):
        m = torch.zeros(4, 4)
        m[1, 2], m[3, 0], m[2, 2] = 0.9, 0.4, 0.2
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(scores_to_json([m], 4, 4)))
        card_path(path).write_text(json.dumps({"card_format": 1, "model": {"id": name},
                                               "score": {"mode": mode}}))
        maps[name] = path
    with pytest.warns(MapCardWarning, match="score.mode paper vs sum"):
        same_family_test(maps["x"], maps["y"], n_null=10)
