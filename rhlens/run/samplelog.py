"""Resumable sample logs: a long sweep loses nothing when interrupted, and reuses only what
is truly the same run.

A sweep appends one JSON line per finished sample to ``<out>.samples.jsonl`` (flushed and
fsync'ed). Rerunning the same command skips the samples already in the log. A sample's key
holds a fingerprint of its prompt and answer (:attr:`rhlens.niah.prompts.Sample.key`), and the
log's header the run's settings (the model and a fingerprint of its weights, dtype,
device...: :func:`model_identity`), so a rerun reuses only samples that would come out the
same. A log with a torn or empty header is repaired from the run's settings, keeping the
finished samples that match.

A shard's log (:mod:`rhlens.run.shard`) also names, beside the settings, which part of the grid it
holds; that is not part of the run's identity, so the shards of one run log the same settings
as a single process, and :func:`write_log` joins them into its log.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..files import MAX_LOG_BYTES, read_bytes
from .results import atomic_write_text

#: Version of the sample-log format: logs of other versions are not resumed.
LOG_FORMAT = 2


# --------------------------------------------------------------------------- run identity


def text_digest(text: str | bytes) -> str:
    """A short sha256 of ``text`` (16 hex digits)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:16]


def tensor_digest(t: torch.Tensor | None) -> str | None:
    """A short sha256 of a tensor's shape and values (``None`` for ``None``)."""
    if t is None:
        return None
    t = t.detach().float().cpu().contiguous()
    return text_digest(f"{tuple(t.shape)}".encode() + t.numpy().tobytes())


