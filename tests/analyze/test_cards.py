"""Comparisons warn when two score maps' cards say they were measured differently."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from rhlens.analyze.cards import MapCardWarning, differences, warn_if_incomparable
from rhlens.analyze.compare import compare_scores, same_family_test
from rhlens.run.card import card_path, read_card
from rhlens.run.results import load_scores, scores_to_json

GRID = ["--model", "tiny-llama", "--lengths", "160", "--depths", "0.5", "--needles", "1",
        "--max-new-tokens", "2", "--rouge-gate", "-1"]


def test_comparisons_warn_when_maps_were_measured_differently(files, cli):
    a, b, c = files / "a.json", files / "b.json", files / "c.json"
    for out, extra in ((a, []), (b, ["--span", "needle", "--mode", "sum"]), (c, [])):
        assert cli("score", *GRID, "--haystack", files / "hay.txt", "--out", out, *extra)[0] == 0
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
    with pytest.warns(MapCardWarning, match="score.mode paper vs sum") as caught:
        same_family_test(maps["x"], maps["y"], n_null=10)
    assert caught[0].filename == __file__      # the warning points at the caller
