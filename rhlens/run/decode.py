"""Greedy decoding with a KV cache that records where every query head looks.

The prompt but its last token is prefilled first, then tokens are generated one at a time.
The *decode steps* are the forwards whose query produces a generated token: the first one
feeds the prompt's last token, the next ones feed the tokens generated so far. At each step
a hook on ``blocks.{l}.attn.hook_pattern`` (shape ``[batch, head, 1, key]``) reads only the
one query row and keeps its argmax per query head (on the model's device, moved once at the
end of the sample).

Nothing reads attention during the prefill unless ``prefill_hooks`` are given, so by default
it runs with Hugging Face's SDPA attention (:func:`rhlens.run.sdpa.sdpa_attention`: no score
matrix, the speed of plain ``generate``) into the same KV cache the hooked decode steps read.
With ``prefill_hooks``, or ``prefill_attention="eager"``, it runs through the bridge's hooked
eager attention in chunks (each chunk's scores are ``chunk x n``, never ``n x n``). Under
grouped-query attention the decode steps read each shared KV head once, without copies
(:func:`rhlens.run.gqa.grouped_decode_attention`, same hooks; ``decode_attention="eager"`` runs
the bridge's own attention instead), the steps skip the bridge's and the cache's work
that no hook reads (:mod:`rhlens.run.lean`), and every bridge component whose hook points are
idle runs as the module it wraps (:mod:`rhlens.run.direct`): :func:`decode_path`.

Example::

    >>> trace = greedy_decode(model, sample.input_ids, max_new_tokens=16)   # doctest: +SKIP
    >>> trace.argmax.shape            # [steps, n_layers, n_heads]           # doctest: +SKIP
    torch.Size([9, 30, 9])
    >>> trace.text                                                           # doctest: +SKIP
    ' smoked cardamom.'
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .gqa import grouped_decode_attention
from .hooks import act_name, every_layer, layer_of
from .sdpa import sdpa_attention

Hook = tuple[str | Callable[[str], bool], Callable]

#: How the prompt is prefilled: ``"sdpa"`` (fast, no hooks) or ``"eager"`` (the bridge's hooked
#: attention, chunked).
PrefillAttention = Literal["sdpa", "eager"]
#: How decode steps attend: ``"grouped"`` (GQA without ``repeat_kv`` copies, where it applies)
#: or ``"eager"`` (the bridge's own attention). Both fire the same hooks.
DecodeAttention = Literal["grouped", "eager"]
#: Default prefill chunk of the eager path: each chunk materialises ``heads x chunk x n`` scores.
EAGER_CHUNK = 512


def pattern_hook_name(layer: int) -> str:
    """TransformerLens name of layer ``layer``'s post-softmax attention pattern."""
    return act_name("pattern", layer)


@dataclass
class DecodeTrace:
    """What one greedy generation did.

    Attributes:
        prompt_ids: ``[n]`` the prompt.
        tokens: ``[T]`` generated token ids (EOS excluded).
        argmax: ``[T, n_layers, n_heads]`` key position each query head attended to most
            at each decode step (positions ``>= n`` are earlier generated tokens).
        text: the decoded generation.
        rows: ``{(layer, head): [T, n + T]}`` full attention rows of the recorded heads
            (zero-padded on the right), when asked for.
        timings: seconds spent in the prefill (``"prefill_s"``) and in the decode steps
            (``"decode_s"``, including the one move of the recorded argmaxes and rows).
    """

    prompt_ids: torch.Tensor
    tokens: torch.Tensor
    argmax: torch.Tensor
    text: str
    rows: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def model_device(model) -> torch.device:
    """The device of ``model``'s first parameter (where its inputs go)."""
    return next(model.parameters()).device


def new_cache(model):
    """An empty KV cache (transformers ``DynamicCache``) for ``model``."""
    from transformers import DynamicCache

    return DynamicCache(config=model.original_model.config)


def stops(tokenizer, token: int, generated: Sequence[int], stop_at_newline: bool = True) -> bool:
    """The one stop rule of every greedy decode: EOS, or (with ``stop_at_newline``) a newline
    after some text; the stopping token is not kept."""
    if token == tokenizer.eos_token_id:
        return True
    return (stop_at_newline and "\n" in tokenizer.decode([token])
            and bool(tokenizer.decode(list(generated)).strip()))


