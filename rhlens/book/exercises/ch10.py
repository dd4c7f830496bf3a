"""Checks for chapter 10 (four head detectors held against the interventions)."""

from __future__ import annotations

from .check import checker, expect, passed


@checker
def check_query_focus(fn) -> None:
    """``fn(rows, span) -> [n_heads]``: QRHead's score from the question's attention rows
    ``rows`` ``[n_heads, |q|, keys]`` (:func:`rhlens.score.detectors.query_focus_score` is the
    reference)."""
    import torch

    from ...score.detectors import query_focus_score

    hand = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 0.0]]])
    got = torch.as_tensor(fn(hand, (1, 3)), dtype=torch.float64)
    expect(tuple(got.shape) == (1,), "query focus", f"got shape {tuple(got.shape)}, expected "
           "(1,): one number per head", "sum over the span's keys, average over question tokens")
    expect(abs(float(got[0]) - 0.75) < 1e-9, "query focus",
           f"rows (0.1, 0.2, 0.3, 0.4) and (0, 0.5, 0.5, 0) on keys 1..2 gave {float(got[0])}, "
           "expected 0.75", "(0.5 + 1.0) / 2: each question token's mass on the span, averaged")
    g = torch.Generator().manual_seed(10)
    for heads, q, keys, span in [(3, 4, 9, (2, 5)), (9, 1, 20, (0, 20))]:
        rows = torch.rand(heads, q, keys, generator=g, dtype=torch.float64).softmax(-1)
        want = query_focus_score(rows, span)
        got = torch.as_tensor(fn(rows, span), dtype=torch.float64)
        expect(got.shape == want.shape and torch.allclose(got, want), "query focus",
               f"got {got.tolist()[:3]}..., expected {want.tolist()[:3]}...",
               "the span is (start, end) with end exclusive")
    passed("query focus")


@checker
def check_write_contrast(fn) -> None:
    """``fn(alpha, values, span, n_prompt, w_o, direction, scale) -> [n_heads]``: LOCOS's
    needle-minus-off-needle mean logit contribution at one decode step (the reference is
    :func:`rhlens.score.detectors.split_values` then :func:`rhlens.score.detectors.write_contrast`)."""
    import torch

    from ...score.detectors import split_values, write_contrast

    def reference(alpha, values, span, n_prompt, w_o, direction, scale):
        needle, off = split_values(alpha, values, span, n_prompt)
        n_needle = span[1] - span[0]
        return write_contrast(needle[None], off[None], n_needle, n_prompt - n_needle, w_o,
                              torch.tensor([scale], dtype=w_o.dtype), direction[None])

    alpha = torch.tensor([[0.1, 0.4, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    values = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 2.0], [4.0, 4.0]]], dtype=torch.float64)
    w_o = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)
    d = torch.tensor([1.0, 0.0], dtype=torch.float64)
    got = torch.as_tensor(fn(alpha, values, (1, 3), 4, w_o, d, 2.0), dtype=torch.float64)
    expect(tuple(got.shape) == (2,), "write contrast",
           f"got shape {tuple(got.shape)}, expected (2,): one number per query head",
           "both query heads read the one value group")
    expect(torch.allclose(got, torch.tensor([0.075, -0.1875], dtype=torch.float64)),
           "write contrast", f"the hand-built case gave {got.tolist()}, expected [0.075, -0.1875]",
           "φ(j) = α(j) · (v_j W_O) · d / s; mean over the needle keys minus mean over the other "
           "prompt keys")
    g = torch.Generator().manual_seed(11)
    for heads, kv, keys, n_prompt, span in [(4, 2, 12, 10, (3, 6)), (9, 3, 30, 25, (5, 9))]:
        alpha = torch.rand(heads, keys, generator=g, dtype=torch.float64).softmax(-1)
        values = torch.randn(kv, keys, 5, generator=g, dtype=torch.float64)
        w_o = torch.randn(heads, 5, 7, generator=g, dtype=torch.float64)
        d = torch.randn(7, generator=g, dtype=torch.float64)
        want = reference(alpha, values, span, n_prompt, w_o, d, 1.5)
        got = torch.as_tensor(fn(alpha, values, span, n_prompt, w_o, d, 1.5), dtype=torch.float64)
        expect(got.shape == want.shape and torch.allclose(got, want, atol=1e-9), "write contrast",
               f"got {got.tolist()[:3]}..., expected {want.tolist()[:3]}...",
               "query head h reads value group h // (n_heads // n_kv_heads); keys from n_prompt "
               "on are generated tokens, neither needle nor off-needle")
    passed("write contrast")
