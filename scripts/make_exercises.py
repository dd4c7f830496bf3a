#!/usr/bin/env python
"""Write notebooks/exercises/NN_*.ipynb from the chapters: each marked solution becomes a stub.

Usage: python scripts/make_exercises.py   (or `make exercises`). Idempotent: a second run
changes nothing. See rhlens/exercises/generate.py for the convention.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rhlens, whatever is installed

from rhlens.book.exercises.generate import write  # noqa: E402

if __name__ == "__main__":
    changed = write(ROOT / "notebooks")
    for path in changed:
        print("wrote", path.relative_to(ROOT))
    print(f"{len(changed)} exercise notebook(s) changed")
