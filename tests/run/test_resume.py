"""Resuming a run: a rerun reuses only samples of the same run (same haystack, needles,
settings, weights), extends a grid, repairs a damaged log and refuses one of another run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from rhlens.errors import UsageError
from rhlens.niah.haystack import NEEDLES, needles_to_json
from rhlens.run.samplelog import SampleLog, read_log

# --------------------------------------------------------------------------- 1. resume


def test_resume_refuses_a_changed_haystack(files, cli, one_error, score_args, snapshot):
    out = files / "run" / "s.json"
    assert cli(*score_args(files, out))[0] == 0
    before = snapshot(out, f"{out}.samples.jsonl")
    args = score_args(files, out)
    args[args.index(files / "hay.txt")] = files / "hay2.txt"
    line = one_error(*args)
    assert "another prompt" in line and "haystack" in line and "--out" in line
    assert snapshot(out, f"{out}.samples.jsonl") == before


@pytest.mark.parametrize("field", ["answer", "question", "answer_prefix"])
def test_resume_refuses_an_edited_needle_file(files, field, cli, one_error, tiny_flags, snapshot):
    needle_file = files / "needles.json"
    needle_file.write_text(needles_to_json(list(NEEDLES[:1])))
    out = files / "nf.csv"
    args = ["niah", *tiny_flags, "--lengths", "160", "--haystack", files / "hay.txt",
            "--needle-file", needle_file, "--out", out]
    assert cli(*args)[0] == 0
    before = snapshot(out, f"{out}.samples.jsonl")
    raw = json.loads(needle_file.read_text())
    # an answer stays a part of the needle's text (else the file is refused when read)
    raw[0][field] = (raw[0][field].split()[-1] if field == "answer"
                     else raw[0][field] + " (edited)")
    needle_file.write_text(json.dumps(raw))
    line = one_error(*args)
    assert "needle file" in line and "another prompt or answer" in line
    assert snapshot(out, f"{out}.samples.jsonl") == before


def test_needle_file_whose_answer_is_not_in_its_text_is_a_usage_error(files, one_error, tiny_flags):
    needle_file = files / "needles.json"
    raw = json.loads(needles_to_json(list(NEEDLES[:2])))
    raw[1]["answer"] = "smoked walrus"  # words of the text, but not contiguous
    needle_file.write_text(json.dumps(raw))
    out = files / "bad.csv"
    line = one_error("niah", *tiny_flags, "--lengths", "160", "--haystack", files / "hay.txt",
                     "--needle-file", needle_file, "--out", out)
    assert str(needle_file) in line and "not a contiguous part" in line
    assert not out.exists()


def test_resume_extends_a_grid_and_refuses_other_settings(files, monkeypatch, cli, one_error, niah_args, snapshot):
    out = files / "g.csv"
    assert cli(*niah_args(files, out, "--needles", "1"))[0] == 0
    # same run, one more length: the finished sample is reused, the new one decoded
    assert cli(*niah_args(files, out, "--needles", "1", "--lengths", "160,200"))[0] == 0
    assert len(pd.read_csv(out)) == 2
    log = f"{out}.samples.jsonl"
    assert len(Path(log).read_text().splitlines()) == 3
    before = snapshot(out, log)
    line = one_error(*niah_args(files, out, "--needles", "1", "--max-new-tokens", "3"))
    assert "other settings" in line and "max_new_tokens 2 there, 3 here" in line
    line = one_error(*niah_args(files, out, "--needles", "1", "--mask-top", "1"))
    assert "heads [] there, [[1, 1]] here" in line
    assert snapshot(out, log) == before


def test_resume_refuses_changed_weights_and_dtype(tmp_path, hay):
    from rhlens.intervene.niah import run_niah
    from rhlens.models.tiny import tiny_model
    from rhlens.niah.grid import Grid

    grid = Grid([160], [0.5], NEEDLES[:1], hay, max_new_tokens=2)
    kw = dict(progress=False, out=tmp_path / "w.csv")
    run_niah(tiny_model("llama", seed=0), grid, **kw)
    with pytest.raises(UsageError, match="weights"):  # a checkpoint whose weights changed
        run_niah(tiny_model("llama", seed=1), grid, **kw)
    half = tiny_model("llama", seed=0)
    half.cfg.dtype = torch.bfloat16  # what a --dtype bfloat16 load records
    with pytest.raises(UsageError, match="dtype 'float32' there, 'bfloat16' here"):
        run_niah(half, grid, **kw)


def test_duplicate_grid_points_count_once(files, cli, score_args, niah_args):
    out = files / "dup.csv"
    assert cli(*niah_args(files, out, "--needles", "1", "--lengths", "160,160",
                                  "--depths", "0.5,0.50"))[0] == 0
    assert len(pd.read_csv(out)) == 1
    assert len(Path(f"{out}.samples.jsonl").read_text().splitlines()) == 2
    sc = files / "dup.json"
    assert cli(*score_args(files, sc, "--lengths", "160,160"))[0] == 0
    assert all(len(v) == 1 for v in json.loads(sc.read_text()).values())


def test_depths_past_print_precision_do_not_collide(files, cli, niah_args):
    out = files / "close.csv"
    assert cli(*niah_args(files, out, "--needles", "1",
                                  "--depths", "0.1234567,0.1234568"))[0] == 0
    assert pd.read_csv(out)["depth"].tolist() == [0.1234567, 0.1234568]
    assert len(Path(f"{out}.samples.jsonl").read_text().splitlines()) == 3


def test_interrupted_run_resumes_byte_identical(files, cli, score_args, niah_args):
    """Kept behaviour: a run cut after its first sample, rerun, equals an uninterrupted one."""
    full, cut = files / "full.csv", files / "cut.csv"
    args = ["--needles", "1", "--depths", "0.2,0.8"]
    assert cli(*niah_args(files, full, *args))[0] == 0
    assert cli(*niah_args(files, cut, *args))[0] == 0
    log = Path(f"{cut}.samples.jsonl")
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]) + '{"key": "to')
    cut.unlink()
    assert cli(*niah_args(files, cut, *args))[0] == 0
    assert cut.read_bytes() == full.read_bytes()
    sc_full, sc_cut = files / "full.json", files / "cut.json"
    assert cli(*score_args(files, sc_full, "--depths", "0.2,0.8"))[0] == 0
    assert cli(*score_args(files, sc_cut, "--depths", "0.2,0.8"))[0] == 0
    log = Path(f"{sc_cut}.samples.jsonl")
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
    assert cli(*score_args(files, sc_cut, "--depths", "0.2,0.8"))[0] == 0
    assert sc_cut.read_bytes() == sc_full.read_bytes()


def test_sample_log_with_a_bad_header_is_repaired(files, cli, score_args):
    out = files / "h.json"
    Path(f"{out}.samples.jsonl").write_text("[]\n")
    rc, _, err = cli(*score_args(files, out))
    assert rc == 0 and any("rewrote its damaged header" in line for line in err)
    header = json.loads(Path(f"{out}.samples.jsonl").read_text().splitlines()[0])
    assert header["settings"]["model"] == "tiny-llama"
    Path(f"{out}.samples.jsonl").write_text("")  # empty: header written again
    rc, _, err = cli(*score_args(files, out))
    assert rc == 0 and any("was empty" in line for line in err)


def test_torn_header_keeps_the_finished_samples(files, monkeypatch, cli, score_args):
    out = files / "t.json"
    assert cli(*score_args(files, out, "--depths", "0.2,0.8"))[0] == 0
    log = Path(f"{out}.samples.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0][:20] + "\n" + "".join(lines[1:]))  # the header torn
    before = out.read_bytes()

    import rhlens.score.detect

    def boom(*a, **k):
        raise AssertionError("a finished sample was decoded again")

    monkeypatch.setattr(rhlens.score.detect, "score_sample", boom)
    rc, _, err = cli(*score_args(files, out, "--depths", "0.2,0.8"))
    assert rc == 0 and any("kept 2 finished sample(s)" in line for line in err), err
    assert out.read_bytes() == before
    assert log.read_text().splitlines()[1:] == [l.rstrip("\n") for l in lines[1:]]


def test_torn_header_with_samples_of_another_run_is_refused(files, cli, one_error, score_args):
    out = files / "o.json"
    assert cli(*score_args(files, out))[0] == 0
    log = Path(f"{out}.samples.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("{torn\n" + "".join(lines[1:]))
    before = log.read_bytes()
    line = one_error(*score_args(files, out, "--max-new-tokens", "3"))
    assert "damaged header" in line and "other settings" in line
    assert log.read_bytes() == before


def test_record_lacking_a_field_is_recomputed(files, cli, score_args):
    out = files / "r.json"
    assert cli(*score_args(files, out))[0] == 0
    before = out.read_bytes()
    log = Path(f"{out}.samples.jsonl")
    header, record = log.read_text().splitlines()
    rec = json.loads(record)
    del rec["scores"]
    log.write_text(header + "\n" + json.dumps(rec) + "\n")
    rc, _, err = cli(*score_args(files, out))
    assert rc == 0 and any("dropped line 2 (no 'scores')" in line for line in err)
    assert out.read_bytes() == before  # recomputed to the same result


@pytest.mark.parametrize("field, value", [("passed", "yes"), ("passed", None),
                                          ("scores", [[0.1, 0.2], [0.3]]), ("scores", "0.5"),
                                          ("length", "160"), ("rouge", True)])
def test_record_with_a_field_of_the_wrong_type_is_recomputed(tmp_path, capsys, field, value):
    """A field present but wrong (a null, a string for a bool, a ragged map) is not reused by a
    resume, which would fail on it or carry it into the results; it is dropped and redone."""
    path = tmp_path / "s.samples.jsonl"
    fields = ("key", "length", "rouge", "scores", "passed")
    good = {"key": "n|160|0.5|aaaa", "length": 160, "rouge": 1.0, "scores": [[0.5, 0.0]],
            "passed": True}
    SampleLog(path, {"model": "m"}, required=fields).add(good)
    SampleLog(path, {"model": "m"}, required=fields).add({**good, "key": "n|160|0.9|bbbb",
                                                          field: value})
    assert list(read_log(path)[1]) == ["n|160|0.5|aaaa"]  # as a merge reads it
    capsys.readouterr()
    log = SampleLog(path, {"model": "m"}, required=fields)
    assert list(log.records) == ["n|160|0.5|aaaa"]
    assert f"dropped line 3 (a wrong {field!r})" in capsys.readouterr().err


def test_sample_log_api_repairs_and_refuses(tmp_path, capsys):
    path = tmp_path / "a.samples.jsonl"
    log = SampleLog(path, {"model": "m"})
    log.add({"key": "n|160|0.5|aaaa", "needle": "n", "length": 160, "depth": 0.5})
    with pytest.raises(UsageError, match="another prompt or answer"):
        SampleLog(path, {"model": "m"}).check_keys(["n|160|0.5|bbbb"])
    SampleLog(path, {"model": "m"}).check_keys(["n|160|0.5|aaaa", "n|200|0.5|cccc"])
    old = '{"settings": {"model": "m"}}\n{"key": "x"}\n'  # an older rhlens: moved aside
    path.write_text(old)
    log = SampleLog(path, {"model": "m"})
    assert "older rhlens" in capsys.readouterr().err and log.records == {}
    assert Path(f"{path}.old").read_text() == old
    assert json.loads(path.read_text())["settings"]["log_format"] == 2
