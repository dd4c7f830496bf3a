"""``benchmarks/bench_speed.py`` measures the batch ratio on the README's demo grid: its grid is
``make demo``'s command, parsed as the command line parses it, with the command's defaults."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from rhlens.cli.args import SCORE_DEFAULTS
from rhlens.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_the_batch_ratio_runs_the_demo_grid(script):
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    (command,) = re.findall(r"rhlens (score [^\n]*)", makefile)
    args = build_parser().parse_args(shlex.split(command))
    demo = script("benchmarks/bench_speed.py").DEMO
    assert tuple(args.lengths) == demo["lengths"]
    assert tuple(args.depths) == demo["depths"]
    assert int(args.needles) == demo["needles"]
    assert (args.max_new_tokens or SCORE_DEFAULTS["max_new_tokens"]) == demo["max_new_tokens"]
    assert args.rouge_gate == demo["rouge_gate"]
