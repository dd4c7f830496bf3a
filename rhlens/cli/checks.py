"""The command line's own checks: everything a command can check before the model loads that the
library's configs do not check themselves (output paths, the model's facts against the grid and
a score file, head counts against a score map). Each raises
:class:`~rhlens.errors.UsageError` naming the argument, which the command line shows as its flag.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models.available import device_map_name, device_name, dtype_name, model_facts, model_name
from ..run.names import CARD_SUFFIX, k_sweep_part
from ..run.names import LOG_SUFFIX as _LOG
from ..run.shard import Shard
from ..validate import (
    batch_size,
    check_grid,
    count,
    finite,
    inside,
    k_list,
    output_file,
    same_file,
    seed,
    seed_list,
)


def check_shape(shape: tuple[int, ...], facts: dict[str, int], source: str) -> None:
    """A score map of ``shape`` must match the model's ``n_layers`` x ``n_heads`` (if known)."""
    if "n_layers" in facts and "n_heads" in facts:
        want = (facts["n_layers"], facts["n_heads"])
        if tuple(shape) != want:
            raise UsageError(f"{source} scores {shape[0]} x {shape[1]} heads, but the model "
                             f"has {want[0]} x {want[1]}: wrong score file?", arg="scores")


# --------------------------------------------------------------------------- own files


def _read_files(args) -> list[tuple[Path, str]]:
    """The local files a command reads, each with its name in an error: the haystack (each
    text file of a haystack folder), the needle file, the score file and its sample log (read
    for its mode and the needles to hold out)."""
    found: list[tuple[Path, str]] = []
    haystack = getattr(args, "haystack", None)
    if haystack and os.path.isdir(haystack):
        found += [(p, f"the haystack (--haystack) file {p}") for p in sorted(Path(haystack).rglob("*"))
                  if p.suffix in (".txt", ".md") and p.is_file()]
    elif haystack:
        found.append((Path(haystack), f"the haystack (--haystack) {haystack}"))
    if getattr(args, "needle_file", None):
        found.append((Path(args.needle_file), f"the needle file (--needle-file) {args.needle_file}"))
    if getattr(args, "scores", None):
        found.append((Path(args.scores), f"the score file {args.scores}"))
        found.append((Path(f"{args.scores}{_LOG}"),
                      f"the score file's sample log {args.scores}{_LOG}"))
    return [(p, what) for p, what in found if os.path.lexists(p)]


def check_own_files(args, outputs: Sequence[tuple[str, str | Path | None, str]]) -> None:
    """No file a command writes (``outputs``: ``(argument, path, its name in an error)``) may
    replace a file it reads, a file of a local model, or another of its outputs, however the
    path reaches it (``..``, a symlink, a hard link): checked before anything is read, so a
    mistyped flag never destroys a haystack, a needle file or a score run's log."""
    outs = [(arg, Path(path), name) for arg, path, name in outputs if path]
    model = getattr(args, "model", None)
    local_model = model and os.path.isdir(model)
    for i, (arg, path, name) in enumerate(outs):
        where = f"{arg} {path}" if name == f"--{arg.replace('_', '-')}" else f"{arg}: {name} {path}"
        for src, what in _read_files(args):
            if same_file(path, src):
                raise UsageError(f"{where} would overwrite {what}, which this command reads; "
                                 "name another file.", arg=arg)
        if model and (local_model and inside(path, model) or same_file(path, model)):
            raise UsageError(f"{where} would overwrite a file of the model (--model) {model}; "
                             "write outside the model's folder.", arg=arg)
        for _, other, other_name in outs[:i]:
            if same_file(path, other):
                raise UsageError(f"{where} would overwrite {other_name} {other}, which this "
                                 "command writes too; name another file.", arg=arg)


# --------------------------------------------------------------------------- commands


def check_model_args(args) -> dict[str, int]:
    """``model``, ``device``, ``dtype``; returns :func:`model_facts` of the model."""
    dtype_name(args.dtype)
    device_name(args.device)
    device_map_name(getattr(args, "device_map", None), args.device)
    model_name(args.model)
    return model_facts(args.model)


def check_score_args(args, shard: Shard | None = None) -> dict[str, int]:
    """Everything of ``rhlens score`` that can be checked before the model loads, besides what
    :class:`~rhlens.score.detect.ScoreConfig` checks itself (the gate, the mode, the span, the
    batch size);
    ``shard``: the run's shard, from ``--shard`` or the launcher."""
    count(args.max_new_tokens, "max_new_tokens", minimum=1)
    if args.needles is not None:
        count(args.needles, "needles", minimum=1)
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    output_file(args.out, "out", sidecars=(_LOG, CARD_SUFFIX))
    if args.plot:
        output_file(args.plot, "plot")
    check_own_files(args, [("out", args.out, "--out"), ("out", f"{args.out}{_LOG}",
                                                          "--out (its sample log)"),
                           ("plot", args.plot, "--plot")])
    facts = check_model_args(args)
    check_grid(args.lengths, args.depths, args.max_new_tokens, facts.get("n_ctx"))
    check_until_stable_args(args, facts, shard)
    return facts


