"""Other methods' head maps, read into rhlens's ``[n_layers, n_heads]`` map.

Three follow-ups of the paper choose heads their own way and publish what they chose. The
readers here convert their files (rather than copying them) into the float64 map every rhlens
function takes, so :mod:`rhlens.analyze.compare` correlates them with a retrieval-score map and
:meth:`rhlens.intervene.mask.Mask.top` masks their best heads. The formats assumed, precisely:

**DuoAttention** (Xiao et al. 2024), ``full_attention_heads.tsv``: the trained gate of every
*key/value* head, one line per layer, one tab-separated number per KV head (numpy's
``savetxt(..., delimiter="\\t")``, no header), shape ``[n_layers, n_kv_heads]``. A gate near 1
keeps the head's full KV cache (a retrieval head), near 0 lets it stream (attention sink and
recent tokens only). DuoAttention clips the gates to ``[0, 1]`` when it loads them; so does
:func:`load_duo_attention`. A two-layer model with two KV heads::

    1.000000000000000000e+00\t2.500000000000000139e-02
    3.100000000000000089e-01\t9.699999999999999734e-01

**HeadKV** (Fu et al. 2024), its head-score JSON: the retrieval-head format,
``{"layer-head": [score per sample, ...]}`` with *query* heads as keys (HeadKV's
retrieval-reasoning scores use it too); HeadKV averages each list and divides by the total.
:func:`load_headkv` averages (``normalize=True`` also divides, which changes neither ranks nor
correlations)::

    {"0-0": [0.5, 0.3], "0-1": [0.0, 0.0], "1-0": [0.9, 1.0], "1-1": [0.1, 0.0]}

**QRHead** (Zhang et al. 2025), a head list: the chosen *query* heads, best first, as a JSON
list of ``[layer, head]`` pairs or ``"layer-head"`` strings (``"L16H19"`` is read too), or a
text file with one head per line (``#`` starts a comment). A list carries ranks, not scores:
the ``i``-th of ``n`` listed heads (0-based) gets ``(n - i) / n`` and unlisted heads 0, so
``Mask.top(map, k)`` masks the list's first ``k`` heads; ``shape`` must be given, since a list
does not say how many heads the model has::

    [[20, 14], [15, 9], "17-3"]

**KV heads.** DuoAttention decides per KV head (a group of query heads shares one cache).
:func:`load_duo_attention` with ``n_heads`` *expands* the map to query heads, each query head
taking its group's gate (query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)``, as
transformers' ``repeat_kv`` lays them out), because every rhlens map, mask and comparison
indexes query heads: so ``Mask.top`` masks whole groups and ``compare`` pairs heads one to one.
Expansion repeats each value ``n_heads // n_kv_heads`` times, which credits a method with a
resolution it does not have; to compare at DuoAttention's own level, load it without
``n_heads`` (the ``[n_layers, n_kv_heads]`` map) and reduce the other map with
:func:`kv_heads` (``reduce="max"``: a KV head counts as much as its best query head).

Example::

    >>> import torch
    >>> kv = torch.tensor([[1.0, 0.0], [0.3, 0.9]])
    >>> expand_kv(kv, n_heads=4)
    tensor([[1.0000, 1.0000, 0.0000, 0.0000],
            [0.3000, 0.3000, 0.9000, 0.9000]], dtype=torch.float64)
    >>> kv_heads(expand_kv(kv, 4), n_kv_heads=2).equal(kv.double())
    True
    >>> head_list_map(["1-1", [0, 0]], shape=(2, 2))
    tensor([[0.5000, 0.0000],
            [0.0000, 1.0000]], dtype=torch.float64)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch

from ..errors import UsageError
from ..run.results import load_scores
from ..score.heads import Head, check_heads, parse_head

#: The file formats :func:`load_map` reads.
Format = Literal["duoattention", "headkv", "qrhead"]
FORMATS: tuple[Format, ...] = ("duoattention", "headkv", "qrhead")
#: DuoAttention's file name inside its pattern folder.
DUO_FILE = "full_attention_heads.tsv"


# --------------------------------------------------------------------------- KV heads


def _group(n_heads: int, n_kv_heads: int) -> int:
    if n_kv_heads < 1 or n_heads < n_kv_heads or n_heads % n_kv_heads:
        raise UsageError(f"n_heads {n_heads} is not a multiple of the {n_kv_heads} key/value "
                         "heads: pass the model's number of query heads.", arg="n_heads")
    return n_heads // n_kv_heads


def expand_kv(kv_map: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[n_layers, n_kv_heads]`` -> ``[n_layers, n_heads]``: each query head takes its KV
    head's value (query head ``h`` belongs to KV head ``h // (n_heads // n_kv_heads)``)."""
    g = _group(n_heads, kv_map.shape[1])
    return kv_map.double().repeat_interleave(g, dim=1)


