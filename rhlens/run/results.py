"""Result files: atomic writes, and score files in the public format (resumable sample logs
live in :mod:`rhlens.run.samplelog`).

A score file is ``{"layer-head": [per-sample scores, ...]}``, exactly as the paper's public
code writes it, so its published files (e.g. ``Llama-2-7b-80k.json``) load with
:func:`load_scores` and compare directly with ours. :func:`load_scores` checks what it reads
(well-formed unique keys covering every head, finite non-negative numbers, at most 1 for a
paper-mode file) and names the file when something is wrong.

A long sweep rewrites its score file atomically (temporary file + ``os.replace``) after each
sample, so readers see the old file or the new one, never half.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import FetchError, UsageError
from ..files import MAX_BYTES, MAX_LOG_BYTES, open_regular, read_bytes
from .names import log_path

#: Largest score file :func:`load_scores` fetches from a URL (the paper's are 1-8 MB).
MAX_SCORE_BYTES = MAX_BYTES


# --------------------------------------------------------------------------- writing


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: the old file's, or 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The temporary file has a unique name beside ``path`` (two writers never share it) and the
    result gets the mode an ordinary write would give it (the umask, or the old file's mode).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically, as :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


#: Decimals a score file keeps of each per-sample score (enough for ``|k|`` up to 10^5 tokens).
SCORE_DECIMALS = 6


def head_key(layer: int, head: int) -> str:
    """``"16-19"`` for layer 16, head 19: the public score files' key."""
    return f"{layer}-{head}"


def scores_to_json(per_sample: Iterable[torch.Tensor], n_layers: int, n_heads: int) -> dict:
    """``{"layer-head": [score of sample 1, ...]}`` from ``[n_layers, n_heads]`` maps."""
    maps = list(per_sample)
    return {
        head_key(l, h): [round(float(m[l, h]), SCORE_DECIMALS) for m in maps]
        for l in range(n_layers)
        for h in range(n_heads)
    }


# --------------------------------------------------------------------------- score files

_KEY = re.compile(r"(0|[1-9][0-9]{0,8})-(0|[1-9][0-9]{0,8})")  # no int() of 5000 digits


def load_scores(
    source: str | Path | dict,
    mode: str | None = None,
    shape: tuple[int, int] | None = None,
    *,
    signed: bool = False,
) -> torch.Tensor:
    """Mean score per head, ``[n_layers, n_heads]``, from a score file, URL or dict.

    Heads whose list is empty get 0. The shape is inferred from the keys, which must name
    every head of the map once. Checked on load, with an error naming the file:

    * keys are ``"layer-head"`` (whole numbers, no leading zeros, no duplicates);
    * values are numbers or lists of numbers, finite and ``>= 0``; with ``mode="paper"``
      also ``<= 1`` (``"sum"`` files, like the paper's published ones, may exceed 1);
    * with ``shape`` (the model's ``(n_layers, n_heads)``), the map has that shape;
    * ``signed=True`` lets values be negative (maps of signed head detectors, e.g. logit
      contributions, :mod:`rhlens.score.detectors`).

    A URL is fetched as :func:`fetch_text` does (https, or http when the address says so;
    a deadline and a size cap).

    >>> load_scores({"0-0": [1.0, 0.5], "0-1": [], "1-0": [0.2], "1-1": [0.0]})
    tensor([[0.7500, 0.0000],
            [0.2000, 0.0000]])
    >>> load_scores({"0-0": [1.5], "0-1": [0]}, mode="paper")
    Traceback (most recent call last):
    ...
    rhlens.errors.UsageError: score dict: head '0-0' scores 1.5, above 1, but a paper-mode score lies in [0, 1].
    """
    if mode not in (None, "paper", "sum"):
        raise UsageError(f"mode must be 'paper', 'sum' or None, got {mode!r}.", arg="mode")
    if isinstance(source, dict):
        name, data = "score dict", source
    else:
        name = str(source)
        data = _parse_score_json(_read(source), name)
    return _mean_map(data, name, mode, shape, signed)


