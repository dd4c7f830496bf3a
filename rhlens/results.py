"""Result files: atomic writes, resumable sample logs, and score files in the public format.

A score file is ``{"layer-head": [per-sample scores, ...]}``, exactly as the paper's public
code writes it, so its published files (e.g. ``Llama-2-7b-80k.json``) load with
:func:`load_scores` and compare directly with ours.

A long sweep appends one JSON line per finished sample to ``<out>.samples.jsonl`` (flushed
and fsync'ed) and rewrites the score file atomically (temporary file + ``os.replace``) after
each sample. Rerunning the same command skips the samples already in the log.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import torch


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def head_key(layer: int, head: int) -> str:
    """``"16-19"`` for layer 16, head 19: the public score files' key."""
    return f"{layer}-{head}"


def scores_to_json(per_sample: Iterable[torch.Tensor], n_layers: int, n_heads: int) -> dict:
    """``{"layer-head": [score of sample 1, ...]}`` from ``[n_layers, n_heads]`` maps."""
    maps = list(per_sample)
    return {
        head_key(l, h): [round(float(m[l, h]), 6) for m in maps]
        for l in range(n_layers)
        for h in range(n_heads)
    }


def load_scores(source: str | Path | dict) -> torch.Tensor:
    """Mean score per head, ``[n_layers, n_heads]``, from a score file, URL or dict.

    Heads whose list is empty get 0. The shape is inferred from the keys.

    >>> load_scores({"0-0": [1.0, 0.5], "0-1": [], "1-0": [0.2], "1-1": [0.0]})
    tensor([[0.7500, 0.0000],
            [0.2000, 0.0000]])
    """
    if isinstance(source, dict):
        data = source
    else:
        text = _read(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source} is not JSON: {err}") from err
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{source!r} holds no scores: expected {{'layer-head': [scores]}}.")
    try:
        keys = [tuple(map(int, k.split("-"))) for k in data]
    except ValueError as err:
        raise ValueError(f"Score keys must look like 'layer-head', e.g. '16-19' ({err}).") from err
    n_layers = max(k[0] for k in keys) + 1
    n_heads = max(k[1] for k in keys) + 1
    out = torch.zeros(n_layers, n_heads)
    for (l, h), values in zip(keys, data.values()):
        values = values if isinstance(values, list) else [values]
        out[l, h] = sum(values) / len(values) if values else 0.0
    return out


def _read(source: str | Path) -> str:
    s = str(source)
    if s.startswith(("http://", "https://")):
        with urllib.request.urlopen(s, timeout=60) as resp:  # noqa: S310 (user-given URL)
            return resp.read().decode()
    path = Path(s)
    if not path.exists():
        raise FileNotFoundError(f"Score file {path} does not exist; make one with `rhlens score`.")
    return path.read_text()


class SampleLog:
    """Append-only JSON-lines log of finished samples, used to resume a sweep.

    The first line is a header with the run's settings; resuming with other settings raises,
    rather than mixing two runs in one file. A torn last line (a crash mid-write) is ignored.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any]):
        self.path = Path(path)
        self.settings = settings
        self.records: dict[str, dict] = {}
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"settings": settings})

    def _load(self) -> None:
        lines = self.path.read_text().splitlines()
        good: list[str] = []
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # torn final write: drop it
                raise ValueError(f"{self.path} line {i + 1} is corrupt; delete the file to restart.")
            good.append(line)
            if i == 0:
                if obj.get("settings") != self.settings:
                    raise ValueError(
                        f"{self.path} was written by a run with other settings:\n"
                        f"  theirs: {obj.get('settings')}\n  ours:   {self.settings}\n"
                        "Use another `out` file, or delete the file to start over."
                    )
            else:
                self.records[obj["key"]] = obj
        if len(good) != len(lines):
            atomic_write_text(self.path, "\n".join(good) + "\n")

    def _append(self, obj: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, record: dict) -> None:
        """Log one finished sample (a dict with a unique ``key``)."""
        self._append(record)
        self.records[record["key"]] = record