def check_until_stable_args(args, facts: dict[str, int], shard: Shard | None = None) -> None:
    """``--until-stable K`` with its ``--stability`` and ``--max-samples``: not the one without
    the other, not with ``--shard``, and K at most the model's query heads (the rule's own
    ranges are checked by :class:`~rhlens.score.stopping.UntilStable`)."""
    k = getattr(args, "until_stable", None)
    if k is None:
        for flag in ("max_samples", "stability"):
            if getattr(args, flag, None) is not None:
                raise UsageError(f"{flag} goes with --until-stable K; add it, or drop "
                                 f"--{flag.replace('_', '-')}.", arg=flag)
        return
    if shard is not None or getattr(args, "shard", None):
        raise UsageError("until_stable needs every sample of the run in one process; drop "
                         "--shard (or --until-stable).", arg="until_stable")
    n_heads = facts.get("n_layers", 0) * facts.get("n_heads", 0)
    if n_heads and k > n_heads:
        raise UsageError(f"until_stable {k} exceeds the model's {n_heads} query heads.",
                         arg="until_stable")


def check_plot_args(args) -> None:
    """``rhlens plot``: the figure can be written and does not replace the score file."""
    output_file(args.out, "out")
    check_own_files(args, [("out", args.out, "--out")])


def check_niah_args(args) -> dict[str, Any]:
    """Everything of ``rhlens niah`` that can be checked before the score file is read and
    the model loads; returns ``{"facts": ..., "ks": ..., "seeds": ...}``."""
    count(args.max_new_tokens, "max_new_tokens", minimum=1)
    batch_size(args.batch_size)
    count(args.mask_top, "mask_top")
    count(args.mask_random, "mask_random")
    if args.needles is not None:
        count(args.needles, "needles", minimum=1)
    if args.skip_needles is not None:
        count(args.skip_needles, "skip_needles")
    finite(args.threshold, "threshold")
    seed(args.seed, "seed")
    seeds = seed_list(args.seeds, "seeds")
    ks = k_list(args.sweep_k) if args.sweep_k is not None else None
    if (args.mask_top or args.mask_random or ks is not None) and not args.scores:
        raise UsageError("Masking needs --scores (make one with `rhlens score`).")
    if args.mask_top and args.mask_random:
        raise UsageError("Use --mask-top or --mask-random in one run, not both.")
    if ks is not None and (args.mask_top or args.mask_random):
        raise UsageError("--sweep-k chooses the masked heads itself; leave out --mask-top and "
                         "--mask-random.")
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    output_file(args.out, "out", sidecars=(_LOG,))
    if args.plot:
        output_file(args.plot, "plot")
    outputs = [("out", args.out, "--out"), ("out", f"{args.out}{_LOG}", "--out (its sample log)"),
               ("plot", args.plot, "--plot")]
    for k in ks if isinstance(ks, list) else []:  # 'auto': checked once the scores are read
        outputs += sweep_files(args.out, k, seeds)
    check_own_files(args, outputs)
    facts = check_model_args(args)
    check_grid(args.lengths, args.depths, args.max_new_tokens, facts.get("n_ctx"))
    return {"facts": facts, "ks": ks, "seeds": seeds}


def sweep_files(out: str, k: int, seeds: Sequence[int]) -> list[tuple[str, str, str]]:
    """The files a ``--sweep-k`` run writes for one K (``OUT.kK.top.csv``,
    ``OUT.kK.randomSEED.csv`` and their logs), as :func:`check_own_files` takes them."""
    # a repeated seed runs once, so it writes its files once
    parts = [k_sweep_part(out, k, "top")] + [k_sweep_part(out, k, "random", s)
                                             for s in dict.fromkeys(seeds)]
    return [("sweep_k", f"{p}{log}", "the per-K files of --sweep-k") for p in parts
            for log in ("", _LOG)]


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
    seeds = seed_list(args.seeds, "seeds")
    seed(args.pair_seed, "pair_seed")
    ks = k_list(args.ks, "ks")
    if isinstance(ks, list) and not any(k > 0 for k in ks):
        raise UsageError("ks has no group size above 0: nothing to patch.", arg="ks")
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    output_file(args.out, "out", sidecars=(_LOG,))
    check_own_files(args, [("out", args.out, "--out"), ("out", f"{args.out}{_LOG}",
                                                          "--out (its sample log)")])
    from ..analyze.published import is_published  # imports torch: only for a missing file

    if not Path(args.scores).exists() and not is_published(args.scores):
        raise UsageError(f"scores {args.scores}: no such file (make one with `rhlens score`, "
                         "or name a published map: see `rhlens published`).", arg="scores")
    facts = check_model_args(args)
    check_grid(args.lengths, args.depths, args.max_new_tokens, facts.get("n_ctx"))
    return {"facts": facts, "ks": ks, "seeds": seeds}
