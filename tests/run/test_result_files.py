"""The files a run writes: they follow the umask, and a K sweep's per-run files are documented
and never shared between two seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def test_result_files_follow_the_umask(files, cli, score_args, niah_args):
    old = os.umask(0o022)
    try:
        out, csv = files / "u.json", files / "u.csv"
        assert cli(*score_args(files, out))[0] == 0
        assert cli(*niah_args(files, csv, "--needles", "1"))[0] == 0
        for p in (out, f"{out}.samples.jsonl", csv, f"{csv}.samples.jsonl"):
            assert Path(p).stat().st_mode & 0o777 == 0o644, p
        os.chmod(out, 0o640)  # a file the user restricted keeps its mode when rewritten
        Path(f"{out}.samples.jsonl").unlink()
        assert cli(*score_args(files, out))[0] == 0
        assert out.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_sweep_files_are_documented_and_negative_seeds_do_not_share_one(files, cli, niah_args):
    rc, out, _ = cli("niah", "--help")
    assert rc == 0 and "OUT.kK.randomSEED.csv" in " ".join(out.split())
    sweep = files / "sw.csv"
    assert cli(*niah_args(files, sweep, "--needles", "1", "--sweep-k", "1",
                                  "--seeds=-1,-2,-2"))[0] == 0
    names = sorted(p.name for p in files.iterdir() if p.name.startswith("sw.csv.k1"))
    assert names == ["sw.csv.k1.random-1.csv", "sw.csv.k1.random-1.csv.samples.jsonl",
                     "sw.csv.k1.random-2.csv", "sw.csv.k1.random-2.csv.samples.jsonl",
                     "sw.csv.k1.top.csv", "sw.csv.k1.top.csv.samples.jsonl"]
    df = pd.read_csv(sweep)
    assert sorted(df[df.kind == "random"].seed) == [-2, -1]
