"""The command line's own checks: everything a command can check before the model loads that the
library's configs do not check themselves (output paths, the model's facts against the grid and
a score file, head counts against a score map). Each raises
:class:`~rhlens.errors.UsageError` naming the argument, which the command line shows as its flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models.available import device_map_name, device_name, dtype_name, model_facts, model_name
from ..validate import check_grid, count, finite, int_list, k_list, output_file, same_file


def check_shape(shape: tuple[int, ...], facts: dict[str, int], source: str) -> None:
    """A score map of ``shape`` must match the model's ``n_layers`` x ``n_heads`` (if known)."""
    if "n_layers" in facts and "n_heads" in facts:
        want = (facts["n_layers"], facts["n_heads"])
        if tuple(shape) != want:
            raise UsageError(f"{source} scores {shape[0]} x {shape[1]} heads, but the model "
                             f"has {want[0]} x {want[1]}: wrong score file?", arg="scores")


# --------------------------------------------------------------------------- commands


def check_model_args(args) -> dict[str, int]:
    """``model``, ``device``, ``dtype``; returns :func:`model_facts` of the model."""
    dtype_name(args.dtype)
    device_name(args.device)
    device_map_name(getattr(args, "device_map", None), args.device)
    model_name(args.model)
    return model_facts(args.model)


def check_score_args(args) -> dict[str, int]:
    """Everything of ``rhlens score`` that can be checked before the model loads, besides what
    :class:`~rhlens.score.detect.ScoreConfig` checks itself (the gate, the mode, the span)."""
    count(args.max_new_tokens, "max_new_tokens", minimum=1)
    if args.needles is not None:
        count(args.needles, "needles", minimum=1)
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    output_file(args.out, "out", sidecars=(".samples.jsonl",))
    if args.plot:
        output_file(args.plot, "plot")
        if same_file(args.plot, args.out):
            raise UsageError("plot must name another file than --out.", arg="plot")
    facts = check_model_args(args)
    check_grid(args.lengths, args.depths, args.max_new_tokens, facts.get("n_ctx"))
    return facts


def check_plot_args(args) -> None:
    """``rhlens plot``: the figure can be written and does not replace the score file."""
    output_file(args.out, "out")
    if same_file(args.out, args.scores):
        raise UsageError("out must name another file than the score file.", arg="out")


def check_niah_args(args) -> dict[str, Any]:
    """Everything of ``rhlens niah`` that can be checked before the score file is read and
    the model loads; returns ``{"facts": ..., "ks": ..., "seeds": ...}``."""
    count(args.max_new_tokens, "max_new_tokens", minimum=1)
    count(args.mask_top, "mask_top")
    count(args.mask_random, "mask_random")
    if args.needles is not None:
        count(args.needles, "needles", minimum=1)
    if args.skip_needles is not None:
        count(args.skip_needles, "skip_needles")
    finite(args.threshold, "threshold")
    count(args.seed, "seed", minimum=-(2**63))
    seeds = int_list(args.seeds, "seeds")
    ks = k_list(args.sweep_k) if args.sweep_k is not None else None
    if (args.mask_top or args.mask_random or ks is not None) and not args.scores:
        raise UsageError("Masking needs --scores (make one with `rhlens score`).")
    if args.mask_top and args.mask_random:
        raise UsageError("Use --mask-top or --mask-random in one run, not both.")
    if ks is not None and (args.mask_top or args.mask_random):
        raise UsageError("--sweep-k chooses the masked heads itself; leave out --mask-top and "
                         "--mask-random.")
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    output_file(args.out, "out", sidecars=(".samples.jsonl",))
    if same_file(args.out, args.scores):
        raise UsageError("out must name another file than --scores.", arg="out")
    if args.plot:
        output_file(args.plot, "plot")
        if same_file(args.plot, args.out) or same_file(args.plot, args.scores):
            raise UsageError("plot must name another file than --out and --scores.", arg="plot")
    facts = check_model_args(args)
    check_grid(args.lengths, args.depths, args.max_new_tokens, facts.get("n_ctx"))
    return {"facts": facts, "ks": ks, "seeds": seeds}


def check_head_counts(scores, mask_top: int = 0, mask_random: int = 0,
                      ks: Sequence[int] | None = None, threshold: float = 0.1) -> None:
    """Head counts against a score map: at most every head for top-K, at most the heads
    scoring ``<= threshold`` for random-K (the control never masks a retrieval head)."""
    n_total = int(scores.numel())
    pool = int((scores <= threshold).sum())
    for k, arg in [(mask_top, "mask_top")] + [(k, "sweep_k") for k in (ks or [])]:
        if k > n_total:
            raise UsageError(f"{arg}: cannot mask {k} heads of a model with {n_total}.", arg=arg)
    for k, arg in [(mask_random, "mask_random")] + [(k, "sweep_k") for k in (ks or [])]:
        if k > pool:
            raise UsageError(
                f"{arg}: only {pool} heads score <= {threshold} (--threshold), so {k} random "
                "non-retrieval heads cannot be drawn; ask for fewer.", arg=arg)


def check_patch_args(args) -> dict[str, Any]:
    """Everything of ``rhlens patch`` that can be checked before the scores are read and the
    model loads (the group sizes against the scores are checked by
    :class:`~rhlens.intervene.patch_sweep.PatchConfig`); returns ``{"facts", "ks", "seeds"}``."""
    count(args.max_new_tokens, "max_new_tokens", minimum=1)
    count(args.batch_size, "batch_size", minimum=1)
    if args.pairs is not None:
        count(args.pairs, "pairs", minimum=1)
    if args.needles is not None:
        count(args.needles, "needles", minimum=1)
    if args.skip_needles is not None:
        count(args.skip_needles, "skip_needles")
    finite(args.threshold, "threshold")
    seeds = int_list(args.seeds, "seeds")
    ks = k_list(args.ks, "ks")
    if isinstance(ks, list) and not any(k > 0 for k in ks):
        raise UsageError("ks has no group size above 0: nothing to patch.", arg="ks")
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    output_file(args.out, "out", sidecars=(".samples.jsonl",))
    if same_file(args.out, args.scores):
        raise UsageError("out must name another file than --scores.", arg="out")
    from ..analyze.published import is_published  # imports torch: only for a missing file

    if not Path(args.scores).exists() and not is_published(args.scores):
        raise UsageError(f"scores {args.scores}: no such file (make one with `rhlens score`, "
                         "or name a published map: see `rhlens published`).", arg="scores")
    facts = check_model_args(args)
    check_grid(args.lengths, args.depths, args.max_new_tokens, facts.get("n_ctx"))
    return {"facts": facts, "ks": ks, "seeds": seeds}
