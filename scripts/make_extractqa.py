#!/usr/bin/env python
"""Write the ExtractQA set rhlens ships: rhlens/data/ch07_extractqa.json.

The paper's ExtractQA asks questions about recent news passages (with QA pairs written by
GPT-4), so that a model cannot answer from memory. rhlens does the same offline: each passage
profiles an invented town (founder, river, mayor, export, dish...) among neutral sentences,
and the question's answer is a verbatim span of it
(:func:`rhlens.apps.tasks.make_qa_items`). The file is deterministic: the same arguments
write the same bytes, and a test checks that the shipped file is what this script writes.

Usage::

    python scripts/make_extractqa.py                     # 100 items, seed 0 (the shipped file)
    python scripts/make_extractqa.py --n 20 --seed 3 --out my_items.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rhlens, whatever is installed

from rhlens.apps.tasks import QA_DATA, make_qa_items, qa_items_json  # noqa: E402

#: The shipped file's arguments.
N, SEED, FILLER = 100, 0, 14


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=N, help=f"number of items ({N})")
    p.add_argument("--seed", type=int, default=SEED, help=f"generator seed ({SEED})")
    p.add_argument("--filler", type=int, default=FILLER,
                   help=f"neutral sentences per passage ({FILLER})")
    p.add_argument("--out", type=Path, default=ROOT / "rhlens" / "data" / QA_DATA)
    args = p.parse_args(argv)
    if args.n < 1 or args.filler < 0:
        p.error("--n must be at least 1 and --filler at least 0")
    items = make_qa_items(args.n, seed=args.seed, filler=args.filler)
    text = qa_items_json(items, generator="rhlens.apps.tasks.make_qa_items", n=args.n,
                         seed=args.seed, filler=args.filler, script="scripts/make_extractqa.py")
    args.out.write_text(text)
    print(f"wrote {len(items)} items to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