@torch.no_grad()
def prefill(model, ids: torch.Tensor, cache, chunk_size: int = 512) -> torch.Tensor | None:
    """Run ``ids`` (``[n]``, or ``[batch, n]`` prompts of one length) through the model into
    ``cache``, ``chunk_size`` tokens at a time.

    Returns the logits of the last position (``[vocab]``, or ``[batch, vocab]``), or ``None``
    when ``ids`` is empty;
    only that position goes through the unembedding (``logits_to_keep=1``). The attention is
    the bridge's own (hooked, eager) unless called inside :func:`rhlens.run.sdpa.sdpa_attention`.
    The bridge runs lean (:func:`rhlens.run.lean.lean_bridge`): its normalization bridges
    otherwise compute every norm a second time, in Python, over the whole prompt (4% of an
    SDPA prefill of 2,000 tokens on SmolLM2); a hook on a norm's own hook points turns that
    path back on.
    """
    from .lean import lean_bridge

    rows = ids if ids.ndim == 2 else ids.unsqueeze(0)
    logits = None
    with lean_bridge(model):
        for start in range(0, rows.shape[1], chunk_size):
            out, cache = model(rows[:, start : start + chunk_size], return_type="logits_and_cache",
                               past_key_values=cache, logits_to_keep=1)
            logits = out[:, -1] if ids.ndim == 2 else out[0, -1]
    return logits


