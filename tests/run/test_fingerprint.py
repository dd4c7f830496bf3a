"""The weight fingerprint of a run's identity hashes every byte of every weight: one weight
edited anywhere is another run, the same weights loaded twice the same run, and a log written
under the old fingerprint (64 sampled values per tensor) is refused like any other run's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from rhlens.errors import UsageError
from rhlens.models.tiny import tiny_model
from rhlens.niah.haystack import NEEDLES
from rhlens.run.samplelog import model_identity


def _params(model) -> dict[str, torch.nn.Parameter]:
    return dict(getattr(model, "original_model", model).named_parameters())


def _sampled(n: int, m: int = 64) -> set[int]:
    """The positions the old fingerprint read in a tensor of ``n`` values."""
    m = min(n, m)
    return set((torch.arange(m) * (n - 1) // max(m - 1, 1)).tolist())


def _old_fingerprint(model) -> str:
    """The fingerprint logs were written with before: 64 evenly spaced values per tensor."""
    h = hashlib.sha256()
    for name, p in _params(model).items():
        t = p.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        flat = t.reshape(-1)
        h.update(flat[sorted(_sampled(flat.numel()))].float().numpy().tobytes())
    return h.hexdigest()[:16]


def _edit_one_weight(model, name: str) -> int:
    """Moves one value of ``name`` that the old fingerprint never read by one step; returns its
    position."""
    flat = _params(model)[name].data.view(-1)
    i = next(j for j in range(flat.numel() // 2, flat.numel()) if j not in _sampled(flat.numel()))
    flat[i] = torch.nextafter(flat[i], torch.tensor(float("inf"), dtype=flat.dtype))
    return i


@pytest.mark.parametrize("which", [0, -1, "largest"])
def test_one_weight_changed_anywhere_changes_the_fingerprint(which):
    model = tiny_model("llama", seed=0)
    names = list(_params(model))
    name = (max(names, key=lambda n: _params(model)[n].numel()) if which == "largest"
            else names[which])
    before = model_identity(model)["weights"]
    old_before = _old_fingerprint(model)
    _edit_one_weight(model, name)
    assert _old_fingerprint(model) == old_before  # the edit is where sampling never looked
    assert model_identity(model)["weights"] != before


def test_same_weights_give_the_same_fingerprint_across_loads_in_bf16_too():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=0)
    assert model_identity(a)["weights"] == model_identity(b)["weights"]
    assert model_identity(a)["weights"] != model_identity(tiny_model("llama", seed=1))["weights"]
    # bf16 weights are hashed as their own bytes: equal copies agree, a one-step edit of one
    # value (invisible to a float32 sample of 64 values per tensor) does not
    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    assert model_identity(a)["weights"] == model_identity(b)["weights"]
    name = max(_params(b), key=lambda n: _params(b)[n].numel())
    _edit_one_weight(b, name)
    assert model_identity(a)["weights"] != model_identity(b)["weights"]


def test_resume_refuses_a_checkpoint_edited_in_one_weight(tmp_path, hay, snapshot):
    from rhlens.intervene.niah import run_niah
    from rhlens.niah.grid import Grid

    grid = Grid([160], [0.5], NEEDLES[:1], hay, max_new_tokens=2)
    out = tmp_path / "w.csv"
    run_niah(tiny_model("llama", seed=0), grid, progress=False, out=out)
    before = snapshot(out, f"{out}.samples.jsonl")
    edited = tiny_model("llama", seed=0)
    _edit_one_weight(edited, next(n for n in _params(edited) if "layers.0" in n and "down_proj" in n))
    with pytest.raises(UsageError, match="other settings.*weights") as err:
        run_niah(edited, grid, progress=False, out=out)
    assert "\n" not in str(err.value)
    assert snapshot(out, f"{out}.samples.jsonl") == before


def test_a_log_with_the_old_fingerprint_is_another_run(tmp_path, hay, snapshot):
    from rhlens.intervene.niah import run_niah
    from rhlens.niah.grid import Grid

    grid = Grid([160], [0.5], NEEDLES[:1], hay, max_new_tokens=2)
    out = tmp_path / "old.csv"
    model = tiny_model("llama", seed=0)
    run_niah(model, grid, progress=False, out=out)
    log = Path(f"{out}.samples.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["settings"]["weights"] = _old_fingerprint(model)  # as the same weights logged before
    log.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    before = snapshot(out, log)
    with pytest.raises(UsageError, match="other settings.*weights '[0-9a-f]{16}' there"):
        run_niah(model, grid, progress=False, out=out)
    assert snapshot(out, log) == before
