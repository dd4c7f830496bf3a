#!/usr/bin/env python
"""Reduce the paper's published score files to the figures rhlens ships.

The paper (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality",
arXiv 2404.15574) published one score file per model in the ``head_score/`` folder of its
repository (https://github.com/nightdessert/Retrieval_Head, commit
7ea1f00a85825f0b3619a233f924c698b9d03a9f). Each file is ``{"layer-head": [score per sample]}``
over the samples that passed the public code's ROUGE gate, scored with the public code's
summing score (a sample can score above 1).

The repository states no license, so rhlens does not copy those files. This script reads
them and writes only derived figures, per model, to ``rhlens/data/published_heads.json``:

* ``mean``: each head's mean score over the samples (the score map; 6 decimals);
* ``count_above_0`` / ``count_above_0_1``: on how many samples the head scored > 0 (it
  copied at least one needle token) and > 0.1;
* ``max``: the head's largest score on one sample (6 decimals);
* ``samples``: the number of samples, and ``silent_samples``: samples on which no head
  scored above 0;
* the model's layers x heads, the source file's name and its SHA-256.

Usage::

    python scripts/derive_published.py HEAD_SCORE_DIR [--out rhlens/data/published_heads.json]

where ``HEAD_SCORE_DIR`` is the ``head_score/`` folder of the paper's repository
(nightdessert/Retrieval_Head, commit 7ea1f00a85825f0b3619a233f924c698b9d03a9f). The script
checks that rounding moved no head across 0, 0.1 or 0.5, so every share computed from the
shipped data equals the share of the raw file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPOSITORY = "https://github.com/nightdessert/Retrieval_Head"
COMMIT = "7ea1f00a85825f0b3619a233f924c698b9d03a9f"
PAPER = ("Wu, Wang, Xiao, Peng, Fu (2024). Retrieval Head Mechanistically Explains "
         "Long-Context Factuality. arXiv:2404.15574")

#: rhlens short name (as in `rhlens models`) -> file name in ``head_score/``.
FILES = {
    "llama-2-7b-80k": "llama-2-7b-80k.json",
    "llama-2-13b-64k": "llama-2-13b-64k.json",
    "mistral-7b-v0.2": "Mistral-7B-v0.2-hf.json",
    "mixtral-8x7b": "Mixtral-8x7B-v0.1.json",
    "qwen1.5-14b": "Qwen1.5-14B.json",
    "qwen1.5-14b-chat": "Qwen1.5-14B-Chat.json",
    "yi-6b-200k": "Yi-6B-200K.json",
}
DECIMALS = 6


def derive(path: Path) -> dict:
    """The derived figures of one raw score file (see the module docstring)."""
    raw = path.read_bytes()
    data = json.loads(raw)
    keys = [tuple(int(x) for x in k.split("-")) for k in data]
    n_layers, n_heads = max(k[0] for k in keys) + 1, max(k[1] for k in keys) + 1
    if len(keys) != n_layers * n_heads or len(set(keys)) != len(keys):
        raise ValueError(f"{path.name}: expected one list per head of {n_layers} x {n_heads}.")
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        raise ValueError(f"{path.name}: heads have different sample counts {sorted(lengths)}.")
    (samples,) = lengths
    grid = lambda: [[0] * n_heads for _ in range(n_layers)]  # noqa: E731
    mean, above0, above01, top = grid(), grid(), grid(), grid()
    exact_mean = {}
    for (l, h), values in zip(keys, data.values()):
        m = sum(values) / samples
        exact_mean[l, h] = m
        mean[l][h] = round(m, DECIMALS)
        above0[l][h] = sum(v > 0 for v in values)
        above01[l][h] = sum(v > 0.1 for v in values)
        top[l][h] = round(max(values), DECIMALS)
    for (l, h), m in exact_mean.items():
        for t in (0.0, 0.1, 0.5):
            if (m > t) != (mean[l][h] > t):
                raise ValueError(f"{path.name}: rounding moves head {l}-{h} ({m!r}) across {t}.")
    columns = list(zip(*data.values()))  # one tuple per sample: every head's score
    silent = sum(1 for col in columns if not any(v > 0 for v in col))
    return {
        "file": path.name,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "n_layers": n_layers,
        "n_heads": n_heads,
        "samples": samples,
        "silent_samples": silent,
        "mean": mean,
        "count_above_0": above0,
        "count_above_0_1": above01,
        "max": top,
    }


def dumps(doc: dict) -> str:
    """JSON with one layer per line (small diffs, readable), everything else indented."""
    out = ["{"]
    top = list(doc.items())
    for i, (key, value) in enumerate(top):
        comma = "," if i < len(top) - 1 else ""
        if key != "models":
            out.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
            continue
        out.append('  "models": {')
        models = list(value.items())
        for j, (name, rec) in enumerate(models):
            out.append(f"    {json.dumps(name)}: {{")
            fields = list(rec.items())
            for k, (field, v) in enumerate(fields):
                c = "," if k < len(fields) - 1 else ""
                if isinstance(v, list):
                    rows = ",\n".join("        " + json.dumps(row, separators=(",", ":"))
                                      for row in v)
                    out.append(f"      {json.dumps(field)}: [\n{rows}\n      ]{c}")
                else:
                    out.append(f"      {json.dumps(field)}: {json.dumps(v)}{c}")
            out.append("    }" + ("," if j < len(models) - 1 else ""))
        out.append("  }" + comma)
    out.append("}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("head_score_dir", type=Path,
                        help="the head_score/ folder of the paper's repository "
                             f"(nightdessert/Retrieval_Head, commit {COMMIT})")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "rhlens/data/published_heads.json")
    args = parser.parse_args(argv)
    missing = [f for f in FILES.values() if not (args.head_score_dir / f).is_file()]
    if missing:
        print(f"{args.head_score_dir} lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    doc = {
        "description": "Derived figures of the paper's published retrieval-score files: per "
                       "head, the mean score over samples, the number of samples on which it "
                       "scored > 0 and > 0.1, and its largest score; per model, the sample "
                       "count. Not the per-sample scores themselves.",
        "paper": PAPER,
        "source": f"{REPOSITORY}, folder head_score/, commit {COMMIT}",
        "license": "The source repository states no license; only derived figures are "
                   "shipped here, with attribution to the paper and its repository.",
        "score": "the public code's summing score (1/|needle| per copying step, no "
                 "de-duplication; can exceed 1), over the samples that passed its ROUGE gate",
        "derived_by": "scripts/derive_published.py",
        "models": {name: derive(args.head_score_dir / f) for name, f in FILES.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(doc))
    json.loads(args.out.read_text())  # the writer's output parses back
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB, {len(FILES)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
