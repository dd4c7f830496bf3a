"""``rhlens niah``: needle-in-a-haystack with retrieval heads (or random heads) masked.

::

    rhlens niah --model smollm2-135m --scores scores.json --mask-top 20 --out niah.csv
    rhlens niah --model smollm2-135m --scores scores.json --mask-random 20 --seed 0 --out rnd.csv
    rhlens niah --scores scores.json --sweep-k auto --seeds 0,1,2 --out sweep.csv --plot k.png

Needles: the masking run must not reuse the needles that selected the heads. By default the
needles found in ``<scores>.samples.jsonl`` (written by ``rhlens score``) are left out; with
``--skip-needles N`` the first N built-in needles are left out instead (``rhlens score
--needles N`` uses exactly those).

``--shard i/n`` (or a launcher's ``RANK``/``WORLD_SIZE``) runs one shard of the prompts into
``OUT``'s shard file (``niah.shard0of2.csv``); ``rhlens merge`` joins the shards.

The flags become a :class:`~rhlens.intervene.niah.NiahConfig` (a grid and a mask), run by
:func:`~rhlens.intervene.niah.run_niah` (or :func:`~rhlens.intervene.niah.k_sweep`). Like every
command, it imports torch and the pipeline only once its flags are checked.
"""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .args import (
    add_batch_args,
    add_grid_args,
    add_model_args,
    add_rouge_args,
    add_shard_args,
    grid_from_args,
    load_model_from_args,
    merge_hint,
    save_figure,
    shard_from_args,
)
from .checks import check_head_counts, check_niah_args, check_own_files, check_shape, sweep_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_grid_args(p)
    p.add_argument("--scores", default=None,
                   help="score file ({'layer-head': [...]}) that ranks the heads; needed to mask")
    p.add_argument("--mask-top", type=int, default=0, metavar="K", help="mask the K best heads")
    p.add_argument("--mask-random", type=int, default=0, metavar="K",
                   help="mask K random heads scoring <= --threshold (never a retrieval head)")
    p.add_argument("--seed", type=int, default=0, help="seed of --mask-random")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="retrieval-head threshold; random heads are drawn below it (0.1)")
    p.add_argument("--mask-mode", choices=["uniform", "zero", "mean"], default="uniform",
                   help="uniform attention (the paper), zeroed output, or mean output")
    p.add_argument("--mask-prefill", action="store_true",
                   help="also mask while the prompt is read (the paper: decoding only)")
    p.add_argument("--skip-needles", type=int, default=None, metavar="N",
                   help="leave out the first N needles (default: leave out those the score "
                        "run used, read from <scores>.samples.jsonl)")
    p.add_argument("--sweep-k", default=None, metavar="K,K,...|auto",
                   help="sweep K for top vs random heads instead of one run "
                        "('auto': the paper's 0..100-of-1024 grid scaled to this model); "
                        "besides the whole table in --out, each run writes OUT.kK.top.csv "
                        "or OUT.kK.randomSEED.csv (with its .samples.jsonl log) beside it")
    p.add_argument("--seeds", default="0,1,2",
                   help="random-head seeds of --sweep-k (each seed its own file)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    add_batch_args(p)
    add_rouge_args(p)
    p.add_argument("--out", default="niah.csv", help="CSV, a row per (needle, length, depth)")
    p.add_argument("--plot", default=None, help="save the heatmap (or the K curve) here")
    add_shard_args(p)


def held_out_needles(args):
    """The needles of a masking run: those the score run did not use (``--skip-needles``, or
    read from the score file's sample log), then the first ``--needles``."""
    from ..niah.grid import masking_needles  # with torch: not before the flags are checked
    from ..niah.haystack import load_needles

    kept, left_out = masking_needles(load_needles(args.needle_file, None),
                                     scores_path=args.scores, skip=args.skip_needles,
                                     n=args.needles)
    if left_out:
        print(f"leaving out {left_out} needle(s) used to compute the scores")
    return kept


def run(args) -> int:
    """needle-in-a-haystack grid with top-K or random heads masked; CSV and heatmap"""
    import matplotlib.pyplot as plt
    import torch

    from ..intervene.mask import Mask, k_grid
    from ..intervene.niah import NiahConfig, k_curve, k_sweep, run_niah
    from ..run.results import load_scores, score_file_mode
    from ..score.heads import head_names
    from ..viz.runs import niah_heatmap, plot_k_curve

    shard = shard_from_args(args)
    if shard is not None and args.sweep_k is not None:
        raise UsageError("shard cannot be combined with --sweep-k: it splits the prompts of one "
                         "NIAH run; run each K of the sweep as its own sharded run (--mask-top K, "
                         "--mask-random K --seed S).", arg="shard")
    checked = check_niah_args(args)
    scores = None
    if args.scores:
        scores = load_scores(args.scores, mode=score_file_mode(args.scores))
        check_shape(tuple(scores.shape), checked["facts"], args.scores)
        ks = checked["ks"] if checked["ks"] != "auto" else k_grid(scores.numel())
        check_head_counts(scores, args.mask_top, args.mask_random, ks, args.threshold)
        if checked["ks"] == "auto":  # the per-K files are known now
            check_own_files(args, [f for k in ks for f in sweep_files(args.out, k, checked["seeds"])])
    grid = grid_from_args(args, held_out_needles(args))
    torch.set_grad_enabled(False)
    model = load_model_from_args(args)
    if scores is not None:
        check_shape(tuple(scores.shape), {"n_layers": model.cfg.n_layers,
                                          "n_heads": model.cfg.n_heads}, args.scores)
    options = {"mask_mode": args.mask_mode, "prefill": args.mask_prefill}
    if args.mask_top:
        assert scores is not None  # masking needs --scores (check_niah_args)
        mask = Mask.top(scores, args.mask_top, **options)
    elif args.mask_random:
        assert scores is not None
        mask = Mask.random(scores, args.mask_random, args.seed, threshold=args.threshold, **options)
    else:
        mask = Mask(**options)
    if args.mask_mode == "mean":
        mask = mask.with_means(model, grid.reference_prompts(model.tokenizer))
    config = NiahConfig(grid, mask, rouge_stemmer=args.stem is not False,
                        batch_size=args.batch_size)
    if args.sweep_k:
        assert scores is not None
        n_total = model.cfg.n_layers * model.cfg.n_heads
        ks = k_grid(n_total) if args.sweep_k == "auto" else checked["ks"]
        df = k_sweep(model, config, scores, ks, seeds=checked["seeds"],
                     threshold=args.threshold, out=args.out)
        curve = k_curve(df)
        print(curve.round(1).to_string(index=False))
        if args.plot:
            save_figure(plot_k_curve(curve, n_heads_total=n_total, title=args.model).figure,
                        args.plot, dpi=130, bbox_inches="tight")
    else:
        if mask.heads:
            print(f"masking {head_names(mask.heads)} ({args.mask_mode})")
        df = run_niah(model, config, out=args.out, shard=shard)
        print(f"\nNIAH score {df['score'].mean():.1f} over {len(df)} samples"
              + (f" of shard {shard}" if shard is not None else ""))
        if args.plot and len(df):
            save_figure(niah_heatmap(df, title=f"{args.model}: {len(mask.heads)} heads masked")
                        .figure, args.plot, dpi=130, bbox_inches="tight")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    if shard is not None:
        print(merge_hint(shard, args.out))
    plt.close("all")
    return 0
