"""``rhlens detectors``: which heads matter? Four detectors' maps, held against masking and
group patching on held-out literal and non-literal needles.

::

    rhlens detectors --model smollm2-135m --lengths 500,1000 --depths 0.2,0.4,0.6,0.8 \\
        --needles 2 --eval-lengths 600 --eval-depths 0.3,0.7 --out runs/detectors

Detection runs on the grid of ``--lengths``/``--depths``/``--needles`` (or ``--needle-file``);
the maps go to ``OUT.<detector>.json`` (score-file format) and ``OUT.cards.json``. Then the
evaluation, on ``--eval-sets``: ``literal`` (the built-in needles the detection did not use)
and ``nonliteral`` (invented needles whose question shares no content word with the needle), at
``--eval-lengths`` x ``--eval-depths``: each detector's top-K masked (``OUT.niah.csv``) and
patched (``OUT.patch.csv``) against K shared control heads per seed (``OUT.groups.json``), then
a table with bootstrap intervals and each map's Spearman correlation with the per-head
patching map. The flags become a :class:`~rhlens.score.detector_maps.DetectorConfig` and an
:class:`~rhlens.intervene.detector_eval.EvalConfig`, run by
:func:`~rhlens.analyze.detectors.compare_detectors`. Every stage resumes from its
``.samples.jsonl`` log; a rerun with other settings stops and says so.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..run.names import LOG_SUFFIX
from ..validate import check_grid, count, finite, int_list, k_list, output_file
from .args import add_grid_args, add_model_args, add_rouge_args, grid_from_args, load_model_from_args
from .checks import check_model_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_grid_args(p)
    p.add_argument("--detectors", default="all", metavar="D,D,...|all",
                   help="copy_paste, query_focus, logit_contribution, needle_attention (all)")
    p.add_argument("--span", choices=["answer", "needle"], default="answer",
                   help="span copy_paste reads (the answer, as `rhlens score`)")
    p.add_argument("--read-span", choices=["answer", "needle"], default="needle",
                   help="span the other detectors read (the needle sentence)")
    p.add_argument("--steps", choices=["answer", "decode"], default="answer",
                   help="decode steps logit_contribution and needle_attention average over")
    p.add_argument("--rouge-gate", type=float, default=0.5,
                   help="maps pool the samples whose ROUGE-1 recall is above this (0.5)")
    add_rouge_args(p)
    p.add_argument("--eval-sets", default="literal,nonliteral",
                   help="held-out needle sets: literal, nonliteral, or none (maps only)")
    p.add_argument("--eval-lengths", default=None, help="held-out prompt lengths (default "
                   "--lengths)")
    p.add_argument("--eval-depths", default=None, help="held-out depths (default --depths)")
    p.add_argument("--ks", default="auto", metavar="K,K,...|auto",
                   help="top-K sizes ('auto': the paper's K = 20 and 50 of 1024 heads, scaled)")
    p.add_argument("--seeds", default="0,1,2", help="control-head draws per K")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="controls score at most this on the copy-paste map (0.1)")
    p.add_argument("--pairs", type=int, default=None, metavar="N",
                   help="patch N prompts per needle set (drawn with seed 0; default all)")
    p.add_argument("--no-head-map", action="store_true",
                   help="skip the per-head patching map (and the rank correlations)")
    p.add_argument("--force-answer", action="store_true",
                   help="teacher-force the needle's answer (random-weight test models)")
    p.add_argument("--batch-size", type=int, default=8, help="patched runs per forward (8)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--out", default="detectors", help="prefix of every file the run writes")


def _depths(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 <= v <= 1 for v in values):
        raise UsageError(f"eval_depths must be a comma-separated list in [0, 1], got {text!r}.",
                         arg="eval_depths")
    return values


def check_detectors_args(args) -> dict[str, Any]:
    """Everything of ``rhlens detectors`` that can be checked before the model loads, besides
    what the configs check themselves; returns the parsed lists and the model's facts."""
    from ..niah.needle_sets import NEEDLE_SETS
    from ..score.detectors import DETECTORS

    count(args.max_new_tokens, "max_new_tokens", minimum=1)
    count(args.batch_size, "batch_size", minimum=1)
    for name in ("pairs", "needles"):
        if getattr(args, name) is not None:
            count(getattr(args, name), name, minimum=1)
    finite(args.threshold, "threshold")
    finite(args.rouge_gate, "rouge_gate")
    detectors = DETECTORS if args.detectors.strip() == "all" else tuple(
        d.strip() for d in args.detectors.split(",") if d.strip())
    bad = [d for d in detectors if d not in DETECTORS]
    if bad or not detectors:
        raise UsageError(f"detectors must be 'all' or some of {', '.join(DETECTORS)}; got "
                         f"{', '.join(bad) or 'none'}.", arg="detectors")
    sets = [] if args.eval_sets.strip() == "none" else [
        s.strip() for s in args.eval_sets.split(",") if s.strip()]
    bad = [s for s in sets if s not in NEEDLE_SETS]
    if bad or (not sets and args.eval_sets.strip() != "none"):
        raise UsageError(f"eval_sets must be 'none' or some of {', '.join(NEEDLE_SETS)}; got "
                         f"{args.eval_sets!r}.", arg="eval_sets")
    lengths = int_list(args.eval_lengths, "eval_lengths", 1) if args.eval_lengths else args.lengths
    depths = _depths(args.eval_depths) if args.eval_depths else args.depths
    ks = k_list(args.ks, "ks")
    if isinstance(ks, list) and not any(k > 0 for k in ks):
        raise UsageError("ks has no group size above 0: nothing to mask or patch.", arg="ks")
    seeds = int_list(args.seeds, "seeds")
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    check_grid(lengths, depths, args.max_new_tokens)
    for suffix in (".cards.json", ".niah.csv", ".patch.csv", ".groups.json"):
        output_file(f"{args.out}{suffix}", "out", sidecars=(LOG_SUFFIX,))
    facts = check_model_args(args)
    for ls in (args.lengths, lengths):
        check_grid(ls, depths, args.max_new_tokens, facts.get("n_ctx"))
    return {"detectors": detectors, "sets": sets, "lengths": lengths, "depths": depths,
            "ks": ks, "seeds": seeds, "facts": facts}