def _mean_map(data: Any, name: str, mode: str | None, shape: tuple[int, int] | None,
              signed: bool = False) -> torch.Tensor:
    """:func:`load_scores` of parsed JSON ``data``, naming ``name`` in its errors."""
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{name!r} holds no scores: expected {{'layer-head': [scores]}}.")
    keys = []
    for k in data:
        m = _KEY.fullmatch(k) if isinstance(k, str) else None
        if m is None:
            raise UsageError(f"{name}: key {k!r} is not 'layer-head' (two whole numbers "
                             "without leading zeros, e.g. '16-19').")
        keys.append((int(m.group(1)), int(m.group(2))))
    n_layers = max(l for l, _ in keys) + 1
    n_heads = max(h for _, h in keys) + 1
    if n_layers * n_heads != len(keys):
        have = set(keys)
        missing = next(f"{l}-{h}" for l in range(n_layers) for h in range(n_heads)
                       if (l, h) not in have)
        raise UsageError(
            f"{name}: the keys span {n_layers} layers x {n_heads} heads but list only "
            f"{len(keys)} of those {n_layers * n_heads} heads (e.g. '{missing}' is missing); "
            "a score file lists every head."
        )
    if shape is not None and (n_layers, n_heads) != tuple(shape):
        raise UsageError(f"{name} scores {n_layers} x {n_heads} heads, but the model has "
                         f"{shape[0]} x {shape[1]}: wrong score file?")
    out = torch.zeros(n_layers, n_heads)
    for (l, h), key, values in zip(keys, data, data.values()):
        values = values if isinstance(values, list) else [values]
        for v in values:
            _check_score(v, name, key, mode, signed)
        mean = sum(values) / len(values) if values else 0.0
        if not math.isfinite(mean):  # finite scores whose sum overflows: their mean is not inf
            mean = sum(v / len(values) for v in values)
        if abs(mean) > _FLOAT32_MAX:
            raise UsageError(f"{name}: head '{key}' scores {mean:.3g} on average, beyond what a "
                             "score map holds (float32, up to 3.4e38); not a score file?")
        out[l, h] = mean
    return out


