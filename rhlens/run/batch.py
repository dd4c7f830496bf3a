"""Greedy decoding of several prompts of one length at once.

A detection grid's prompts of one length have exactly the same number of tokens by
construction (:func:`rhlens.niah.prompts.build_sample` trims the haystack to the length), so
they batch without padding: :func:`greedy_decode_batch` prefills them as one ``[B, n]`` batch
and runs one decode loop over the ``B`` rows, each recording its own attention argmaxes as
:func:`rhlens.run.decode.greedy_decode` does. A row that stops (the one stop rule,
:func:`rhlens.run.decode.stops`) leaves the batch and its KV cache at once, so a finished
sample stops costing; the loop ends when every row has stopped.

Each trace is the one :func:`~rhlens.run.decode.greedy_decode` gives for that prompt alone
(tokens, argmaxes and text; ``tests/run/test_batch.py`` checks it on every architecture, with
masks, and with rows stopping at different steps), since every row's arithmetic is the same
batched or not, up to float rounding. On a GPU the batch fills the device that one short
prompt leaves mostly idle; on a CPU it shares the per-step overhead of the Python loop.

How many prompts a sweep batches is its ``batch_size``: a number, or ``"auto"`` (the default
of a detection and of a NIAH run), which :func:`auto_batch_size` turns into a number for each
length from the device the model is on:

* on a CPU, :data:`CPU_BATCH` prompts while they hold at most :data:`CPU_BATCH_TOKENS` tokens
  (at longer prompts the matmuls are already large, and the batch only adds memory);
* on a GPU, as many prompts (at most :data:`GPU_BATCH`) as fit :data:`GPU_MEMORY_SHARE` of
  the memory free when the length is first met, at :func:`prompt_bytes` each (its KV cache and
  the largest transient of one layer);
* elsewhere (MPS), one.

The choice changes how fast the samples come, never what they are: a run's records, log and
output are the same under every batch size (``tests/score/test_detect.py``,
``tests/intervene/test_niah.py``).

Example::

    from rhlens.run.batch import greedy_decode_batch

    traces = greedy_decode_batch(model, [s.input_ids for s in samples], max_new_tokens=16)

A batch size is checked by :func:`rhlens.validate.batch_size` (a whole number of at least 1, or
``"auto"``), in the configs and on the command line before the model loads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .decode import (
    EAGER_CHUNK,
    DecodeAttention,
    DecodeTrace,
    Hook,
    check_decode_attention,
    decode_path,
    model_device,
    new_cache,
    prefill,
    stops,
)
from .hooks import every_layer, layer_of
from .sdpa import sdpa_attention

__all__ = ["auto_batch_size", "greedy_decode_batch", "prompt_bytes"]

#: ``"auto"`` on a CPU: this many prompts. Four score 1.3x as many samples per second as one
#: on ``make demo``'s grid (SmolLM2, 500 and 1,000 tokens, an idle 2-core machine;
#: ``benchmarks/bench_speed.py --batch 4``): the batch halves the decode steps' cost, while the
#: compute-bound prefill costs the same.
CPU_BATCH = 4
#: ... while the batch holds at most this many prompt tokens.
CPU_BATCH_TOKENS = 8192
#: ``"auto"`` on a GPU: at most this many prompts ...
GPU_BATCH = 16
#: ... of which the KV caches and one layer's transients take at most this share of the free
#: memory (the rest is the allocator's, the logits', and the longer lengths' still to come).
GPU_MEMORY_SHARE = 0.5


def prompt_bytes(cfg, tokens: int, *, eager_prefill: bool = False) -> int:
    """Memory one more prompt of ``tokens`` tokens (prompt and new tokens) adds to a batch:
    its KV cache, ``2 x layers x KV heads x head dim x tokens`` values, and the largest
    transient of one layer, the MLP over the prompt (``3 x tokens x d_mlp`` values) or, when
    the prefill runs through the hooked attention (a mask that covers it), one chunk's
    scores and pattern (``4 x heads x EAGER_CHUNK x tokens`` values in float32).

    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(n_layers=32, n_heads=32, n_key_value_heads=8, d_head=128,
    ...                       d_mlp=14336, dtype=torch.bfloat16)              # Mistral-7B
    >>> round(prompt_bytes(cfg, 8192) / 1e9, 2)                          # 1.07 GB cache
    1.78
    """
    size = torch.empty((), dtype=cfg.dtype).element_size()
    kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    cache = 2 * cfg.n_layers * kv_heads * cfg.d_head * tokens * size
    mlp = 3 * tokens * (cfg.d_mlp or 4 * cfg.n_heads * cfg.d_head) * size
    eager = 4 * cfg.n_heads * min(EAGER_CHUNK, tokens) * tokens * 4 if eager_prefill else 0
    return int(cache + max(mlp, eager))


def auto_batch_size(model, tokens: int, *, eager_prefill: bool = False) -> int:
    """How many prompts of ``tokens`` tokens (prompt and new tokens) ``batch_size="auto"``
    decodes at once on the device ``model`` is on (see the module's docstring)."""
    device = model_device(model)
    if device.type == "cpu":
        return max(1, min(CPU_BATCH, CPU_BATCH_TOKENS // max(tokens, 1)))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        each = prompt_bytes(model.cfg, tokens, eager_prefill=eager_prefill)
        return max(1, min(GPU_BATCH, int(GPU_MEMORY_SHARE * free // each)))
    return 1


def _check(model, prompts: Sequence[torch.Tensor], max_new_tokens: int,
           decode_attention: str) -> torch.Tensor:
    """The prompts as one ``[B, n]`` tensor, after checking every argument."""
    check_decode_attention(decode_attention)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}.")
    if not prompts:
        raise ValueError("prompts is empty: pass at least one 1-D tensor of token ids.")
    lengths = sorted({int(p.numel()) for p in prompts})
    if len(lengths) > 1 or any(p.dim() != 1 for p in prompts):
        raise ValueError(
            f"prompts must be 1-D token-id tensors of one length (got lengths {lengths}); "
            "batch only the samples of one context length."
        )
    if lengths[0] < 2:
        raise ValueError("Each prompt needs at least 2 tokens (a prefill and a first step).")
    n_ctx = model.cfg.n_ctx
    if n_ctx and lengths[0] + max_new_tokens > n_ctx:
        raise ValueError(
            f"The prompts ({lengths[0]} tokens) plus {max_new_tokens} new tokens exceed "
            f"the model's context of {n_ctx} tokens; use a shorter length."
        )
    return torch.stack([p.to(model_device(model)) for p in prompts])


@torch.no_grad()
def greedy_decode_batch(
    model,
    prompts: Sequence[torch.Tensor],
    max_new_tokens: int = 32,
    decode_hooks: Sequence[Hook] = (),
    stop_at_newline: bool = True,
    *,
    mask=None,
    decode_attention: DecodeAttention = "grouped",
) -> list[DecodeTrace]:
    """Greedy generation from every prompt of ``prompts`` (1-D, all of one length) at once.

    Args:
        model: a TransformerBridge with its tokenizer.
        prompts: ``B`` token-id tensors ``[n]`` of one length ``n``.
        max_new_tokens, stop_at_newline, decode_hooks, mask, decode_attention: as in
            :func:`rhlens.run.decode.greedy_decode`; hooks act on the whole batch (a hook
            must treat the batch dimension as a batch, as masks do). A mask that also covers
            the prefill runs the prefill through the bridge's hooked attention.

    Returns:
        one :class:`~rhlens.run.decode.DecodeTrace` per prompt, in order (without attention
        rows). Its timings are the batch's seconds shared equally by its ``B`` samples.
    """
    ids = _check(model, prompts, max_new_tokens, decode_attention)
    prefill_hooks: list[Hook] = []
    if mask is not None:
        decode_hooks = [*mask.hooks(model), *decode_hooks]
        prefill_hooks = mask.prefill_hooks(model)
    device, tok = ids.device, model.tokenizer
    batch, n_layers, n_heads = ids.shape[0], model.cfg.n_layers, model.cfg.n_heads
    argmax = torch.zeros(batch, max_new_tokens, n_layers, n_heads, dtype=torch.long,
                         device=device)
    live = list(range(batch))  # the prompts still decoding, in cache row order
    step = {"t": 0}
    rows = {"now": torch.arange(batch, device=device)}  # their rows of ``argmax``

    def read_pattern(pattern: torch.Tensor, hook) -> torch.Tensor:
        argmax[rows["now"], step["t"], layer_of(hook.name)] = pattern[:, :, -1].argmax(-1)
        return pattern

    from .lean import reserve

    cache = reserve(new_cache(model), max_new_tokens)  # decode steps write in place
    t0 = time.perf_counter()
    if prefill_hooks:  # the hooked (eager) attention, one chunk of the batch at a time
        with model.hooks(fwd_hooks=prefill_hooks):
            prefill(model, ids[:, :-1], cache, EAGER_CHUNK)
    else:
        with sdpa_attention(model):
            prefill(model, ids[:, :-1], cache, ids.shape[1] - 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()

    generated: list[list[int]] = [[] for _ in range(batch)]
    nxt = ids[:, -1:]
    with model.hooks(fwd_hooks=[*decode_hooks, (every_layer("pattern"), read_pattern)]), \
            decode_path(model, decode_attention):
        for t in range(max_new_tokens):
            step["t"] = t
            out, cache = model(nxt, return_type="logits_and_cache", past_key_values=cache)
            tokens = out[:, -1].argmax(-1).tolist()
            keep = []
            for row, (b, token) in enumerate(zip(live, tokens)):
                if not stops(tok, token, generated[b], stop_at_newline):
                    generated[b].append(token)
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(live):  # finished rows leave the batch and the cache
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                live = [live[r] for r in keep]
                rows["now"] = torch.tensor(live, device=device)
            nxt = torch.tensor([[generated[b][-1]] for b in live], device=device)
    argmax_cpu = argmax.cpu()
    t2 = time.perf_counter()
    timings = {"prefill_s": (t1 - t0) / batch, "decode_s": (t2 - t1) / batch}
    return [
        DecodeTrace(
            prompt_ids=prompts[b].cpu(),
            tokens=torch.tensor(generated[b], dtype=torch.long),
            argmax=argmax_cpu[b, : len(generated[b])].clone(),
            text=tok.decode(generated[b]),
            timings=dict(timings),
        )
        for b in range(batch)
    ]

