"""The names of the files a run writes beside its output, in one place. It imports nothing
heavy, so the command line checks these paths (may they be written? are they another run's?)
before any model loads.

* ``OUT.samples.jsonl``: every sweep's resumable sample log (:mod:`rhlens.run.samplelog`);
* ``OUT.card.json``: a score file's map card (:mod:`rhlens.run.card`);
* ``OUT.kK.top.csv``, ``OUT.kK.randomSEED.csv``: one run of a K sweep
  (:func:`rhlens.intervene.niah.k_sweep`), each with its own sample log.

>>> log_path("runs/scores.json")
'runs/scores.json.samples.jsonl'
>>> k_sweep_part("runs/k.csv", 13, "top"), k_sweep_part("runs/k.csv", 13, "random", 1)
('runs/k.csv.k13.top.csv', 'runs/k.csv.k13.random1.csv')
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

#: A sample log's name beside its output.
LOG_SUFFIX = ".samples.jsonl"
#: A map card's name beside its score file.
CARD_SUFFIX = ".card.json"


def log_path(out: str | Path) -> str:
    """The sample log of the run whose output is ``out``."""
    return f"{out}{LOG_SUFFIX}"


def k_sweep_part(out: str | Path, k: int, kind: Literal["top", "random"], seed: int = -1) -> str:
    """The CSV of one run of a K sweep written to ``out``: the top-``k`` heads masked, or
    ``k`` random heads drawn with ``seed``."""
    return f"{out}.k{k}.{kind}{seed if kind == 'random' else ''}.csv"
