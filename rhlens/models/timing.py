"""What running one of the paper's checkpoints costs in time: an estimate from an H100's peak
rates, or the prefill and decode times ``benchmarks/bench_gpu.py`` measured on a real GPU.

The chapters' set-up lines print :func:`expected_time`, which says which of the two it is.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .resources import Config, config, weights_bytes

#: Assumed H100 rates behind :func:`estimate_minutes` (not measured here; ``benchmarks/
#: bench_gpu.py`` measures prefill and decode on the GPU it runs on): dense bf16 prefill at
#: 35 % of the 989 TFLOP/s peak, and a hooked decode step that reads every weight once at
#: 3.35 TB/s plus 30 ms of per-step hook overhead (one attention row per head per layer).
H100_PREFILL_FLOPS = 0.35 * 989e12
H100_BANDWIDTH = 3.35e12
DECODE_OVERHEAD_S = 0.030


def _grid_prompts(grid) -> tuple[int, list[int]]:
    per_length = len(dict.fromkeys(grid.needles)) * len(dict.fromkeys(grid.depths))
    return per_length, list(dict.fromkeys(grid.lengths))


def estimate_minutes(key: str, grid) -> float:
    """Rough H100 time of one detection pass over ``grid`` for paper model ``key``.

    Prefill costs ``2 * active params * n`` FLOPs plus ``2 * layers * d_model * n**2`` for
    causal attention, at :data:`H100_PREFILL_FLOPS`; each decode step reads the bf16 weights
    once at :data:`H100_BANDWIDTH` plus :data:`DECODE_OVERHEAD_S` of hook work. An estimate,
    not a measurement: it is printed as such.

    >>> from rhlens.niah.grid import Grid
    >>> round(estimate_minutes("llama-2-7b-80k", Grid([8000], [0.5], needles=1)), 2)
    0.02
    """
    c = config(key)
    active = c.active_params()
    per_length, lengths = _grid_prompts(grid)
    seconds = 0.0
    for n in lengths:
        prefill = (2 * active * n + 2 * c.layers * c.d_model * n * n) / H100_PREFILL_FLOPS
        decode = grid.max_new_tokens * (weights_bytes(key) / H100_BANDWIDTH + DECODE_OVERHEAD_S)
        seconds += per_length * (prefill + decode)
    return seconds / 60


#: The folder ``benchmarks/bench_gpu.py`` writes its results to, and the variable that
#: points :func:`measured_results` at another one.
RESULTS_DIR = Path("benchmarks") / "results"
RESULTS_ENV = "RHLENS_BENCHMARKS"


def results_dir(start: Path | None = None) -> Path | None:
    """Where measured GPU results lie: ``$RHLENS_BENCHMARKS``, else ``benchmarks/results``
    in the current folder or one above it (a checkout); ``None`` when there is none."""
    if os.environ.get(RESULTS_ENV):
        path = Path(os.environ[RESULTS_ENV])
        return path if path.is_dir() else None
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / RESULTS_DIR).is_dir():
            return folder / RESULTS_DIR
    return None


def measured_results(key: str, folder: Path | None = None) -> list[dict]:
    """The ``benchmarks/bench_gpu.py`` results files whose model shape is ``key``'s (same
    layers, heads, KV heads, sizes and vocabulary), newest first."""
    folder = folder or results_dir()
    if folder is None:
        return []
    want = config(key)
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            result = json.loads(path.read_text())
            shape = Config(**result["config"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (shape.layers, shape.heads, shape.kv_heads, shape.d_model, shape.d_mlp,
                shape.vocab, shape.experts) == (want.layers, want.heads, want.kv_heads,
                                                want.d_model, want.d_mlp, want.vocab,
                                                want.experts):
            found.append({**result, "path": str(path)})
    return sorted(found, key=lambda r: r.get("date", ""), reverse=True)


def interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear through the points, extended along the last segment (prefill grows
    faster than linearly, so beyond the last point this errs low; the line says measured
    rates, extrapolated)."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    i = max(1, min(len(xs) - 1, next((j for j, v in enumerate(xs) if v >= x), len(xs) - 1)))
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def measured_minutes(result: dict, grid) -> float:
    """Time of one detection pass over ``grid`` from a ``bench_gpu.py`` result: per prompt,
    its prefill time and ``max_new_tokens`` hooked decode steps, interpolated in length."""
    rows = sorted(result["rows"], key=lambda r: r["length"])
    xs = [r["length"] for r in rows]
    prefill = [r["prefill_s"] for r in rows]
    step = [r["decode_s"] / max(1, r["steps"]) for r in rows]
    per_length, lengths = _grid_prompts(grid)
    seconds = sum(per_length * (interpolate(xs, prefill, n)
                                + grid.max_new_tokens * interpolate(xs, step, n))
                  for n in lengths)
    return seconds / 60


def expected_time(key: str, grid, passes: int = 1, folder: Path | None = None) -> str:
    """One line: the time of ``passes`` detection passes over ``grid``, from measured rates
    when ``benchmarks/bench_gpu.py`` left a result for this model's shape, else estimated.

    >>> from rhlens.niah.grid import Grid
    >>> print(expected_time("llama-2-7b-80k", Grid([8000], [0.5], needles=1),
    ...                     folder=Path("/nonexistent")))  # doctest: +ELLIPSIS
    llama-2-7b-80k: under a minute for 1 prompt on an H100 (an estimate from its peak rates; ...)
    """
    n = passes * len(grid)
    prompts = f"{n} prompt{'' if n == 1 else 's'}"

    def about(minutes: float) -> str:
        return "under a minute" if minutes < 1 else f"about {minutes:.0f} min"

    results = measured_results(key, folder)
    if results:
        r = results[0]
        minutes = passes * measured_minutes(r, grid)
        return (f"{key}: {about(minutes)} for {prompts}, from prefill and decode "
                f"times measured on {r.get('gpu', 'a GPU')} by benchmarks/bench_gpu.py "
                f"({Path(r['path']).name}; interpolated in prompt length)")
    minutes = passes * estimate_minutes(key, grid)
    return (f"{key}: {about(minutes)} for {prompts} on an H100 (an estimate from "
            "its peak rates; benchmarks/bench_gpu.py measures yours)")


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"`` (results file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"
