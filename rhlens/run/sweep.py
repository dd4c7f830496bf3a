"""The one resumable sweep: every experiment that runs a model over many prompts (a detection,
a NIAH run with masks, a patching run) is a :class:`Sweep` over the samples of its config.

A sweep is configured by one frozen dataclass per kind of run (:class:`~rhlens.score.detect.ScoreConfig`,
:class:`~rhlens.intervene.niah.NiahConfig`, :class:`~rhlens.intervene.patch_sweep.PatchConfig`),
validated when it is made. What makes two runs the same run is :func:`run_identity` of the
config (``dataclasses.asdict`` of it, reduced to the fields that decide a sample's result)
together with the model's identity; that is the header of the sample log, so a rerun resumes
only a run that would give the same samples, and refuses another (:mod:`rhlens.run.samplelog`).

:meth:`Sweep.run` is the loop all of them share: read the log, check its samples against the
grid, skip the finished ones, measure the others one by one, append each to the log (flushed),
and rewrite the output file atomically after each (:mod:`rhlens.run.outputs`), until the samples
run out or the sweep says it has what it needs (:meth:`Sweep.done`: a detection
``--until-stable``). A sweep with a :attr:`~Sweep.batch_size` above 1 (or ``"auto"``,
:func:`rhlens.run.batch.auto_batch_size`) measures up to that many pending samples of one length
at once (:meth:`Sweep.measure_batch`), and still logs and writes each record in the run's order,
as one at a time does. With a :class:`~rhlens.run.shard.Shard`
it runs only that shard's samples, and its log names the shard for
:func:`~rhlens.run.merge.merge_shards`.

A config field marks itself as not part of the identity with ``metadata={"identity": False}``
(e.g. which prompts a run draws, when the sample keys already fingerprint them), or gives the
key the sample log knows it by with ``metadata={"identity": "mode"}``:

>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class Demo:
...     score_mode: str = field(default="paper", metadata={"identity": "mode"})
...     pairs: int = field(default=4, metadata={"identity": False})
>>> run_identity(Demo())
{'mode': 'paper'}
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from ..niah.prompts import Sample
from ..validate import BatchSize
from .batch import auto_batch_size
from .names import log_path
from .outputs import RunKind, write_output
from .samplelog import SampleLog, model_identity, tensor_digest
from .shard import Shard


def run_identity(config: Any) -> dict[str, Any]:
    """The JSON-ready identity of a run config: ``dataclasses.asdict(config)``, nested configs
    (a :class:`~rhlens.niah.grid.Grid`, a :class:`~rhlens.intervene.mask.Mask`) flattened into
    it, fields marked ``identity: False`` left out, tensors as their digest
    (:func:`~rhlens.run.samplelog.tensor_digest`)."""
    out: dict[str, Any] = {}
    _collect(config, dataclasses.asdict(config), out)
    return out


def _collect(obj: Any, data: dict[str, Any], out: dict[str, Any]) -> None:
    for f in dataclasses.fields(obj):
        key = f.metadata.get("identity", True)
        if key is False:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _collect(value, data[f.name], out)
            continue
        key = f.name if key is True else key
        if key in out:
            raise ValueError(f"{type(obj).__name__}.{f.name}: the run identity has {key!r} twice.")
        out[key] = _plain(data[f.name])


def _plain(value: Any) -> Any:
    """A value as JSON keeps it (tuples become lists, tensors their digest)."""
    if isinstance(value, torch.Tensor) or value is None:
        return tensor_digest(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Sweep(abc.ABC):
    """A resumable run of one model over the samples of one config.

    Subclasses say what kind of run they are (:attr:`kind`: the output file and the merge),
    which fields a logged record must have (:attr:`required`), and how to measure one sample
    (:meth:`measure`); :meth:`run` does the rest.

    Args:
        model: a ``TransformerBridge``.
        config: the run's frozen, validated config.
        out: output file (and ``<out>.samples.jsonl`` to resume from); ``None`` writes nothing.
        shard: run only this shard's samples (:meth:`~rhlens.run.shard.Shard.select`); ``out``
            is then the shard's own file (:meth:`~rhlens.run.shard.Shard.output`).
        progress: show a progress bar.
    """

    kind: ClassVar[RunKind]
    required: ClassVar[tuple[str, ...]] = ("key",)
    #: the progress bar's label
    label: str = "samples"
    #: how many pending samples of one length :meth:`measure_batch` takes at once
    #: (``"auto"``: :meth:`batch_for` asks :func:`~rhlens.run.batch.auto_batch_size`)
    batch_size: BatchSize = 1
    #: whether a sample's prefill runs through the hooked attention (a mask that covers it),
    #: which :func:`~rhlens.run.batch.auto_batch_size` counts
    eager_prefill: bool = False

    def __init__(self, model, config: Any, *, out: str | Path | None = None,
                 shard: Shard | None = None, progress: bool = True):
        self.model = model
        self.config = config
        self.out = out
        self.shard = shard
        self.progress = progress
        #: each record's place in the whole run (set by :meth:`run`: a shard's are spaced)
        self.positions: list[int] = []
        #: the run's identity, as its sample log's header holds it (set by :meth:`run`)
        self.settings: dict[str, Any] = {}
        #: which part of the grid a shard runs (:meth:`~rhlens.run.shard.Shard.part`, set by
        #: :meth:`run`; ``None`` for a whole run)
        self.part: dict[str, Any] | None = None
        self._auto: dict[int, int] = {}  # "auto" batch size per prompt length, chosen once

    def batch_for(self, sample: Sample) -> int:
        """How many samples of ``sample``'s length (it and later pending ones) are measured
        together: :attr:`batch_size`, or with ``"auto"`` what
        :func:`~rhlens.run.batch.auto_batch_size` chooses for the length the first time it
        is met (prompt and the grid's new tokens)."""
        if self.batch_size != "auto":
            return self.batch_size
        if sample.length not in self._auto:
            tokens = sample.length + self.config.grid.max_new_tokens
            self._auto[sample.length] = auto_batch_size(self.model, tokens,
                                                        eager_prefill=self.eager_prefill)
        return self._auto[sample.length]

    def identity(self) -> dict[str, Any]:
        """The sample log's settings: the model's identity and the config's."""
        return {**model_identity(self.model), **run_identity(self.config)}

    def samples(self) -> list[Sample]:
        """Every sample of the whole run, in its order (default: the config's grid)."""
        return self.config.grid.samples(self.model.tokenizer, self.model.cfg.n_ctx)

    @abc.abstractmethod
    def measure(self, sample: Sample) -> dict:
        """The JSON-ready record of one sample (with its ``key``)."""

    def measure_batch(self, samples: Sequence[Sample]) -> list[dict]:
        """The records of ``samples`` (all of one length), in order; default: one by one."""
        return [self.measure(s) for s in samples]

    def _measured(self, sample: Sample, pending: Sequence[Sample],
                  ahead: dict[str, dict]) -> dict:
        """``sample``'s record: measured already with an earlier batch, else measured now with
        up to :meth:`batch_for` - 1 later pending samples of its length (``pending``: the
        samples after ``sample`` not yet logged). The later ones wait in ``ahead`` for their
        turn, so the log and the output file see every record in the run's order, exactly as
        one at a time (a record measured ahead of a stop is dropped, as it was never asked
        for)."""
        if sample.key in ahead:
            return ahead.pop(sample.key)
        size = self.batch_for(sample)
        if size <= 1:
            return self.measure(sample)
        batch = [sample, *[s for s in pending if s.length == sample.length
                           and s.key not in ahead]][:size]
        records = self.measure_batch(batch)
        ahead.update((s.key, r) for s, r in zip(batch[1:], records[1:]))
        return records[0]

    def status(self, records: Sequence[dict]) -> dict[str, str]:
        """What the progress bar shows after each sample."""
        return {}

    def write(self, records: Sequence[dict], positions: Sequence[int]) -> None:
        """Rewrite the output file from the records so far."""
        assert self.out is not None
        write_output(self.kind, self.out, records, positions)

    def done(self, records: Sequence[dict]) -> bool:
        """Whether the sweep has what it needs after ``records`` and stops before the rest of
        its samples (asked after each sample, before the output is rewritten; default: it
        runs every sample)."""
        return False

    def run(self) -> list[dict]:
        """Measure every sample not already in the log (until :meth:`done`); returns every
        record, in order."""
        samples = self.samples()
        positions = list(range(len(samples)))
        if self.shard is not None:
            self.part = self.shard.part([s.key for s in samples], self.kind)
            samples, positions = self.shard.select(samples), self.shard.select(positions)
        self.positions = positions
        self.settings = self.identity()
        log = (SampleLog(log_path(self.out), self.settings, required=self.required,
                         part=self.part) if self.out else None)
        if log is not None:
            log.check_keys(s.key for s in samples)
        records: list[dict] = []
        pending = [s for s in samples if log is None or s.key not in log]
        place = {s.key: j for j, s in enumerate(pending)}
        ahead: dict[str, dict] = {}  # records measured with an earlier sample's batch
        bar = tqdm(samples, desc=self.label, unit="sample", disable=not self.progress)
        for sample in bar:
            if log is not None and sample.key in log:
                record = log.records[sample.key]
            else:
                record = self._measured(sample, pending[place[sample.key] + 1:], ahead)
                if log is not None:
                    log.add(record)
            records.append(record)
            bar.set_postfix(self.status(records))
            stop = self.done(records)
            if self.out:
                self.write(records, positions[: len(records)])
            if stop:
                bar.update(1)  # the bar counts a sample when the next one is asked for
                break
        bar.close()
        return records
