"""The file each kind of run writes from its finished samples' records.

A sweep (:mod:`rhlens.run.sweep`) rewrites its output after every sample, and
:func:`rhlens.run.merge.merge_shards` writes the merged output of a split run, with the same
function, so the two are byte for byte the same:

* ``"score"`` (``rhlens score``): a score file in the public code's format (:mod:`rhlens.run.results`),
  of the samples that passed the ROUGE gate;
* ``"niah"`` (``rhlens niah``): a CSV, one row per prompt (:data:`NIAH_COLUMNS` first);
* ``"patch"`` (``rhlens patch``): a CSV, one row per pair and measure (:data:`PATCH_COLUMNS`).

Each writer takes the records in the run's order and ``positions``, each record's place in the
whole run (a shard's records are every ``count``-th one; a patching run numbers its pairs so).

>>> import tempfile, os
>>> out = os.path.join(tempfile.mkdtemp(), "niah.csv")
>>> write_output("niah", out, [{"key": "k", "needle": "n", "length": 9, "depth": 0.5,
...                             "score": 100.0, "answer": "a", "expected": "a"}])
>>> open(out).read().splitlines()[0]
'needle,length,depth,score,answer,expected'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from .results import atomic_write_text, scores_to_json

#: The kinds of run that write sample logs (and so resume and split into shards).
RunKind = Literal["score", "niah", "patch"]

#: Leading columns of a NIAH run's CSV (then any constant columns a K sweep adds).
NIAH_COLUMNS = ["needle", "length", "depth", "score", "answer"]

#: Columns of a patching run's CSV, one row per (pair, measure, group or head). Rows of several
#: shards' CSVs concatenate (sort by ``pair`` to get the single run's order).
PATCH_COLUMNS = ["pair", "answer", "length", "depth", "measure", "direction", "kind", "seed",
                 "k", "heads", "ld_clean", "ld_cf", "ld", "value", "greedy_clean"]

Writer = Callable[[str | Path, Sequence[dict], Sequence[int]], None]


def write_scores(out: str | Path, records: Sequence[dict], positions: Sequence[int] = ()) -> None:
    """The score file of the records that passed the gate (nothing is written while none has)."""
    passed = [r for r in records if r["passed"]]
    if not passed:
        return
    maps = [torch.tensor(r["scores"]) for r in passed]
    n_layers, n_heads = maps[0].shape
    atomic_write_text(out, json.dumps(scores_to_json(maps, n_layers, n_heads)))


def niah_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """A NIAH run's table: :data:`NIAH_COLUMNS` first, the sample keys left out."""
    if not rows:  # e.g. a shard of a grid with fewer prompts than shards
        return pd.DataFrame(columns=NIAH_COLUMNS)
    df = pd.DataFrame(list(rows))
    if "key" in df:
        df = df.drop(columns="key")
    return df[NIAH_COLUMNS + [c for c in df.columns if c not in NIAH_COLUMNS]]


def write_niah(out: str | Path, records: Sequence[dict], positions: Sequence[int] = ()) -> None:
    """A NIAH run's CSV."""
    atomic_write_text(out, niah_frame(records).to_csv(index=False))


def patch_frame(records: Sequence[dict], positions: Sequence[int]) -> pd.DataFrame:
    """A patching run's table: each record's measures, numbered by the pair's place in the run."""
    rows = [{"pair": i, "answer": rec["expected"], "length": rec["length"],
             "depth": rec["depth"], **r} for i, rec in zip(positions, records) for r in rec["rows"]]
    return pd.DataFrame(rows, columns=PATCH_COLUMNS)


def write_patch(out: str | Path, records: Sequence[dict], positions: Sequence[int]) -> None:
    """A patching run's CSV."""
    atomic_write_text(out, patch_frame(records, positions).to_csv(index=False,
                                                                 float_format="%.6g"))


WRITERS: dict[str, Writer] = {"score": write_scores, "niah": write_niah, "patch": write_patch}


def write_output(kind: RunKind, out: str | Path, records: Sequence[dict],
                 positions: Sequence[int] | None = None) -> None:
    """Write the output of a ``kind`` run (positions default to ``0, 1, ...``)."""
    if kind not in WRITERS:
        raise ValueError(f"kind must be one of {tuple(WRITERS)}, got {kind!r}.")
    WRITERS[kind](out, records, range(len(records)) if positions is None else positions)