def kv_heads(scores: torch.Tensor, n_kv_heads: int, reduce: str = "max") -> torch.Tensor:
    """``[n_layers, n_heads]`` -> ``[n_layers, n_kv_heads]``: each KV head's ``"max"`` (or
    ``"mean"``) over its query heads, to compare a query-head map at KV-head level."""
    if reduce not in ("max", "mean"):
        raise UsageError(f"reduce must be 'max' or 'mean', got {reduce!r}.", arg="reduce")
    g = _group(scores.shape[1], n_kv_heads)
    grouped = scores.double().reshape(scores.shape[0], n_kv_heads, g)
    return grouped.amax(-1) if reduce == "max" else grouped.mean(-1)


# --------------------------------------------------------------------------- readers


def _text(path: str | Path, what: str) -> tuple[Path, str]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist.")
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder; name the file in it.")
    try:
        return p, p.read_text("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {p} is not UTF-8 text.") from None


def load_duo_attention(path: str | Path, n_heads: int | None = None) -> torch.Tensor:
    """DuoAttention's gates as a map (format in the module docstring).

    Args:
        path: ``full_attention_heads.tsv``, or the pattern folder holding it.
        n_heads: the model's query heads: the map is expanded to ``[n_layers, n_heads]``;
            ``None`` keeps DuoAttention's ``[n_layers, n_kv_heads]``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / DUO_FILE
    p, text = _text(p, "DuoAttention gate file")
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(x) for x in line.strip().split("\t")]
        except ValueError:
            raise UsageError(f"{p}, line {i}: not tab-separated numbers (a DuoAttention "
                             f"{DUO_FILE} holds one gate per KV head, one line per layer).") from None
        if not all(math.isfinite(v) for v in values):
            raise UsageError(f"{p}, line {i}: a gate is not a finite number.")
        rows.append(values)
    if not rows:
        raise UsageError(f"{p} holds no gates.")
    if len({len(r) for r in rows}) != 1:
        raise UsageError(f"{p}: the layers list different numbers of KV heads "
                         f"({sorted({len(r) for r in rows})}); the file is damaged.")
    kv = torch.tensor(rows, dtype=torch.float64).clamp(0, 1)  # as DuoAttention loads them
    return kv if n_heads is None else expand_kv(kv, n_heads)


def load_headkv(path: str | Path, normalize: bool = False) -> torch.Tensor:
    """HeadKV's head-score JSON as a map: each head's mean score (``normalize``: divided by
    the sum over heads, as HeadKV weighs its budgets). Checked as
    :func:`rhlens.run.results.load_scores` checks a score file (sum-mode range)."""
    scores = load_scores(path).double()
    if normalize:
        total = scores.sum()
        if total <= 0:
            raise UsageError(f"{path}: every head scores 0, so the scores cannot be normalised.")
        scores = scores / total
    return scores


def head_list_map(heads: Iterable, shape: tuple[int, int]) -> torch.Tensor:
    """A ranked head list as a map: the ``i``-th of ``n`` heads gets ``(n - i) / n``, other
    heads 0 (format in the module docstring)."""
    parsed: list[Head] = []
    for item in heads:
        try:
            head = parse_head(item) if isinstance(item, str) else (int(item[0]), int(item[1]))
            if not isinstance(item, str) and len(item) != 2:
                raise ValueError
        except (ValueError, TypeError, IndexError):
            raise UsageError(f"head {item!r} is neither [layer, head] nor 'layer-head'.") \
                from None
        if head in parsed:
            raise UsageError(f"head {head[0]}-{head[1]} is listed twice.")
        parsed.append(head)
    n_layers, n_heads = (int(x) for x in shape)
    try:
        check_heads(parsed, n_layers, n_heads)
    except ValueError as err:
        raise UsageError(f"{err} (check shape).", arg="shape") from None
    out = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    n = len(parsed)
    for i, (l, h) in enumerate(parsed):
        out[l, h] = (n - i) / n
    return out


def load_qrhead(path: str | Path, shape: tuple[int, int]) -> torch.Tensor:
    """QRHead's head list (JSON list, or one head per line) as a ranked map of ``shape``
    (the model's ``(n_layers, n_heads)``)."""
    p, text = _text(path, "QRHead head list")
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            heads = json.loads(stripped)
        except ValueError as err:
            raise UsageError(f"{p} is not a JSON list of heads: {err}") from None
    else:
        heads = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        heads = [h for h in heads if h]
    if not heads:
        raise UsageError(f"{p} lists no heads.")
    try:
        return head_list_map(heads, shape)
    except UsageError as err:
        raise UsageError(f"{p}: {err}", arg=err.arg) from None


def load_map(path: str | Path, format: Format, *, n_heads: int | None = None,
             shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Any of :data:`FORMATS` as a map: ``"duoattention"`` (``n_heads`` expands it to query
    heads), ``"headkv"``, ``"qrhead"`` (needs ``shape``)."""
    if format == "duoattention":
        return load_duo_attention(path, n_heads)
    if format == "headkv":
        return load_headkv(path)
    if format == "qrhead":
        if shape is None:
            raise UsageError("shape is needed for a QRHead list: the model's (n_layers, "
                             "n_heads).", arg="shape")
        return load_qrhead(path, shape)
    raise UsageError(f"format must be one of {FORMATS}, got {format!r}.", arg="format")
