"""Checks for chapter 06 (intrinsic property and dynamic activation)."""

from __future__ import annotations

import torch

from ...score.heads import head_name
from ...score.scoring import copy_hits, retrieval_scores
from .check import COPY_PROMPT, COPY_SPAN, checker, expect, fail, passed


@checker
def check_top_head_per_sample(fn) -> None:
    """``fn(per_sample [n, L, H]) -> list[str]``: each sample's best head as ``"L{l}H{h}"``."""
    per = torch.zeros(3, 2, 3)
    per[0, 1, 2] = 0.9
    per[1, 0, 1] = 0.5
    per[2, 1, 0] = 0.7
    want = [head_name(*divmod(int(p.flatten().argmax()), per.shape[2])) for p in per]
    got = list(fn(per))
    expect(got == want, "top head per sample", f"expected {want}, got {got}",
           "argmax over the flattened [L, H] map of each sample, then layer = i // H, head = i % H")
    passed("top head per sample")


@checker
def check_firing_counts(fn) -> None:
    """``fn(counts [L, H], samples, nearly) -> dict``: from how many samples each head fired on,
    the numbers of heads that fire ``always`` (every sample), ``nearly_always`` (on at least
    ``nearly`` of them, the always-on heads included), ``some`` (at least once, below
    ``nearly``) and ``never``. The reference is :func:`rhlens.analyze.published.activation_table`,
    on all seven published maps."""
    from ...analyze.published import NAMES, activation_table, published

    nearly_col = "nearly_always (>= 95%)"
    table = activation_table(nearly=0.95).set_index("model")
    for name in NAMES:
        p = published(name)
        got = fn(p.count_above_0.clone(), p.samples, 0.95)
        row = table.loc[name]
        want = {"always": int(row["always"]), "nearly_always": int(row[nearly_col]),
                "some": int(row["some"]), "never": int(row["never"])}
        for key, value in want.items():
            expect(key in got, "firing counts", f"missing key {key!r}")
            expect(int(got[key]) == value, "firing counts",
                   f"{name}: {key} = {int(got[key])}, expected {value}",
                   "share = counts / samples; always: share == 1; nearly_always: share >= "
                   "nearly (always-on heads included); some: 0 < share < nearly; never: 0")
    passed("firing counts", "on the seven published maps")


@checker
def check_copy_trace(fn) -> None:
    """``fn(argmax [T, L, H], tokens [T], prompt_ids, needle_span, layer, head) ->
    [(step, position), ...]``: every decode step at which head ``(layer, head)`` copy-pastes,
    with the needle position it copies from (repeats included), in step order."""
    g = torch.Generator().manual_seed(6)
    fixed = (torch.tensor([[[2, 1]], [[2, 6]], [[3, 3]], [[9, 4]]]), torch.tensor([11, 11, 12, 13]))
    cases = [fixed] + [(torch.randint(0, 9, (int(torch.randint(1, 7, (1,), generator=g)), 2, 2),
                                      generator=g), None) for _ in range(20)]
    for argmax, tokens in cases:
        if tokens is None:
            tokens = COPY_PROMPT[torch.randint(0, 7, (argmax.shape[0],), generator=g)]
        for layer, head in [(0, 0), (0, 1)] + ([(1, 1)] if argmax.shape[1] > 1 else []):
            want = [(t, int(argmax[t, layer, head])) for t in range(argmax.shape[0])
                    if bool(copy_hits(argmax[t], int(tokens[t]), COPY_PROMPT, COPY_SPAN)[layer, head])]
            got = [tuple(map(int, e)) for e in fn(argmax, tokens, COPY_PROMPT, COPY_SPAN, layer, head)]
            if got != want:
                hint = ("keep every copying step, repeats included (the score de-duplicates "
                        "positions later, the trace does not)"
                        if sorted(set(got)) == sorted(set(want)) or
                        {p for _, p in got} == {p for _, p in want}
                        else "a step copies when the head's argmax lies in the needle span AND "
                             "holds the token generated at that step (position 6 holds 11 but "
                             "lies outside the needle; argmax 9 lies past the prompt)")
                fail("copy trace", f"head ({layer}, {head}), argmax {argmax[:, layer, head].tolist()}, "
                     f"tokens {tokens.tolist()}: got {got}, expected {want}", hint)
            score = float(retrieval_scores(argmax, tokens, COPY_PROMPT, COPY_SPAN)[layer, head])
            expect(abs(len({p for _, p in got}) / (COPY_SPAN[1] - COPY_SPAN[0]) - score) < 1e-6,
                   "copy trace", "the distinct positions do not give the retrieval score")
    passed("copy trace", "its distinct positions give the paper's retrieval score")
