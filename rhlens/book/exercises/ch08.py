"""Checks for chapter 8 (scaling to the paper's 7B-14B checkpoints)."""

from __future__ import annotations

from ...apps.kvcache import kv_cache_bytes
from ...models.rope import ntk_theta
from .check import checker, expect, passed, tiny


def _full_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens, bytes_per_value=2) -> int:
    return kv_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens,
                          bytes_per_value=bytes_per_value, compress_all=False)["full"]


@checker
def check_kv_cache_bytes(fn) -> None:
    """``fn(n_layers, n_kv_heads, d_head, n_tokens, bytes_per_value=2) -> int``."""
    cases = [(32, 32, 128, 32768, 2), (32, 8, 128, 32768, 2), (30, 3, 64, 8192, 4), (1, 1, 1, 1, 1)]
    for case in cases:
        got, want = int(fn(*case)), _full_cache_bytes(*case)
        expect(got == want, "KV-cache bytes", f"{case}: got {got}, expected {want}",
               "two tensors (K and V) per layer, each [n_kv_heads, n_tokens, d_head]; GQA "
               "shares one KV head among several query heads")
    passed("KV-cache bytes", "Llama-2-7B at 32K tokens needs "
           f"{_full_cache_bytes(*cases[0]) / 2**30:.0f} GiB of KV cache in bf16")


@checker
def check_ntk_theta(fn) -> None:
    """``fn(theta, seq_len, max_position_embeddings, factor, head_dim) -> float``."""
    cases = [(1e4, 81920, 4096, 10.0, 128), (1e4, 2048, 4096, 10.0, 128), (5e5, 8192, 4096, 2.0, 64)]
    for case in cases:
        got, want = float(fn(*case)), ntk_theta(*case)
        expect(abs(got - want) <= 1e-6 * want, "NTK theta",
               f"{case}: got {got:.6g}, expected {want:.6g}",
               "below max_position_embeddings the base is unchanged; above it, "
               "theta * (factor*n/max_pos - (factor-1)) ** (d/(d-2))")
    passed("NTK theta")


@checker
def check_chunked_prefill(fn) -> None:
    """``fn(model, ids [n], chunk_size) -> logits [vocab]``: feed the prompt ``chunk_size``
    tokens at a time through one KV cache (:func:`rhlens.run.decode.new_cache`) and return the
    logits of the last position; they must equal one forward pass over the whole prompt
    (checked on a tiny grouped-query Llama)."""
    import torch

    ids = torch.randint(5, 2000, (37,), generator=torch.Generator().manual_seed(8))
    model = tiny("llama")
    with torch.no_grad():
        want = model(ids[None])[0, -1]
        for chunk in (1, 5, 16, 37, 64):
            got = torch.as_tensor(fn(model, ids.clone(), chunk)).reshape(-1)
            expect(got.shape == want.shape, "chunked prefill",
                   f"logits of shape {tuple(got.shape)}, expected {tuple(want.shape)}",
                   "return the logits of the last position only: out[0, -1]")
            if not torch.allclose(got, want, atol=1e-4):
                alone = torch.zeros(0)
                for start in range(0, ids.numel(), chunk):
                    alone = model(ids[start:start + chunk][None])[0, -1]
                hint = ("each chunk must see the earlier ones: pass the SAME cache to every "
                        "chunk (past_key_values=cache) and keep the cache it returns"
                        if torch.allclose(got, alone, atol=1e-4) else
                        "call model(chunk[None], return_type='logits_and_cache', "
                        "past_key_values=cache) for each chunk in order, cache = new_cache(model)")
                expect(False, "chunked prefill",
                       f"chunk_size {chunk}: logits differ from one pass by "
                       f"{float((got - want).abs().max()):.3g}", hint)
    passed("chunked prefill", "equal to one forward pass for chunks of 1, 5, 16, 37 and 64")
