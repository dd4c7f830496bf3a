"""RoPE and config surgery: load the paper's checkpoints the way they were run.

* :func:`apply_config_overrides`: set ``rope_theta`` / ``rope_scaling`` / any field in the way
  transformers 5 reads them (``rope_parameters``);
* :func:`ntk_theta` and :func:`public_rope_reset`: the public detection code's RoPE reset
  (dynamic NTK, as Llama-2-7B-80K is run);
* :func:`prepare_config`: all of it for one :class:`~rhlens.models.registry.ModelSpec`.
"""

from __future__ import annotations

from typing import Any

from .registry import ModelSpec


def apply_config_overrides(config, overrides: dict[str, Any]):
    """Apply ``overrides`` to a transformers config, in the way transformers 5 reads them.

    Since transformers 5, RoPE settings live in ``config.rope_parameters`` (``rope_type``,
    ``rope_theta``, ``factor``...). Setting the old attributes does nothing (``rope_theta``)
    or drops the base (``rope_scaling``), so they are folded into ``rope_parameters`` here:

    * ``rope_theta`` -> ``rope_parameters["rope_theta"]``;
    * ``rope_scaling`` / ``rope_parameters`` (dict, old ``type`` key accepted) -> merged into
      ``rope_parameters``, keeping the checkpoint's ``rope_theta`` unless given;
    * anything else -> ``setattr``.

    The result is validated by the config class (``validate_rope``). Returns ``config``.

    >>> from transformers import LlamaConfig
    >>> cfg = apply_config_overrides(LlamaConfig(), {"rope_scaling": {"type": "dynamic", "factor": 10.0}})
    >>> cfg.rope_parameters["rope_type"], cfg.rope_parameters["rope_theta"]
    ('dynamic', 10000.0)
    """
    rope = dict(getattr(config, "rope_parameters", None) or {})
    touched_rope = False
    for key, value in overrides.items():
        if key == "rope_theta":
            rope["rope_theta"] = float(value)
            touched_rope = True
        elif key in ("rope_scaling", "rope_parameters"):
            if value is None:
                rope = {"rope_type": "default", "rope_theta": rope.get("rope_theta")}
            else:
                value = dict(value)
                if "type" in value:
                    value.setdefault("rope_type", value.pop("type"))
                rope.update(value)
            touched_rope = True
        else:
            setattr(config, key, value)
    if {"sliding_window", "use_sliding_window"} & set(overrides):
        _sync_sliding_window(config)
    if touched_rope:
        if rope.get("rope_theta") is None:
            rope["rope_theta"] = float(getattr(config, "default_theta", 10000.0))
        rope.setdefault("rope_type", "default")
        config.rope_parameters = rope
        config.validate_rope()
    return config


def _sync_sliding_window(config) -> None:
    """Keep ``sliding_window`` and the per-layer ``layer_types`` consistent after an override
    (Qwen2 reads the window per layer from ``layer_types``, fixed when the config was made)."""
    if getattr(config, "use_sliding_window", True) is False:
        config.sliding_window = None
    if getattr(config, "layer_types", None) is not None and config.sliding_window is None:
        config.layer_types = ["full_attention"] * config.num_hidden_layers


def ntk_theta(theta: float, seq_len: int, max_position_embeddings: int, factor: float,
              head_dim: int) -> float:
    """Base of dynamic-NTK RoPE at ``seq_len`` (the formula of transformers' dynamic scaling).

    ``theta * (factor * seq_len / max_pos - (factor - 1)) ** (d / (d - 2))`` for
    ``seq_len > max_pos``, else ``theta``.
    """
    if seq_len <= max_position_embeddings:
        return float(theta)
    ratio = factor * seq_len / max_position_embeddings - (factor - 1)
    return float(theta * ratio ** (head_dim / (head_dim - 2)))


def public_rope_reset(config, max_train_len: int, factor: float):
    """Reproduce the public detection code's ``reset_rope(model, max_train_len, factor)``.

    That code sets ``rotary_emb.scaling_factor = factor`` and rebuilds the cos/sin cache once
    for ``max_train_len`` positions. In the transformers version it ran on this has two
    outcomes, reproduced here:

    * the config declares dynamic-NTK scaling: the base is computed once, at
      ``max_train_len``, and used for every position. We write that fixed base into
      ``rope_parameters`` as plain RoPE (``rope_type="default"``). A *static* base also keeps
      chunked prefill exact: transformers' own dynamic scaling recomputes the base as the
      sequence grows, so keys cached by early chunks would be rotated with another base
      than later queries;
    * the config has plain RoPE: ``scaling_factor`` is ignored by the plain rotary class and
      the cache rebuild changes nothing, so the config is left as it is.

    Returns ``config``.
    """
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", rope.get("type")) != "dynamic":
        return config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta = ntk_theta(rope.get("rope_theta", 10000.0), max_train_len,
                      config.max_position_embeddings, factor, head_dim)
    config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    config.validate_rope()
    return config


def prepare_config(config, spec: ModelSpec):
    """The checkpoint's config as :func:`load_model` runs it: overrides, RoPE reset, context.

    The same function prepares the tiny test models of :func:`tiny_paper_model`, so the
    settings the paper's checkpoints load with are exercised in CI.
    """
    apply_config_overrides(config, spec.config_overrides)
    if spec.public_rope_reset:
        public_rope_reset(config, *spec.public_rope_reset)
    if spec.context_length and config.max_position_embeddings < spec.context_length:
        if (config.rope_parameters or {}).get("rope_type", "default") != "default":
            raise ValueError(
                f"{spec.hf_id}: cannot raise the context of a {config.rope_parameters['rope_type']} "
                "RoPE config without changing its frequencies; set context_length=None."
            )
        config.max_position_embeddings = spec.context_length
    return config