@torch.no_grad()
def greedy_decode(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    decode_hooks: Sequence[Hook] = (),
    prefill_hooks: Sequence[Hook] = (),
    record_rows: Iterable[tuple[int, int]] | None = None,
    stop_at_newline: bool = True,
    chunk_size: int | None = None,
    *,
    mask=None,
    prefill_attention: PrefillAttention = "sdpa",
    decode_attention: DecodeAttention = "grouped",
) -> DecodeTrace:
    """Greedy generation from ``input_ids`` (``[n]``) that records attention argmaxes.

    Args:
        model: a ``TransformerBridge`` with ``.tokenizer``.
        input_ids: ``[n]`` prompt ids (1-D).
        max_new_tokens: generation stops after this many tokens, at EOS, or at a newline
            that follows some text (``stop_at_newline``).
        decode_hooks: TransformerLens ``(name or filter, fn)`` hooks active at decode steps
            (e.g. head masks, as the paper applies them).
        prefill_hooks: hooks active while the prompt (all but its last token) is prefilled.
        record_rows: ``(layer, head)`` pairs whose whole attention row to keep per step.
        mask: a :class:`rhlens.intervene.mask.Mask`: its hooks join ``decode_hooks`` (and
            ``prefill_hooks`` when ``mask.prefill``).
        chunk_size: prompt tokens per prefill forward. Default: :data:`EAGER_CHUNK` for the
            eager prefill, the whole prompt for the SDPA one (its memory grows with the
            chunk only through the MLP activations; set it to cap them).
        prefill_attention: ``"sdpa"`` (default) prefills with Hugging Face's SDPA attention
            and no hooks whenever ``prefill_hooks`` is empty; ``"eager"`` forces the bridge's
            hooked attention (the reference the SDPA path is tested against). With
            ``prefill_hooks`` the prefill is always eager, since only that path fires them.
            The decode steps always run through the hooked attention (``decode_attention``).
        decode_attention: ``"grouped"`` (default) computes grouped-query attention at the
            decode steps without copying the shared keys and values
            (:func:`rhlens.run.gqa.grouped_decode_attention`, same hooks, same rows up to float
            rounding) and runs every component whose hooks are idle as the module it wraps
            (:mod:`rhlens.run.direct`, bit for bit); ``"eager"`` runs the bridge's own attention
            and components (the reference). See :func:`decode_path`.

    Returns:
        a :class:`DecodeTrace`.
    """
    if input_ids.ndim != 1 or input_ids.numel() < 2:
        raise ValueError("input_ids must be a 1-D tensor of at least two prompt tokens.")
    if prefill_attention not in ("sdpa", "eager"):
        raise ValueError(
            f"prefill_attention must be 'sdpa' or 'eager', not {prefill_attention!r}."
        )
    check_decode_attention(decode_attention)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, not {chunk_size}.")
    n_ctx = model.cfg.n_ctx
    if n_ctx and input_ids.numel() + max_new_tokens > n_ctx:
        raise ValueError(
            f"The prompt ({input_ids.numel()} tokens) plus {max_new_tokens} new tokens exceeds "
            f"the model's context of {n_ctx} tokens; use a shorter length."
        )
    if mask is not None:
        decode_hooks = [*mask.hooks(model), *decode_hooks]
        prefill_hooks = [*mask.prefill_hooks(model), *prefill_hooks]
    device = model_device(model)
    tok = model.tokenizer
    ids = input_ids.to(device)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    # Filled on the device by the hook (no host sync per layer per step), moved once at the end.
    argmax = torch.zeros(max_new_tokens, n_layers, n_heads, dtype=torch.long, device=device)
    wanted = sorted(set(record_rows or ()))
    rows = {key: torch.zeros(max_new_tokens, ids.numel() + max_new_tokens, device=device)
            for key in wanted}
    step = {"t": 0}

    def read_pattern(pattern: torch.Tensor, hook) -> torch.Tensor:
        layer = layer_of(hook.name)
        row = pattern[0, :, -1]  # [head, key]
        argmax[step["t"], layer] = row.argmax(-1)
        for lay, head in wanted:
            if lay == layer:
                rows[(lay, head)][step["t"], : row.shape[-1]] = row[head].float()
        return pattern

    from .lean import reserve

    # Room for the new tokens from the start: the prefill writes the prompt's keys and values
    # into buffers the decode steps then fill in place (no copy of the cache in between).
    cache = reserve(new_cache(model), max_new_tokens)
    fast = prefill_attention == "sdpa" and not prefill_hooks
    if chunk_size is None:
        chunk_size = max(1, ids.numel() - 1) if fast else EAGER_CHUNK
    t0 = time.perf_counter()
    if fast:
        with sdpa_attention(model):
            prefill(model, ids[:-1], cache, chunk_size)
    else:
        with model.hooks(fwd_hooks=list(prefill_hooks)) if prefill_hooks else contextlib.nullcontext():
            prefill(model, ids[:-1], cache, chunk_size)
    _sync(device)
    t1 = time.perf_counter()

    recorder = (every_layer("pattern"), read_pattern)
    generated: list[int] = []
    nxt = ids[-1:]
    with model.hooks(fwd_hooks=[*decode_hooks, recorder]), decode_path(model, decode_attention):
        for t in range(max_new_tokens):
            step["t"] = t
            out, cache = model(nxt.unsqueeze(0), return_type="logits_and_cache",
                               past_key_values=cache)
            token = int(out[0, -1].argmax())
            if stops(tok, token, generated, stop_at_newline):
                break
            generated.append(token)
            nxt = torch.tensor([token], device=device)
    steps = len(generated)
    argmax_cpu = argmax[:steps].cpu()
    rows_cpu = {k: v[:steps].cpu() for k, v in rows.items()}
    t2 = time.perf_counter()
    return DecodeTrace(
        prompt_ids=input_ids.cpu(),
        tokens=torch.tensor(generated, dtype=torch.long),
        argmax=argmax_cpu,
        text=tok.decode(generated),
        rows=rows_cpu,
        timings={"prefill_s": t1 - t0, "decode_s": t2 - t1},
    )


@contextlib.contextmanager
def decode_path(model, decode_attention: DecodeAttention = "grouped") -> Iterator[None]:
    """The decode steps' path through ``model``, entered once the steps' hooks are attached.

    Always the lean bridge (:func:`rhlens.run.lean.lean_bridge`). With ``"grouped"`` (the
    default), also grouped-query attention without ``repeat_kv`` copies
    (:func:`rhlens.run.gqa.grouped_decode_attention`) and every component whose hook points are
    idle run as the module it wraps (:func:`rhlens.run.direct.direct_modules`); the hooks in use
    fire as the bridge fires them. ``"eager"`` is the bridge's own attention: the reference.
    """
    from .direct import direct_modules
    from .lean import lean_bridge

    fast = decode_attention == "grouped"
    with lean_bridge(model), grouped_decode_attention(model, enabled=fast), \
            direct_modules(model, enabled=fast):
        yield