def per_sample_scores(source: str | Path | dict) -> torch.Tensor:
    """``[n_samples, n_layers, n_heads]`` float64 from a score file (path or URL) or its dict:
    the per-sample lists the public format keeps under each ``"layer-head"`` key, checked as
    :func:`load_scores` checks them (for bootstrap intervals, :mod:`rhlens.score.uncertainty`).

    Raises:
        UsageError: the file holds no per-sample lists (a file of one mean per head) or
            lists of unequal lengths.

    >>> per_sample_scores({"0-0": [1.0, 0.5], "0-1": [0.0, 0.25]}).tolist()
    [[[1.0, 0.0]], [[0.5, 0.25]]]
    """
    if isinstance(source, dict):
        name, data = "score dict", source
    else:
        name = str(source)
        data = _parse_score_json(_read(source), name)
    n_layers, n_heads = _mean_map(data, name, None, None).shape  # keys, values, coverage
    lengths = {len(v) if isinstance(v, list) else 0 for v in data.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise UsageError(f"{name} does not hold the same number of per-sample scores for "
                         "every head, so it cannot be resampled; intervals need a score file "
                         "written by `rhlens score` (or the public code).")
    out = torch.zeros(lengths.pop(), n_layers, n_heads, dtype=torch.float64)
    for key, values in data.items():
        l, h = (int(x) for x in key.split("-"))
        out[:, l, h] = torch.tensor(values, dtype=torch.float64)
    return out


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _check_score(v: Any, name: str, key: str, mode: str | None, signed: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UsageError(f"{name}: head '{key}' has {json.dumps(v)[:40]}; scores must be "
                         "numbers or lists of numbers.")
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an int of hundreds of digits has no float
        finite = False
    if not finite:
        shown = str(v) if isinstance(v, float) else f"a {len(str(abs(v)))}-digit number"
        raise UsageError(f"{name}: head '{key}' has a non-finite score ({shown}); a score file "
                         "holds finite numbers only.")
    if v < 0 and not signed:
        raise UsageError(f"{name}: head '{key}' has a negative score ({v}); retrieval "
                         "scores are >= 0.")
    if mode == "paper" and v > 1 + 1e-9:
        raise UsageError(f"{name}: head '{key}' scores {v}, above 1, but a paper-mode score "
                         "lies in [0, 1].")


def _parse_score_json(text: str, name: str) -> Any:
    def no_constants(token):
        raise UsageError(f"{name}: {token} is not a score; a score file holds finite numbers.")

    def unique(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise UsageError(f"{name}: key {k!r} appears twice; each head is listed once.")
            seen.add(k)
        return dict(pairs)

    try:
        # parse_int=float: a whole number of thousands of digits becomes inf (refused as not
        # finite, naming the file) instead of Python's digit limit error, which names none
        return json.loads(text, object_pairs_hook=unique, parse_constant=no_constants,
                          parse_int=float)
    except json.JSONDecodeError as err:
        raise UsageError(f"{name} is not JSON: {err}") from err
    except RecursionError:
        raise UsageError(f"{name} is not a score file: it nests too deeply.") from None


def score_file_mode(path: str | Path) -> str | None:
    """The scoring mode (``"paper"``/``"sum"``) recorded in ``<path>.samples.jsonl``, the log
    ``rhlens score`` writes beside a score file; ``None`` when there is none (e.g. a published
    file) or it cannot be read."""
    log = Path(log_path(path))
    try:  # a FIFO or a device there is not opened (it could block): it reads as no log
        with open_regular(log, "Sample log", MAX_LOG_BYTES) as f:
            header = json.loads(f.readline().decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    settings = header.get("settings") if isinstance(header, dict) else None
    mode = settings.get("mode") if isinstance(settings, dict) else None
    return mode if mode in ("paper", "sum") else None


def is_url(source: str | Path) -> bool:
    """Whether ``source`` is an ``http://`` or ``https://`` address."""
    return str(source).lower().startswith(("http://", "https://"))


def _read(source: str | Path) -> str:
    if is_url(source):
        return fetch_text(str(source))
    path = Path(source)
    if path.is_dir():
        raise UsageError(f"Score file {path} is a folder; pass the score file inside it "
                         "(e.g. scores.json).")
    if not path.exists():
        raise FileNotFoundError(f"Score file {path} does not exist; make one with `rhlens score`.")
    try:
        return read_bytes(path, "Score file").decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"Score file {path} is not UTF-8 text (byte {err.start}): "
                         "not a score file.") from None


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s), and never from https down to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = req.full_url.split(":", 1)[0].lower(), newurl.split(":", 1)[0].lower()
        if new not in ("http", "https") or (old == "https" and new != "https"):
            # the address's own answer, not a passing failure: a usage error (exit 2)
            raise UsageError(f"{req.full_url} redirects to {newurl}: refused (redirects are "
                             "followed only to http(s), and an https address may only redirect "
                             "to https); download the file and pass its path.")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_text(url: str, timeout: float = 60.0, max_bytes: int = MAX_SCORE_BYTES) -> str:
    """The UTF-8 text at ``url``, within about ``timeout`` seconds overall and ``max_bytes``.

    Only ``https://`` addresses, or ``http://`` when the address itself says so (a redirect
    from https to http is refused).

    Raises:
        UsageError: for an address that is not http(s), a 4xx answer, a redirect that is
            not followed, a body over ``max_bytes`` or not UTF-8: the address is wrong.
        FetchError: the server could not be reached, answered 5xx, or was too slow.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise UsageError(f"{url}: only https:// (or an explicit http://) addresses are fetched.")
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_NoDowngrade)
    chunks, size = [], 0
    try:
        # Each socket operation waits at most 15 s; the loop enforces the overall deadline.
        with opener.open(url, timeout=min(timeout, 15.0)) as resp:  # noqa: S310 (scheme checked)
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise UsageError(f"{url} is {int(length)} bytes, over the {max_bytes}-byte "
                                 "limit of a score file.")
            while True:
                if time.monotonic() > deadline:
                    raise FetchError(f"{url} took longer than {timeout:.0f} s to download; "
                                   "try again, or download it and pass the file.")
                chunk = resp.read1(1 << 16)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise UsageError(f"{url} is over the {max_bytes}-byte limit of a score file.")
                chunks.append(chunk)
    except FetchError:
        raise
    except urllib.error.HTTPError as err:
        msg = f"{url} answered HTTP {err.code} {err.reason}"
        if 400 <= err.code < 500:
            raise UsageError(f"{msg}: check the address.") from None
        if 300 <= err.code < 400:  # urllib refused the redirect (to file:, ftp:...): not transient
            raise UsageError(f"{msg}, a redirect to {err.headers.get('Location')!r} that is not "
                             "followed (only http(s), never https to http); download the file "
                             "and pass its path.") from None
        raise FetchError(f"{msg}: try again later.") from None
    except urllib.error.URLError as err:
        raise FetchError(f"Cannot fetch {url}: {err.reason}; check the address and the "
                       "network, or download the file and pass its path.") from None
    except (TimeoutError, OSError, http.client.HTTPException) as err:
        raise FetchError(f"Cannot fetch {url}: {err}; check the network, or download the file "
                       "and pass its path.") from None
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{url} is not UTF-8 text: not a score file.") from None
