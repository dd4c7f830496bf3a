"""KV-cache compression guided by retrieval heads (the idea behind DuoAttention,
RazorAttention and HeadKV).

Policy: a few *full* heads keep the whole KV cache; every other head keeps only the first
``sink`` tokens (the attention sink) and the ``window`` most recent tokens. Retrieval heads
are the natural choice of full heads, since they are the ones that look far back.

**Simulation.** The cache is built by a normal prefill, then compressed; at every decode
step a ``"window"`` head edit (:func:`rhlens.intervene.edit.head_edit`, on ``hook_attn_scores``)
sets the pre-softmax scores of the keys a compressed head no longer holds (positions
``sink <= i < n_keys - window``) to ``-inf``.
The model then computes exactly what it would compute from the compressed cache.

**Grouped-query attention.** The cache is stored per *KV head*, and a KV head is shared by
``n_heads // n_key_value_heads`` query heads. A KV head must therefore be kept in full as
soon as *one* of its query heads is a retrieval head, and then every query head of its
group can read it at no extra cost. So the policy is decided per KV head
(:func:`kv_head_scores` ranks a KV head by the best score in its group), the mask is applied
to whole groups, and memory is counted per KV head (:func:`kv_cache_bytes`). On SmolLM2
(9 query heads, 3 KV heads per layer) keeping one retrieval head full keeps three query
heads' worth of attention, and costs one ninetieth of the cache.

Example::

    >>> import torch
    >>> scores = torch.tensor([[0.0, 0.9, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]])   # [L=2, H=4]
    >>> kv_head_scores(scores, n_kv_heads=2)        # groups {0,1} and {2,3}
    tensor([[0.9000, 0.0000],
            [0.2000, 0.0000]])
    >>> query_heads_of([(0, 0)], n_heads=4, n_kv_heads=2)
    [(0, 0), (0, 1)]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..intervene.edit import head_edit
from ..niah.answers import niah_score
from ..niah.grid import Grid
from ..run.decode import Hook, decode_conditions
from ..score.heads import Head

#: A KV head: ``(layer, kv head)``; query head ``h`` reads KV head ``h // group_size``.
KVHead = tuple[int, int]


def group_size(n_heads: int, n_kv_heads: int) -> int:
    """Query heads per KV head (1 without GQA)."""
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}.")
    return n_heads // n_kv_heads


def kv_head_of(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The KV head that query head ``head`` reads (consecutive groups, as in HF/Llama)."""
    return head // group_size(n_heads, n_kv_heads)


def n_kv_heads(model) -> int:
    """KV heads per layer: ``n_key_value_heads`` under grouped-query attention, else one per
    query head (TransformerLens leaves ``n_key_value_heads`` as ``None`` for multi-head
    attention, as in Llama-2-7B)."""
    return model.cfg.n_key_value_heads or model.cfg.n_heads


def kv_heads_of(query_heads: Sequence[Head], n_heads: int,
                n_kv_heads: int) -> list[KVHead]:
    """KV heads that must stay full so that every query head in ``query_heads`` sees all keys.

    >>> kv_heads_of([(3, 1), (3, 2), (5, 8)], n_heads=9, n_kv_heads=3)
    [(3, 0), (5, 2)]
    """
    return sorted({(l, kv_head_of(h, n_heads, n_kv_heads)) for l, h in query_heads})


def query_heads_of(kv_heads: Sequence[KVHead], n_heads: int, n_kv_heads: int) -> list[Head]:
    """All query heads reading the given KV heads."""
    g = group_size(n_heads, n_kv_heads)
    return sorted((l, k * g + i) for l, k in set(kv_heads) for i in range(g))