def logged_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A run's settings as a sample log's header holds them: with the log's format version,
    as JSON reads them back."""
    return json.loads(json.dumps({"log_format": LOG_FORMAT, **settings}))


def run_digest(settings: dict[str, Any]) -> str:
    """The digest of a run that every record of its sample log carries (``settings`` as the
    log's header holds them, :func:`logged_settings`)."""
    return text_digest(json.dumps(settings, sort_keys=True))


#: Bytes of a tensor moved to the CPU and hashed at a time: bounds the extra memory a
#: fingerprint takes for weights on an accelerator (a view, no copy, for weights on the CPU).
HASH_CHUNK_BYTES = 64 << 20


def weights_digest(model) -> str:
    """A digest (16 hex digits) of every weight of ``model``: each parameter's name, shape and
    dtype and *all* its bytes, in the model's own parameter order.

    Whole tensors, streamed, rather than file digests of the checkpoint: a model may come from
    the hub, a local directory, a GGUF file or be built in memory (the tiny test models), and
    may be edited after loading (a masked or patched copy); what a run computes with is the
    tensors, so the tensors are what is hashed. A sample of values is not enough: a checkpoint
    edited in one weight elsewhere would resume with stale answers. A bf16 (or any) tensor is
    hashed as its raw bytes (viewed as ``uint8``, no conversion), and a tensor on an
    accelerator is copied to the CPU :data:`HASH_CHUNK_BYTES` at a time. Weights on the
    ``meta`` device (not loaded) contribute their name, shape and dtype only.

    Cost: blake2b over the bytes, one core, about 0.67 GB/s on a shared 2-core machine (sha256
    and sha1 measured no faster there); the embedded SmolLM2-135M (float32, 0.54 GB) takes
    0.8 s, and a 7B model in bf16 (13.5 GB) projects to about 20 s plus its device-to-CPU copy
    (``python benchmarks/bench_fingerprint.py`` prints these figures on the machine at hand).
    It runs once per sweep, beside minutes of decoding.
    """
    hf = getattr(model, "original_model", model)
    h = hashlib.blake2b(digest_size=8)
    for name, p in hf.named_parameters():
        t = p.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.device.type == "meta" or t.numel() == 0:
            continue
        flat = t.reshape(-1)
        step = max(1, HASH_CHUNK_BYTES // flat.element_size())
        for i in range(0, flat.numel(), step):
            part = flat[i:i + step].to("cpu", copy=False).contiguous()
            h.update(part.view(torch.uint8).numpy().data)
    return h.hexdigest()


def model_identity(model) -> dict[str, str]:
    """What identifies a model's computation in a sample log: its name, dtype, device type
    and a fingerprint of all its weights (:func:`weights_digest`).

    A log written when the fingerprint sampled 64 values per tensor holds another fingerprint
    for the same weights: it is another run, refused like any log of other settings.
    """
    hf = getattr(model, "original_model", model)
    device = next((p.device for p in hf.parameters()), torch.device("cpu"))
    cfg = model.cfg
    dtype = getattr(cfg, "dtype", None) or next(hf.parameters()).dtype
    return {
        "model": str(cfg.model_name),
        "dtype": str(dtype).removeprefix("torch."),
        "device": device.type,
        "weights": weights_digest(model),
    }


# --------------------------------------------------------------------------- sample logs


#: What each field a record may hold must be (a resume and a merge reuse the record as it is).
_NUMBER = (int, float)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "key": (str,), "needle": (str,), "answer": (str,), "expected": (str,), "length": (int,),
    "depth": _NUMBER, "rouge": _NUMBER, "score": _NUMBER, "passed": (bool,), "skipped": (str,),
    "scores": (list, dict), "rows": (list,),
}


def wrong_field(obj: dict, fields: Iterable[str]) -> str | None:
    """The first of ``fields`` that ``obj`` holds with the wrong type (a ``null``, a string
    for a bool, a ragged score map), or ``None`` when all are right. ``scores`` is a score
    map (a list of equal rows of numbers) or a number per condition (a dict, a masking run's).

    >>> wrong_field({"key": "k", "passed": "yes"}, ["key", "passed"])
    'passed'
    >>> wrong_field({"scores": [[0.1, 0.2], [0.3]]}, ["scores"])
    'scores'
    >>> wrong_field({"scores": {"top|5|0": 100.0, "none|0|-1": "x"}}, ["scores"])
    'scores'
    """
    for f in fields:
        v = obj.get(f)
        want = FIELD_TYPES.get(f)
        if want is None:
            continue
        if not isinstance(v, want) or (isinstance(v, bool) and bool not in want):
            return f
        if f == "scores" and isinstance(v, list) and (not v or not all(
                isinstance(r, list) and len(r) == len(v[0])
                and all(isinstance(x, _NUMBER) and not isinstance(x, bool) for x in r)
                for r in v)):
            return f
        if f == "scores" and isinstance(v, dict) and not all(  # a score per condition (masking)
                isinstance(x, _NUMBER) and not isinstance(x, bool) for x in v.values()):
            return f
    return None


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


class SampleLog:
    """Append-only JSON-lines log of finished samples, used to resume a sweep.

    The first line is a header with the run's settings; resuming with other settings raises,
    rather than mixing two runs in one file. Every record also carries a digest of the
    settings, so the log can be repaired: a torn last line (a crash mid-write), unreadable or
    incomplete records (missing one of ``required``) are dropped and recomputed, and an
    empty file or a damaged header is rewritten from the settings when the records show they
    belong to this run. What was repaired is printed.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any],
                 required: Iterable[str] = ("key",), part: dict[str, Any] | None = None):
        self.path = Path(path)
        # which part of the grid a shard's log holds (:meth:`rhlens.run.shard.Shard.part`)
        self.part = json.loads(json.dumps(part)) if part is not None else None
        # as it reads back from the file; the format version refuses logs of older rhlens
        self.settings = logged_settings(settings)
        self.required = tuple(dict.fromkeys(("key", *required)))
        self.run = run_digest(self.settings)
        self.records: dict[str, dict] = {}
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a folder, not a sample log; pass another --out.")
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            if self.path.exists():
                _note(f"{self.path} was empty; wrote its header again.")
            self._write_header()

    def _header(self) -> dict[str, Any]:
        return {"settings": self.settings, **({"shard": self.part} if self.part else {})}

    def _write_header(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self._header()) + "\n")

    def _move_aside(self) -> Path:
        """Rename the log to ``<log>.old`` (``.old2``... if taken) and start a new one."""
        n, old = 1, self.path.with_name(self.path.name + ".old")
        while old.exists():
            n += 1
            old = self.path.with_name(f"{self.path.name}.old{n}")
        os.replace(self.path, old)
        self._write_header()
        return old

    def _mismatch(self, theirs: Any) -> UsageError:
        diffs = [f"{k} {theirs.get(k)!r} there, {self.settings.get(k)!r} here"
                 for k in sorted(set(theirs) | set(self.settings))
                 if theirs.get(k) != self.settings.get(k)]
        return UsageError(
            f"{self.path} was written by a run with other settings ({'; '.join(diffs)}); use "
            "another --out, or delete the file to start over."
        )

    def _load(self) -> None:
        lines = read_bytes(self.path, "Sample log", MAX_LOG_BYTES).decode(
            "utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0])
        except (ValueError, IndexError):
            header = None
        header_ok = isinstance(header, dict) and isinstance(header.get("settings"), dict)
        if header_ok and "log_format" not in header["settings"]:
            old = self._move_aside()
            _note(f"{self.path} was written by an older rhlens, whose samples cannot be checked "
                  f"against this run; moved it to {old.name} and starting over.")
            return
        if header_ok and header["settings"] != self.settings:
            raise self._mismatch(header["settings"])
        dropped: list[str] = []
        foreign = 0
        for i, line in enumerate(lines[1:], start=2):
            try:
                obj = json.loads(line)
            except ValueError:
                dropped.append(f"line {i} ({'torn' if i == len(lines) else 'not JSON'})")
                continue
            if not isinstance(obj, dict):
                dropped.append(f"line {i} (not a record)")
                continue
            lacks = [f for f in self.required if f not in obj]
            if lacks or not isinstance(obj.get("key"), str):
                dropped.append(f"line {i} (no {', '.join(map(repr, lacks or ['key']))})")
                continue
            wrong = wrong_field(obj, self.required)
            if wrong:
                dropped.append(f"line {i} (a wrong {wrong!r})")
                continue
            if obj.pop("run", None) != self.run:
                foreign += 1
                continue
            self.records[obj["key"]] = obj
        if not header_ok and foreign:
            raise UsageError(
                f"{self.path} has a damaged header and {foreign} of its samples come from a "
                "run with other settings; use another --out, or delete the file to start over."
            )
        if foreign:
            dropped.append(f"{foreign} record(s) of another run")
        new_part = header_ok and self.part is not None and header.get("shard") != self.part
        if header_ok and not dropped and not new_part:
            return
        repaired = [] if header_ok else ["rewrote its damaged header from this run's settings"]
        if dropped:
            repaired.append(f"dropped {', '.join(dropped)}, to be recomputed")
        atomic_write_text(self.path, "".join(
            json.dumps(obj) + "\n"
            for obj in [self._header(), *({**r, "run": self.run} for r in self.records.values())]))
        if repaired:
            _note(f"repaired {self.path}: {', '.join(repaired)}; kept {len(self.records)} "
                  "finished sample(s).")

    def _append(self, obj: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def check_keys(self, keys: Iterable[str]) -> None:
        """Refuse to resume when the log holds a sample of the same grid point (needle text,
        length, depth: a key less its last ``|``-field, the prompt's fingerprint) made from
        another prompt or answer."""
        made = {k.rsplit("|", 1)[0]: r for k, r in self.records.items()}
        for key in keys:
            base = key.rsplit("|", 1)[0]
            if key not in self.records and base in made:
                rec = made[base]
                needle = str(rec.get("needle", base.split("|")[0]))
                needle = needle if len(needle) <= 48 else needle[:45] + "..."
                raise UsageError(
                    f"{self.path} holds the sample of needle {needle!r} at length "
                    f"{rec.get('length')}, depth {rec.get('depth')} made from another prompt "
                    "or answer (the haystack, the needle file or the tokenizer changed); use "
                    "another --out, or delete the file to start over."
                )

    def add(self, record: dict) -> None:
        """Log one finished sample (a dict with a unique ``key``)."""
        self._append({**record, "run": self.run})
        self.records[record["key"]] = record


def read_log(path: str | Path) -> tuple[dict[str, Any], dict[str, dict]]:
    """The header (``{"settings": ..., "shard": ...}``) and the finished records of a sample
    log, by key, as a resume would reuse them: lines that are torn, not records, or of
    another run are left out.

    Raises:
        UsageError: the file's header is unreadable (not a sample log, or torn).
    """
    lines = read_bytes(path, "Sample log", MAX_LOG_BYTES).decode(
        "utf-8", errors="replace").splitlines()
    try:
        header = json.loads(lines[0])
    except (ValueError, IndexError):
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("settings"), dict):
        raise UsageError(f"{path} has no readable header: not a sample log, or a damaged one "
                         "(rerun its command to repair it).")
    run = run_digest(header["settings"])
    records: dict[str, dict] = {}
    for line in lines[1:]:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if (isinstance(obj, dict) and isinstance(obj.get("key"), str)
                and wrong_field(obj, obj) is None and obj.pop("run", None) == run):
            records[obj["key"]] = obj
    return header, records


def write_log(path: str | Path, settings: dict[str, Any], records: Iterable[dict]) -> None:
    """Write (atomically) the sample log a run with ``settings`` (as a log's header holds
    them) leaves after finishing ``records`` in that order, as :class:`SampleLog` writes it."""
    run = run_digest(settings)
    atomic_write_text(path, "".join(json.dumps(obj) + "\n" for obj in
                                    [{"settings": settings}, *({**r, "run": run} for r in records)]))
