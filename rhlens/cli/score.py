"""``rhlens score``: the retrieval score of every head over a NIAH grid (a detection run).

::

    rhlens score --model smollm2-135m --lengths 500,1000 --depths 0.1,0.5,0.9 --needles 2 --out scores.json
    rhlens score ... --shard 0/2 --out scores.json    # and 1/2: writes scores.shard0of2.json...
    rhlens score ... --compat public-code              # numbers to put beside the published files
    rhlens score ... --until-stable 10 --max-samples 80  # stop when the top 10 is stable
    rhlens score ... --batch-size 1                    # one prompt at a time (default: auto)

The flags become a :class:`~rhlens.score.detect.ScoreConfig` (validated there; ``--until-stable``,
``--stability``, ``--max-samples`` and ``--seed`` its :class:`~rhlens.score.stopping.UntilStable`),
run by :func:`~rhlens.score.detect.detect_retrieval_heads`. The printout gives the top heads with
their bootstrap intervals (:mod:`rhlens.score.uncertainty`); the map card is written beside the
score file (``rhlens card``).
"""

from __future__ import annotations

import argparse

from .args import (
    COMPAT,
    SCORE_DEFAULTS,
    add_batch_args,
    add_grid_args,
    add_model_args,
    add_rouge_args,
    add_shard_args,
    grid_from_args,
    load_model_from_args,
    merge_hint,
    resolve_preset,
    save_figure,
    shard_from_args,
)
from .checks import check_score_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_grid_args(p)
    p.add_argument("--out", default="scores.json", help="score file ({'layer-head': [...]})")
    p.add_argument("--mode", choices=["paper", "sum"], default=None,
                   help="paper: |g_h ∩ k|/|k| (≤ 1, default); sum: the public code's summing")
    p.add_argument("--span", choices=["answer", "needle"], default=None,
                   help="k, the span the score reads: the needle's answer (default, as the "
                        "public code's real_needle) or the whole needle sentence")
    p.add_argument("--rouge-gate", type=float, default=0.5,
                   help="keep samples whose ROUGE-1 recall is above this (default 0.5)")
    add_rouge_args(p)
    p.add_argument("--compat", choices=sorted(COMPAT), default=None,
                   help="public-code: --mode sum --span answer --stem --prompt public-code "
                        "--max-new-tokens 50, for maps to put beside the published files")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 48")
    p.add_argument("--plot", default=None, help="also save the heatmap here (PNG)")
    p.add_argument("--until-stable", type=int, default=None, metavar="K",
                   help="take the grid's prompts in a seeded order and stop once the top-K "
                        "heads are stable under bootstrap resampling (see --stability)")
    p.add_argument("--stability", type=float, default=None,
                   help="with --until-stable: the top-K stability to reach, the mean overlap "
                        "of a resample's top K with the map's (default 0.9)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="with --until-stable: take at most this many prompts")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the bootstrap intervals and of --until-stable's order "
                        "(default 0)")
    add_batch_args(p)
    add_shard_args(p)


def run(args) -> int:
    """retrieval score of every head over a NIAH grid"""
    resolve_preset(args, SCORE_DEFAULTS)
    shard = shard_from_args(args)
    check_score_args(args, shard)
    import torch

    from ..score.detect import ScoreConfig, detect_retrieval_heads
    from ..score.stopping import LEVEL, UntilStable, describe
    from ..score.uncertainty import format_intervals
    from ..viz.plots import plot_scores

    until_stable = None
    if args.until_stable is not None:
        until_stable = UntilStable(k=args.until_stable, seed=args.seed,
                                   level=LEVEL if args.stability is None else args.stability,
                                   max_samples=args.max_samples)
    config = ScoreConfig(grid_from_args(args), score_mode=args.mode, score_span=args.span,
                         rouge_gate=args.rouge_gate, rouge_stemmer=args.stem,
                         until_stable=until_stable, batch_size=args.batch_size)
    torch.set_grad_enabled(False)
    model = load_model_from_args(args)
    run = detect_retrieval_heads(model, config, out=args.out, shard=shard)
    n_pass = int(sum(r["passed"] for r in run.records))
    if shard is not None and not n_pass:
        print(f"\n{args.model}: 0/{len(run.records)} samples of shard {shard} passed the ROUGE "
              f"gate; wrote {args.out}.samples.jsonl\n{merge_hint(shard, args.out)}")
        return 0
    s = run.summary()
    print(f"\n{args.model}: {n_pass}/{len(run.records)} samples passed the ROUGE gate; "
          f"{s['n_heads']} query heads")
    print("top heads: " + ", ".join(f"{n} {v:.2f}" for n, v in s["top"]))
    print(f"share of heads > 0.1: {100 * s['share_above_0.1']:.1f}%   "
          f"> 0.5: {100 * s['share_above_0.5']:.1f}%   = 0: {100 * s['share_zero']:.1f}%")
    print(format_intervals(run.intervals(until_stable.k if until_stable else 10, seed=args.seed)))
    if run.stopped:
        print(describe(run.stopped))
    print(f"wrote {args.out} (and {args.out}.samples.jsonl, {args.out}.card.json)")
    if args.plot:
        save_figure(plot_scores(run.scores, title=args.model), args.plot, dpi=130)
        print(f"wrote {args.plot}")
    if shard is not None:
        print(merge_hint(shard, args.out))
    return 0