def run(args) -> int:
    """four detectors' maps, masking and patching of their top-K; files under OUT"""
    import torch

    from ..analyze.detectors import compare_detectors
    from ..intervene.detector_eval import default_ks
    from ..niah.grid import held_out_needles
    from ..niah.needle_sets import load_needle_set
    from ..score.detector_maps import DetectorConfig

    checked = check_detectors_args(args)
    grid = grid_from_args(args)
    config = DetectorConfig(grid, checked["detectors"], score_span=args.span,
                            read_span=args.read_span, steps=args.steps,
                            rouge_gate=args.rouge_gate, rouge_stemmer=args.stem is not False)
    used = {n.text for n in grid.needle_list}
    held_out = {name: grid.replace(lengths=tuple(checked["lengths"]),
                                   depths=tuple(checked["depths"]),
                                   needles=tuple(held_out_needles(load_needle_set(name), used)))
                for name in checked["sets"]}
    torch.set_grad_enabled(False)
    model = load_model_from_args(args)
    ks = default_ks(model.cfg.n_layers * model.cfg.n_heads) if checked["ks"] == "auto" \
        else checked["ks"]
    cmp = compare_detectors(
        model, config, held_out, ks=ks, seeds=checked["seeds"], threshold=args.threshold,
        pairs=args.pairs, head_map=not args.no_head_map, force_answer=args.force_answer,
        batch_size=args.batch_size, out=args.out)
    passed = sum(r["passed"] for r in cmp.run.records)
    print(f"\n{args.model}: {passed}/{len(cmp.run.records)} detection samples passed the ROUGE "
          "gate; top heads:")
    print(cmp.run.top_table(5).to_string())
    if held_out:
        table = cmp.table(n_boot=200)
        print("\n" + table.round(2).to_string(index=False))
        if not args.no_head_map and (cmp.patch.measure == "head").any():
            corr = cmp.correlations(n_boot=200, n_null=200)
            print("\nSpearman with the per-head patching map:\n"
                  + corr[["set", "detector", "spearman", "lo", "hi", "null_hi", "pairs"]]
                  .round(2).to_string(index=False))
    print(f"wrote {args.out}.<detector>.json, {args.out}.cards.json"
          + (f", {args.out}.niah.csv, {args.out}.patch.csv" if held_out else ""))
    return 0
