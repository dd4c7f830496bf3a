"""The toy models' weight cache runs no code from a planted file, and two writers never tear it."""

from __future__ import annotations

import threading

import torch

# --------------------------------------------------------------------------- 5. files, security


class _Payload:
    """Unpickling this calls :func:`_ran`: what a planted cache file could do."""

    def __reduce__(self):
        return (_ran, ())


RAN: list[int] = []


def _ran():
    RAN.append(1)
    return {}


def test_toy_cache_loads_weights_only(tmp_path, monkeypatch):
    from rhlens.toy import recipes

    path = tmp_path / "toy" / "entry.pt"
    state = {"w": torch.arange(4.0)}
    import numpy as np

    history = {"step": [np.int64(0), np.int64(10)], "loss": [np.float64(2.5), 1.0]}
    recipes.save_cached(path, {"state": state, "history": history, "checkpoints": {0: state}})
    assert [p.name for p in path.parent.iterdir()] == ["entry.pt"]  # no temporary left
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    saved = recipes.load_cached(path)
    assert calls and calls[0]["weights_only"] is True
    assert torch.equal(saved["state"]["w"], state["w"]) and saved["history"]["step"] == [0, 10]
    # a planted file that would run code is refused, and nothing runs
    torch.save({"state": {}, "history": _Payload(), "checkpoints": {}}, path)
    assert recipes.load_cached(path) is None and RAN == []


def test_toy_cache_writes_race_safely(tmp_path):
    from rhlens.toy import recipes

    path = tmp_path / "race.pt"
    entry = {"state": {"w": torch.zeros(1000)}, "history": {"step": [0]}, "checkpoints": {}}
    errors = []

    def write():
        try:
            for _ in range(5):
                recipes.save_cached(path, entry)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and recipes.load_cached(path) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["race.pt"]
