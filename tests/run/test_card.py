"""Map cards: written beside every score file (score, merge, the library), printed by
``rhlens card``, and kept in step with the file on resume and merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rhlens.analyze.cards import MEASUREMENT, MODEL_FIELDS, differences, flatten
from rhlens.errors import UsageError
from rhlens.niah.grid import Grid
from rhlens.run.card import card_path, read_card, resume_card, scores_match
from rhlens.run.results import scores_to_json
from rhlens.run.samplelog import read_log, run_digest
from rhlens.score.detect import detect_retrieval_heads

GRID = ["--model", "tiny-llama", "--lengths", "160,200", "--depths", "0.2,0.8", "--needles", "2",
        "--max-new-tokens", "3", "--rouge-gate", "-1"]


def score(files, out, *extra):
    return ["score", *GRID, "--haystack", files / "hay.txt", "--out", out, *extra]


def test_score_writes_a_card_with_every_field_and_card_prints_it(files, cli):
    out = files / "s.json"
    rc, text, _ = cli(*score(files, out))
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
    header, records = read_log(f"{out}.samples.jsonl")
    assert card["run"] == run_digest(header["settings"]) and len(records) == 8
    logged = [json.loads(line) for line in Path(f"{out}.samples.jsonl").read_text().splitlines()]
    assert {r["run"] for r in logged[1:]} == {card["run"]}
    rc, text, _ = cli("card", out)
    assert rc == 0
    for line in ("model        tiny-llama", "paper mode over the answer span",
                 "recall > -1.0, stemmed", "8 passed, 0 rejected of 8 run",
                 "(matches the file)", "transformer-lens"):
        assert line in text, line
    rc, text, _ = cli("card", out, "--json")
    assert rc == 0 and json.loads(text) == card


def test_card_notes_a_changed_file(files, cli):
    out = files / "s.json"
    assert cli(*score(files, out))[0] == 0
    card = read_card(out)
    data = json.loads(out.read_text())
    data["0-0"][0] += 0.5
    out.write_text(json.dumps(data))
    assert scores_match(card, out) is False
    assert "the file has changed since" in cli("card", out)[1]


def test_card_of_a_file_without_one_is_a_one_line_usage_error(files, one_error):
    bare = files / "public.json"
    bare.write_text(json.dumps(scores_to_json([torch.zeros(2, 2)], 2, 2)))
    assert "has no map card" in one_error("card", bare)
    assert "does not exist" in one_error("card", files / "missing.json")
    card_path(bare).write_text("{not json")
    assert "damaged map card" in one_error("card", bare)
    card_path(bare).write_text(json.dumps({"card_format": 99}))
    with pytest.raises(UsageError, match="not a map card of format 1"):
        read_card(bare)


def test_a_resumed_run_keeps_its_card_in_step_with_the_file(files, cli):
    out = files / "s.json"
    args = score(files, out)
    assert cli(*args)[0] == 0
    first = card_path(out).read_bytes()
    # an interrupted run: the score file was rewritten but its card was not
    card_path(out).unlink()
    log = Path(f"{out}.samples.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-3]))                # three samples to do again
    assert cli(*args)[0] == 0
    assert card_path(out).read_bytes() == first
    assert scores_match(read_card(out), out) is True


def test_a_resumed_run_under_other_versions_lists_both(files, cli):
    out = files / "s.json"
    assert cli(*score(files, out))[0] == 0
    card = read_card(out)
    old = {**card, "versions": {**card["versions"], "transformers": "5.0.0"}}
    card_path(out).write_text(json.dumps(old))
    now = resume_card(card, out)
    assert now["versions"]["transformers"] == ["5.0.0", card["versions"]["transformers"]]
    assert differences(now, card) == []          # a list agrees with a version it holds
    # a card of another run is not carried over
    card_path(out).write_text(json.dumps({**old, "run": "0" * 16}))
    assert resume_card(card, out)["versions"] == card["versions"]


def test_merged_card_is_the_unsharded_card(files, cli):
    full, part = files / "full.json", files / "p.json"
    assert cli(*score(files, full))[0] == 0
    for i in range(2):
        assert cli(*score(files, part, "--shard", f"{i}/2"))[0] == 0
    shard0 = read_card(files / "p.shard0of2.json")
    assert shard0["shard"] == {"index": 0, "count": 2, "n_prompts": 4}
    assert shard0["samples"]["run"] == 4
    merged = files / "m.json"
    shards = [files / "p.shard1of2.json", files / "p.shard0of2.json"]
    rc, text, _ = cli("merge", "--out", merged, *shards)
    assert rc == 0 and "m.json.card.json" in text
    assert card_path(merged).read_bytes() == card_path(full).read_bytes()
    assert scores_match(read_card(merged), merged) is True


def test_merge_without_shard_cards_still_writes_what_the_logs_know(files, cli):
    part = files / "p.json"
    for i in range(2):
        assert cli(*score(files, part, "--shard", f"{i}/2"))[0] == 0
        card_path(files / f"p.shard{i}of2.json").unlink()
    merged = files / "m.json"
    rc, _, err = cli("merge", "--out", merged, files / "p.shard0of2.json",
                     files / "p.shard1of2.json")
    assert rc == 0 and any("no readable map card" in e for e in err)
    card = read_card(merged)
    assert card["score"] == {"mode": "paper", "span": "answer"}
    assert card["model"]["id"] == "tiny-llama" and card["samples"]["run"] == 8
    assert card["tokenizer"] is None and scores_match(card, merged) is True


def test_library_run_writes_the_card_and_returns_it(tiny_llama, hay, tmp_path):
    grid = Grid([160], [0.5], needles=1, haystack=hay, max_new_tokens=3)
    run = detect_retrieval_heads(tiny_llama, grid, rouge_gate=-1, out=tmp_path / "s.json",
                                 progress=False)
    written = read_card(tmp_path / "s.json")
    assert run.card is not None
    assert run.card["samples"] == written["samples"] == {"run": 1, "passed": 1, "rejected": 0}
    assert {k: v for k, v in written.items() if k != "scores"} == \
        {k: v for k, v in run.card.items() if k != "scores"}
    run = detect_retrieval_heads(tiny_llama, grid, rouge_gate=-1, progress=False)
    assert run.card is not None and run.card["model"]["n_kv_heads"] == 2
    assert [p.name for p in tmp_path.glob("*.card.json")] == ["s.json.card.json"]  # no out: none