def check_decode_attention(decode_attention) -> None:
    """Refuse a ``decode_attention`` other than ``"grouped"`` and ``"eager"``."""
    if decode_attention not in ("grouped", "eager"):
        raise ValueError(
            f"decode_attention must be 'grouped' or 'eager', not {decode_attention!r}."
        )


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that the prefill/decode time split is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- batched decoding


def _matches(name_or_filter, name: str) -> bool:
    return name_or_filter(name) if callable(name_or_filter) else name_or_filter == name


def batched_hooks(conditions: Sequence[Sequence[Hook]]) -> list[Hook]:
    """Merge per-condition hook lists into hooks acting row by row on a batch.

    Row ``b`` of every hooked activation is passed (as a ``[1, ...]`` view) to the hooks of
    ``conditions[b]`` only. Works for any hook whose function treats the batch dimension
    as a batch (head masks, ablations, the compressed-cache mask...).
    """
    conditions = [list(c) for c in conditions]
    if not any(conditions):
        return []

    def wanted(name: str) -> bool:
        return any(_matches(f, name) for cond in conditions for f, _ in cond)

    def fn(tensor, hook):
        if tensor.shape[0] != len(conditions):
            raise ValueError(
                f"batched_hooks expected a batch of {len(conditions)} rows at {hook.name}, "
                f"got {tensor.shape[0]}."
            )
        for b, cond in enumerate(conditions):
            for f, h in cond:
                if _matches(f, hook.name):
                    row = tensor[b : b + 1]
                    out = h(row, hook)
                    if out is not None and out is not row:
                        tensor[b : b + 1] = out
        return tensor

    return [(wanted, fn)]


@torch.no_grad()
def decode_conditions(
    model,
    input_ids: torch.Tensor,
    conditions: Mapping[str, Sequence[Hook]],
    max_new_tokens: int = 16,
    stop_at_newline: bool = True,
    chunk_size: int | None = None,
    *,
    decode_attention: DecodeAttention = "grouped",
) -> dict[str, str]:
    """Greedy answers of ``input_ids`` (``[n]``) under every condition, in one batch.

    The prompt but its last token is prefilled once, with SDPA attention and no hooks
    (conditions act at decode steps only, as the paper masks); the cache is then repeated once per condition and
    decoding runs with :func:`batched_hooks` (each condition's hooks on its own row), as
    :func:`greedy_decode` would with ``decode_hooks=conditions[name]``, with the same stop
    rule (:func:`stops`) and the same ``decode_attention``.

    Returns:
        ``{condition name: decoded text}``.
    """
    if input_ids.ndim != 1 or input_ids.numel() < 2:
        raise ValueError("input_ids must be a 1-D tensor of at least two prompt tokens.")
    names = list(conditions)
    if not names:
        raise ValueError("conditions is empty: pass at least {'none': []}.")
    check_decode_attention(decode_attention)
    tok = model.tokenizer
    ids = input_ids.to(model_device(model))
    cache = new_cache(model)
    with sdpa_attention(model):
        prefill(model, ids[:-1], cache, chunk_size or max(1, ids.numel() - 1))
    batch = len(names)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    from .lean import reserve

    reserve(cache, max_new_tokens)
    nxt = ids[-1:].repeat(batch, 1)
    generated: list[list[int]] = [[] for _ in names]
    done = [False] * batch
    hooks = batched_hooks([conditions[n] for n in names])
    with model.hooks(fwd_hooks=hooks), decode_path(model, decode_attention):
        for _ in range(max_new_tokens):
            out, cache = model(nxt, return_type="logits_and_cache", past_key_values=cache)
            tokens = out[:, -1].argmax(-1)
            for b, token in enumerate(tokens.tolist()):
                if done[b]:
                    continue
                if stops(tok, token, generated[b], stop_at_newline):
                    done[b] = True
                else:
                    generated[b].append(token)
            if all(done):
                break
            nxt = tokens[:, None]
    return {name: tok.decode(gen) for name, gen in zip(names, generated)}
