"""Checks for chapter 8 (scaling to the paper's 7B-14B checkpoints)."""

from __future__ import annotations

from ..kvcache import kv_cache_bytes
from ..rope import ntk_theta
from .check import expect, passed


def _full_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens, bytes_per_value=2) -> int:
    return kv_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens,
                          bytes_per_value=bytes_per_value, compress_all=False)["full"]


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