def kv_head_scores(scores: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """``[n_layers, n_kv_heads]``: best retrieval score among each KV head's query heads."""
    n_layers, n_heads = scores.shape
    g = group_size(n_heads, n_kv_heads)
    return scores.reshape(n_layers, n_kv_heads, g).amax(-1)


def top_kv_heads(scores: torch.Tensor, n_kv_heads: int, k: int) -> list[KVHead]:
    """The ``k`` KV heads whose groups hold the best retrieval heads."""
    kv = kv_head_scores(scores, n_kv_heads)
    if not 0 <= k <= kv.numel():
        raise ValueError(f"k must lie in [0, {kv.numel()}], got {k}.")
    order = kv.flatten().argsort(descending=True, stable=True)[:k]
    return sorted((int(i) // n_kv_heads, int(i) % n_kv_heads) for i in order)


def random_kv_heads(n_layers: int, n_kv_heads: int, k: int, seed: int) -> list[KVHead]:
    """``k`` KV heads drawn uniformly (seeded) from all ``n_layers * n_kv_heads``."""
    pool = [(l, k_) for l in range(n_layers) for k_ in range(n_kv_heads)]
    if not 0 <= k <= len(pool):
        raise ValueError(f"k must lie in [0, {len(pool)}], got {k}.")
    return sorted(random.Random(seed).sample(pool, k))


def compressed_cache_hooks(
    full_kv_heads: Sequence[KVHead],
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    sink: int = 4,
    window: int = 64,
) -> list[Hook]:
    """Decode hooks simulating the compressed cache (``-inf`` on dropped keys).

    Every query head whose KV head is not in ``full_kv_heads`` sees only key positions
    ``< sink`` and ``>= n_keys - window`` (the window includes generated tokens).
    Use only at decode steps (one query per forward).
    """
    if sink < 0 or window < 0 or sink + window < 1:
        raise ValueError("sink and window must be >= 0 and keep at least one token.")
    full = set(full_kv_heads)
    g = group_size(n_heads, n_kv_heads)
    compressed = {layer: [h for h in range(n_heads) if (layer, h // g) not in full]
                  for layer in range(n_layers)}
    return [head_edit("window", layer, heads, sink=sink, window=window)
            for layer, heads in compressed.items() if heads]


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    d_head: int,
    n_tokens: int,
    full_kv_heads: Sequence[KVHead] = (),
    sink: int = 4,
    window: int = 64,
    bytes_per_value: int = 2,
    compress_all: bool = True,
) -> dict:
    """Bytes of K and V the policy keeps for a context of ``n_tokens``.

    Each KV head stores ``2 * d_head`` values per token (K and V). Full heads keep
    ``n_tokens``, the others ``min(n_tokens, sink + window)``. ``bytes_per_value=2`` is
    fp16/bf16. With ``compress_all=False`` nothing is compressed (the full-cache baseline).

    >>> r = kv_cache_bytes(30, 3, 64, 1000, full_kv_heads=[(0, 0)], sink=4, window=60)
    >>> r["full"], r["kept"], round(r["share"], 4)
    (23040000, 1714176, 0.0744)
    """
    per_token = 2 * d_head * bytes_per_value
    total = n_layers * n_kv_heads
    n_full = len(set(full_kv_heads)) if compress_all else total
    short = min(n_tokens, sink + window)
    full_bytes = total * n_tokens * per_token
    kept = n_full * n_tokens * per_token + (total - n_full) * short * per_token
    return {"full": full_bytes, "kept": kept, "share": kept / full_bytes,
            "saved": full_bytes - kept, "n_full_kv_heads": n_full, "n_kv_heads": total}


@dataclass
class Policy:
    """One cache policy of a sweep: which KV heads stay full, and the sink/window of the rest."""

    name: str
    family: str  # "retrieval", "random" or "window"
    full_kv_heads: list[KVHead]
    sink: int
    window: int
    share: float = 0.0
    hooks: list = field(default_factory=list, repr=False)


def policy_grid(
    scores: torch.Tensor,
    n_kv_heads: int,
    n_tokens: int,
    budgets: Sequence[int] = (0, 1, 3, 6, 12),
    sink: int = 4,
    window: int = 32,
    seeds: Sequence[int] = (0, 1),
    d_head: int = 64,
) -> list[Policy]:
    """Policies for an accuracy-versus-memory curve.

    For each budget ``k`` (number of full KV heads): the top-``k`` retrieval KV heads,
    ``k`` random KV heads per seed, and a *window for every head* sized to keep the same
    share of the cache (``sink + w`` tokens with ``w`` chosen to match the memory). Plus
    ``"full"`` (no compression).
    """
    n_layers, n_heads = scores.shape
    policies = [Policy("full", "full", [(l, k) for l in range(n_layers) for k in range(n_kv_heads)],
                       sink, n_tokens, 1.0)]
    for k in budgets:
        share = kv_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens,
                               top_kv_heads(scores, n_kv_heads, k), sink, window)["share"]
        policies.append(Policy(f"retrieval-{k}", "retrieval",
                               top_kv_heads(scores, n_kv_heads, k), sink, window, share))
        if k:
            for seed in seeds:
                policies.append(Policy(f"random-{k}-s{seed}", "random",
                                       random_kv_heads(n_layers, n_kv_heads, k, seed),
                                       sink, window, share))
            w = max(1, round(share * n_tokens) - sink)
            policies.append(Policy(f"window-{k}", "window", [], sink, w,
                                   kv_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens, [],
                                                  sink, w)["share"]))
    for p in policies:
        if p.family != "full":
            p.hooks = compressed_cache_hooks(p.full_kv_heads, n_layers, n_heads, n_kv_heads,
                                             p.sink, p.window)
    return policies


def kv_compression_sweep(model, grid: Grid, policies: Sequence[Policy], *,
                         progress: bool = True):
    """NIAH score of every prompt of ``grid`` under every policy (one batched decode per
    prompt, :func:`rhlens.run.decode.decode_conditions`).

    Returns a DataFrame with ``policy``, ``family``, ``n_full``, ``share``, ``sample``,
    ``answer``, ``score``.
    """
    conditions = {p.name: p.hooks for p in policies}
    rows = []
    samples = grid.samples(model.tokenizer, model.cfg.n_ctx)
    for i, sample in enumerate(tqdm(samples, desc="KV policies", disable=not progress)):
        outs = decode_conditions(model, sample.input_ids, conditions, grid.max_new_tokens)
        for p in policies:
            rows.append({"policy": p.name, "family": p.family,
                         "n_full": len(p.full_kv_heads), "share": p.share, "sample": i,
                         "answer": outs[p.name],
                         "score": niah_score(sample.needle.answer, outs[p.name])})
    return pd.DataFrame(rows)


def curve(frame):
    """Mean NIAH score per (family, share); random seeds pooled (mean and std)."""
    per = frame.groupby(["family", "policy", "share"], sort=False)["score"].mean().reset_index()
    per["budget"] = per["policy"].str.replace(r"-s\d+$", "", regex=True)
    out = per.groupby(["family", "budget"], sort=False).agg(
        share=("share", "mean"), score=("score", "mean"), spread=("score", "std"))
    return out.reset_index().fillna({"spread": 0.0})
