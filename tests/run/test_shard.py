"""Sharded runs: ``--shard i/n`` (or a launcher's RANK/WORLD_SIZE) and ``rhlens merge``.

Two shards of a tiny model merge into exactly the files one process writes over the whole grid
(the score file, the NIAH CSV, and their sample logs); shards that cannot make up one run are
refused with one line, before anything is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from rhlens.errors import UsageError
from rhlens.run.merge import merge_shards
from rhlens.run.results import load_scores
from rhlens.run.samplelog import SampleLog, read_log
from rhlens.run.shard import Shard, launcher_device

GRID = ["--model", "tiny-llama", "--lengths", "160,200", "--depths", "0.2,0.8", "--needles", "2",
        "--max-new-tokens", "3"]


def score(files, out, *extra):
    return ["score", *GRID, "--rouge-gate", "-1", "--haystack", files / "hay.txt", "--out", out,
            *extra]


def niah(files, out, *extra):
    return ["niah", *GRID, "--haystack", files / "hay.txt", "--scores", files / "scores.json",
            "--skip-needles", "0", "--out", out, *extra]


def same_files(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes()
    assert Path(f"{a}.samples.jsonl").read_bytes() == Path(f"{b}.samples.jsonl").read_bytes()


# --------------------------------------------------------------------------- the shard itself


def test_shards_partition_the_grid():
    items = list(range(11))
    parts = [Shard(i, 3).select(items) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    assert [len(p) for p in parts] == [4, 4, 3]
    assert Shard(3, 4).select([1, 2]) == []


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_bad_shards_are_usage_errors(text):
    with pytest.raises(UsageError):
        Shard.parse(text)


def test_launcher_environment():
    assert Shard.resolve(None, env={"RANK": "3", "WORLD_SIZE": "4"}) == Shard(3, 4)
    assert Shard.resolve(None, env={"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert Shard.resolve("1/2", env={"RANK": "3", "WORLD_SIZE": "4"}) == Shard(1, 2)
    with pytest.raises(UsageError, match="integers"):
        Shard.from_env({"RANK": "x", "WORLD_SIZE": "2"})
    assert launcher_device({}) is None
    want = "cuda:1" if torch.cuda.is_available() else None
    assert launcher_device({"LOCAL_RANK": "1"}) == want


def test_output_names_never_collide():
    names = {Shard(i, n).output(p) for n in (2, 3) for i in range(n)
             for p in ("runs/scores.json", "runs/niah.csv")}
    assert len(names) == 10
    assert Shard(0, 2).output("runs/scores.json") == "runs/scores.shard0of2.json"


# --------------------------------------------------------------------------- merge = one process


def test_two_score_shards_merge_into_the_unsharded_files(files, monkeypatch, cli):
    full, out = files / "full.json", files / "s.json"
    assert cli(*score(files, full))[0] == 0
    rc, text, _ = cli(*score(files, out, "--shard", "0/2"))
    assert rc == 0 and "rhlens merge --out" in text
    # the second shard as a launcher starts it: RANK/WORLD_SIZE, no --shard
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli(*score(files, out))[0] == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    shards = [files / "s.shard0of2.json", files / "s.shard1of2.json"]
    logs = [read_log(f"{s}.samples.jsonl") for s in shards]
    assert [len(records) for _, records in logs] == [4, 4]  # each ran its half only
    assert not out.exists()
    merged = files / "merged.json"
    rc, text, _ = cli("merge", "--out", merged, *reversed(shards))
    assert rc == 0 and "8/8 samples" in text
    same_files(merged, full)
    # the merged log is the whole run's: an unsharded rerun resumes without a new sample
    before = merged.read_bytes()
    assert cli(*score(files, merged))[0] == 0
    assert merged.read_bytes() == before
    assert len(Path(f"{merged}.samples.jsonl").read_text().splitlines()) == 9


def test_two_niah_shards_merge_into_the_unsharded_csv(files, cli):
    full, out = files / "full.csv", files / "n.csv"
    mask = ["--mask-top", "1"]
    assert cli(*niah(files, full, *mask))[0] == 0
    for i in range(2):
        assert cli(*niah(files, out, *mask, "--shard", f"{i}/2"))[0] == 0
    shards = [files / f"n.shard{i}of2.csv" for i in range(2)]
    assert cli("merge", "--out", files / "m.csv", *shards)[0] == 0
    same_files(files / "m.csv", full)
    # the shards' logs may be named instead of their CSVs
    assert cli("merge", "--out", files / "m2.csv",
               *(f"{s}.samples.jsonl" for s in shards))[0] == 0
    assert (files / "m2.csv").read_bytes() == full.read_bytes()


def test_merge_keeps_the_grid_order_of_distinct_scores(tmp_path):
    """With scores that differ per sample (random weights score 0), the merged score file lists
    them in the order one process would have."""
    keys = [f"needle|{n}|0.5|fp{n}" for n in range(5)]
    records = [{"key": k, "needle": "n", "length": 100 + i, "depth": 0.5, "answer": "a",
                "rouge": 1.0, "scores": [[i / 10, 0.0], [0.0, 1 - i / 10]], "passed": i != 2}
               for i, k in enumerate(keys)]
    settings = {"model": "m", "mode": "paper"}
    for i in range(2):
        shard = Shard(i, 2)
        log = SampleLog(tmp_path / f"s.shard{i}of2.json.samples.jsonl", settings,
                        part=shard.part(keys, "score"))
        for r in shard.select(records)[::-1]:  # finished in another order than the grid's
            log.add(dict(r))
    whole = SampleLog(tmp_path / "one.json.samples.jsonl", settings)
    for r in records:
        whole.add(dict(r))
    merge_shards([tmp_path / "s.shard1of2.json", tmp_path / "s.shard0of2.json"],
                 tmp_path / "m.json")
    assert Path(f"{tmp_path}/m.json.samples.jsonl").read_bytes() == \
        Path(f"{tmp_path}/one.json.samples.jsonl").read_bytes()
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["0-0"] == [0.0, 0.1, 0.3, 0.4]
    assert got["1-1"] == [1.0, 0.9, 0.7, 0.6]
    assert torch.allclose(load_scores(tmp_path / "m.json"),
                          torch.tensor([[0.2, 0.0], [0.0, 0.8]]))


def test_more_shards_than_samples(files, cli):
    small = ["--lengths", "160", "--depths", "0.5", "--needles", "1"]
    out = files / "tiny.json"
    for i in range(2):
        assert cli(*score(files, out, *small, "--shard", f"{i}/2"))[0] == 0
    assert cli(*score(files, files / "one.json", *small))[0] == 0
    assert cli("merge", "--out", files / "m.json",
               *(files / f"tiny.shard{i}of2.json" for i in range(2)))[0] == 0
    same_files(files / "m.json", files / "one.json")


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def shards(files, cli):
    """Two finished score shards of the grid, and a third of another split."""
    out = files / "s.json"
    for i in range(2):
        assert cli(*score(files, out, "--shard", f"{i}/2"))[0] == 0
    return [files / "s.shard0of2.json", files / "s.shard1of2.json"]


def test_merge_refuses_what_is_not_one_run(files, shards, cli, one_error):
    merged = files / "m.json"
    # a shard missing, or given twice
    assert "shard 1/2 of 2 missing" in one_error("merge", "--out", merged, shards[0])
    assert "given twice" in one_error("merge", "--out", merged, shards[0], shards[0])
    # overlapping shards of another split
    assert cli(*score(files, files / "s.json", "--shard", "0/3"))[0] == 0
    err = one_error("merge", "--out", merged, shards[0], files / "s.shard0of3.json")
    assert "other shards" in err
    # a shard of another run (other settings: the ROUGE gate)
    assert cli(*score(files, files / "g.json", "--shard", "1/2", "--rouge-gate",
                              "-0.5"))[0] == 0
    err = one_error("merge", "--out", merged, shards[0], files / "g.shard1of2.json")
    assert "another run" in err and "rouge_gate" in err
    # a shard of another model (its identity differs)
    assert cli("score", *GRID[2:], "--model", "tiny-mistral", "--rouge-gate", "-1",
               "--haystack", files / "hay.txt", "--out", files / "q.json", "--shard",
               "1/2")[0] == 0
    err = one_error("merge", "--out", merged, shards[0], files / "q.shard1of2.json")
    assert "another run" in err and "tiny-mistral" in err
    # a score shard with a NIAH shard
    assert cli(*niah(files, files / "n.csv", "--shard", "1/2"))[0] == 0
    err = one_error("merge", "--out", merged, shards[0], files / "n.shard1of2.csv")
    assert "different runs" in err
    # no shard at all: an unsharded run's output, or no file
    assert cli(*score(files, files / "one.json"))[0] == 0
    assert "not a shard" in one_error("merge", "--out", merged, files / "one.json")
    assert "does not exist" in one_error("merge", "--out", merged, files / "nope.json")
    assert not merged.exists() and not Path(f"{merged}.samples.jsonl").exists()


def test_merge_refuses_an_unfinished_shard(files, shards, cli, one_error):
    log = Path(f"{shards[1]}.samples.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][:20])  # cut while writing the last sample
    err = one_error("merge", "--out", files / "m.json", *shards)
    assert "finished 3 of its 4 samples" in err and "rerun" in err
    assert cli(*score(files, files / "s.json", "--shard", "1/2"))[0] == 0  # resumes
    assert len(read_log(log)[1]) == 4
    assert cli("merge", "--out", files / "m.json", *shards)[0] == 0


def test_merge_does_not_replace_out_without_force(files, shards, cli, one_error):
    merged = files / "m.json"
    merged.write_text("keep")
    err = one_error("merge", "--out", merged, *shards)
    assert err.endswith("exists; pass --force to replace it, or another --out.")
    assert merged.read_text() == "keep"
    assert "overwrite the shard" in one_error("merge", "--out", shards[0], *shards)
    # nor through a link: a symlink to a shard, or a hard link of a shard's log as the merged log
    log = Path(f"{shards[1]}.samples.jsonl")
    before = log.read_bytes(), shards[0].read_bytes()
    (files / "link.json").symlink_to(shards[0])
    assert "overwrite the shard" in one_error("merge", "--out", files / "link.json", "--force",
                                              *shards)
    os.link(log, files / "h.json.samples.jsonl")
    assert "overwrite the shard" in one_error("merge", "--out", files / "h.json", "--force",
                                              *shards)
    assert (log.read_bytes(), shards[0].read_bytes()) == before
    assert cli("merge", "--out", merged, "--force", *shards)[0] == 0
    assert load_scores(merged).shape == (2, 4)


def test_shard_flag_errors_come_before_the_model(files, monkeypatch, one_error):
    import rhlens.models.loading

    monkeypatch.setattr(rhlens.models.loading, "load_model", lambda *a, **k: pytest.fail("loaded"))
    err = one_error(*score(files, files / "s.json", "--shard", "2/2"))
    assert err.startswith("rhlens score: error: --shard 2/2 does not exist")
    err = one_error(*niah(files, files / "n.csv", "--shard", "x"))
    assert "--shard 'x' is not i/n" in err
    err = one_error(*niah(files, files / "n.csv", "--shard", "0/2", "--sweep-k", "0,1"))
    assert "--shard cannot be combined with --sweep-k" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    assert "--shard 5/2 does not exist" in one_error(*score(files, files / "s.json"))


def _edit_log(log: Path, line: int, **changes) -> None:
    """Change fields of line ``line`` (0: the header) of a sample log."""
    lines = log.read_text().splitlines()
    obj = json.loads(lines[line])
    if line == 0:
        obj["shard"].update(changes)
    else:
        obj.update(changes)
    lines[line] = json.dumps(obj)
    log.write_text("\n".join(lines) + "\n")


#: Fields of the right name and the wrong type, with what the error says.
DAMAGED = [
    # a record with a field of the wrong type is not finished: a resume redoes it
    (1, {"passed": "yes"}, "has finished 3 of its 4 samples"),
    (1, {"passed": None}, "has finished 3 of its 4 samples"),
    (1, {"passed": True, "scores": [[0.1, 0.2], [0.3]]}, "has finished 3 of its 4 samples"),
    (1, {"passed": True, "scores": None}, "has finished 3 of its 4 samples"),
    (1, {"length": "160"}, "has finished 3 of its 4 samples"),
    (0, {"index": None}, "its index is None"),
    (0, {"count": "2"}, "its count is '2'"),
    (0, {"keys": [1, 2, 3, 4]}, "its shard or keys do not fit"),
]


def test_merge_refuses_records_present_but_wrong(files, shards, one_error):
    """A field of the right name and the wrong type: one line, and neither the merged output
    nor its log is written (the log used to be written first, and left behind)."""
    log = Path(f"{shards[1]}.samples.jsonl")
    intact = log.read_bytes()
    merged = files / "m.json"
    for line, changes, message in DAMAGED:  # one pair of shards for all: each run costs seconds
        log.write_bytes(intact)
        _edit_log(log, line, **changes)
        err = one_error("merge", "--out", merged, *shards)
        assert message in err and "internal error" not in err, (changes, err)
        assert not merged.exists() and not Path(f"{merged}.samples.jsonl").exists()
