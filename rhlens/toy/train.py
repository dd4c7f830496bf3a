"""Small Llama-architecture transformers that learn the toy retrieval task on a CPU.

The models are plain Hugging Face ``LlamaForCausalLM`` modules (RoPE, RMSNorm), trained
directly with torch (fast SDPA attention), then wrapped in a TransformerLens
``TransformerBridge`` (:func:`to_bridge`) so that every ``rhlens`` function -- greedy decoding,
the retrieval score, masking hooks -- runs on them exactly as on a 7B model. The bridge and
the Hugging Face module share their weights, so training can go on after wrapping.

``attn_only=True`` gives the classic attention-only transformer: the MLPs are kept (so the
architecture and the hook names stay Llama's) but their output projection is zero and frozen,
so every block computes ``x + attn(x)`` only.

Example::

    >>> task = ToyTask(length=32)                                    # doctest: +SKIP
    >>> model = build_model(ToyModelConfig(n_layers=2, n_heads=4), task.vocab, seed=0)  # doctest: +SKIP
    >>> history = train(model, task, steps=600)                       # doctest: +SKIP
    >>> history.accuracy.iloc[-1]                                    # doctest: +SKIP
    0.99
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .task import PAD, ToyBatch, ToyTask, Vocab, toy_tokenizer


@dataclass(frozen=True)
class ToyModelConfig:
    """Shape of a toy model. ``d_head = d_model // n_heads``; no grouped-query attention."""

    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    attn_only: bool = True
    d_mlp: int = 128
    max_len: int = 512
    rope_theta: float = 10_000.0
    init_std: float = 0.1


#: The two models of the toy chapters.
ATTN_ONLY_2L = ToyModelConfig(n_layers=2, n_heads=4, d_model=64, attn_only=True)
WIDE_4L = ToyModelConfig(n_layers=4, n_heads=8, d_model=128, attn_only=True)


def build_model(config: ToyModelConfig = ATTN_ONLY_2L, vocab: Vocab = Vocab(), seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` of shape ``config`` (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if config.d_model % config.n_heads:
        raise ValueError(f"d_model={config.d_model} must be a multiple of n_heads={config.n_heads}.")
    hf_config = LlamaConfig(
        vocab_size=vocab.size,
        hidden_size=config.d_model,
        intermediate_size=1 if config.attn_only else config.d_mlp,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_len,
        rope_theta=config.rope_theta,  # type: ignore[call-arg]  # read from **kwargs
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD,
        tie_word_embeddings=False,
        initializer_range=config.init_std,
    )
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config)
    if config.attn_only:
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.data.zero_()
            for p in layer.mlp.parameters():
                p.requires_grad_(False)
    # what the toy analyses read back from the model
    model.toy_config = config  # type: ignore[assignment]
    model.toy_vocab = vocab  # type: ignore[assignment]
    return model


def to_bridge(model):
    """Wrap a toy model (from :func:`build_model`) in a ``TransformerBridge`` with the toy
    tokenizer. The bridge shares the weights; it switches attention to eager mode (full
    patterns for the hooks); :func:`train` switches to SDPA while it trains."""
    from transformer_lens.model_bridge import TransformerBridge

    if hasattr(model, "original_model"):
        return model
    bridge = TransformerBridge.boot_transformers(
        "rhlens-toy", hf_model=model, tokenizer=toy_tokenizer(model.toy_vocab),
        dtype=torch.float32, device="cpu",
    )
    bridge.eval()
    return bridge


def hf_module(model):
    """The Hugging Face module of a toy model or of its bridge."""
    return getattr(model, "original_model", model)


@contextlib.contextmanager
def _attention(model, implementation: str):
    cfg = model.config
    old = cfg._attn_implementation
    cfg._attn_implementation = implementation
    try:
        yield
    finally:
        cfg._attn_implementation = old


def value_logits(model, batch: ToyBatch) -> torch.Tensor:
    """``[n, value_len + 1, vocab]`` logits at the positions that predict the value tokens and
    the final ``<eos>`` (teacher forcing)."""
    hf = hf_module(model)
    full = batch.full()
    n_prompt = batch.input_ids.shape[1]
    hidden = hf.model(full[:, :-1]).last_hidden_state[:, n_prompt - 1:]
    return hf.lm_head(hidden)


@torch.no_grad()
def accuracy(model, task: ToyTask, n: int = 256, seed: int = 12345) -> dict:
    """Exact-value accuracy and mean loss on ``n`` fresh prompts (teacher forcing).

    A prompt counts as solved when every value token is the argmax at its position, which is
    exactly when greedy decoding emits the whole value.

    Returns ``{"accuracy", "token_accuracy", "loss"}``.
    """
    hf = hf_module(model)
    batch = task.sample(n, seed=seed)
    with _attention(hf, "sdpa"):
        logits = value_logits(hf, batch)
    target = batch.full()[:, batch.input_ids.shape[1]:]
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    right = logits[:, : task.value_len].argmax(-1) == batch.values
    return {
        "accuracy": float(right.all(1).float().mean()),
        "token_accuracy": float(right.float().mean()),
        "loss": float(loss),
    }


def train(
    model,
    task: ToyTask,
    *,
    steps: int = 800,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    eval_every: int = 50,
    eval_n: int = 256,
    warmup: int = 50,
    checkpoint_every: int | None = None,
    callback: Callable[[int, object], dict] | None = None,
    target: float | None = None,
):
    """Train on freshly sampled prompts (loss on the value tokens and ``<eos>``).

    Args:
        model: a toy model or its bridge (trained in place).
        task: the :class:`ToyTask` to sample from (data seed ``seed``).
        steps, batch_size, lr, warmup: AdamW with linear warm-up then cosine decay.
        eval_every: evaluate :func:`accuracy` every this many steps (and at the end).
        checkpoint_every: keep a copy of the weights every this many steps
            (``history.attrs["checkpoints"]``: ``{step: state_dict}``).
        callback: ``fn(step, model) -> dict`` called at each evaluation; its values become
            extra columns (e.g. retrieval scores of a head).
        target: stop early once accuracy reaches this value.

    Returns:
        a pandas DataFrame, one row per evaluation (``step``, ``loss``, ``accuracy``,
        ``token_accuracy``, ``seconds``), with ``attrs["checkpoints"]``.
    """
    import pandas as pd

    hf = hf_module(model)
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())
    )
    gen = torch.Generator().manual_seed(seed)
    rows, checkpoints = [], {}
    start = time.perf_counter()

    def evaluate(step: int) -> float:
        hf.eval()
        row = {"step": step, **accuracy(hf, task, eval_n), "seconds": time.perf_counter() - start}
        if callback is not None:
            row.update(callback(step, model))
        rows.append(row)
        if checkpoint_every and step % checkpoint_every == 0:
            checkpoints[step] = copy.deepcopy(hf.state_dict())
        return row["accuracy"]

    with torch.enable_grad(), _attention(hf, "sdpa"):
        evaluate(0)
        for step in range(1, steps + 1):
            hf.train()
            batch = task.sample(batch_size, generator=gen)
            logits = value_logits(hf, batch)
            target_ids = batch.full()[:, batch.input_ids.shape[1]:]
            loss = F.cross_entropy(logits.flatten(0, 1), target_ids.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if step % eval_every == 0 or step == steps:
                if evaluate(step) >= (target if target is not None else 2.0):
                    break
    hf.eval()
    history = pd.DataFrame(rows)
    history.attrs["checkpoints"] = checkpoints
    return history
