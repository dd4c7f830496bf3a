"""``rhlens patch``: are the retrieval heads sufficient? Group patching, the per-head map and
direct logit attribution over clean/counterfactual pairs.

::

    rhlens patch --model smollm2-135m --scores scores.json --pairs 16 \\
        --lengths 400,700,1000 --depths 0.2,0.5,0.8 --out patch.csv
    rhlens patch ... --shard 0/2      # writes patch.shard0of2.csv (and its resume log)

For each pair the model answers (clean prompt, and the same prompt with the needle's answer
replaced by other words of the same token count), it patches the top-K heads' outputs
(``hook_z``, decode positions only) together, and K control heads per seed (in the retrieval
heads' layers, scoring <= --threshold), clean -> counterfactual and back; each head alone
clean -> counterfactual; and writes each head's direct logit attribution. One CSV row per
(pair, measure, group or head); rows of shards concatenate. Needles: as ``rhlens niah``,
those the score run used are left out (read from ``<scores>.samples.jsonl``), or the first
``--skip-needles N``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .main import add_grid_args, add_model_args, grid_from_args, load_model_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_grid_args(p)
    p.add_argument("--scores", required=True,
                   help="score file ({'layer-head': [...]}) or published map that ranks the heads")
    p.add_argument("--pairs", type=int, default=None, metavar="N",
                   help="use N prompts of the grid, drawn at random with --pair-seed (default: "
                        "all); prompts the model does not answer are skipped")
    p.add_argument("--pair-seed", type=int, default=0, help="seed of the draw of --pairs")
    p.add_argument("--ks", default="auto", metavar="K,K,...|auto",
                   help="group sizes ('auto': the paper's 0..100-of-1024 grid scaled to the model)")
    p.add_argument("--seeds", default="0,1,2", help="control-head draws per K")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="retrieval-head threshold; controls are drawn below it (0.1)")
    p.add_argument("--skip-needles", type=int, default=None, metavar="N",
                   help="leave out the first N needles (default: those the score run used)")
    p.add_argument("--no-heads", action="store_true", help="skip the per-head map")
    p.add_argument("--no-dla", action="store_true", help="skip direct logit attribution")
    p.add_argument("--force-answer", action="store_true",
                   help="teacher-force the needle's answer even where the model does not give "
                        "it (random-weight test models)")
    p.add_argument("--positions", choices=["decode", "answer"], default="decode",
                   help="patch every decode position (the prompt's last token and the whole "
                        "continuation), or only the answer's (what comes before, e.g. a restated "
                        "question, runs unpatched: a few positions, much faster)")
    p.add_argument("--batch-size", type=int, default=8, help="patched runs per forward (8)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--shard", default=None, metavar="i/n",
                   help="run shard i of n (default: RANK/WORLD_SIZE under a launcher); writes "
                        "OUT with .shardIofN before its suffix")
    p.add_argument("--out", default="patch.csv", help="CSV, a row per (pair, measure, heads)")


def shard_path(out: str | Path, shard) -> Path:
    """Where a shard writes: ``patch.csv`` -> ``patch.shard0of2.csv`` (``out`` itself without
    a shard).

    >>> from rhlens.run.shard import Shard
    >>> str(shard_path("runs/patch.csv", Shard(1, 2)))
    'runs/patch.shard1of2.csv'
    """
    p = Path(out)
    return p if shard is None else p.with_name(p.stem + shard.suffix + p.suffix)


def check_patch_args(args) -> dict:
    """Everything of ``rhlens patch`` that can be checked before the scores are read and the
    model loads."""
    from ..errors import UsageError
    from ..run.shard import Shard
    from ..validate import (check_grid, check_model_args, count, finite, int_list, k_list,
                           output_file, same_file)

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
    if ks != "auto" and not any(k > 0 for k in ks):
        raise UsageError("ks has no group size above 0: nothing to patch.", arg="ks")
    shard = Shard.resolve(args.shard)
    check_grid(args.lengths, args.depths, args.max_new_tokens)
    out = shard_path(args.out, shard)
    output_file(out, "out", sidecars=(".samples.jsonl",))
    if same_file(out, args.scores):
        raise UsageError("out must name another file than --scores.", arg="out")
    if not Path(args.scores).exists():
        from ..analyze.published import is_published

        if not is_published(args.scores):
            raise UsageError(f"scores {args.scores}: no such file (make one with `rhlens "
                             "score`, or name a published map: see `rhlens published`).",
                             arg="scores")
    facts = check_model_args(args)
    check_grid(args.lengths, args.depths, args.max_new_tokens, facts.get("n_ctx"))
    return {"facts": facts, "ks": ks, "seeds": seeds, "shard": shard, "out": out}


def run(args) -> int:
    """group patching, per-head patching and direct logit attribution; CSV"""
    import torch

    from ..intervene.mask import k_grid
    from ..niah.grid import masking_needles
    from ..niah.haystack import load_needles
    from ..score.heads import as_map
    from ..intervene.patch import group_summary, patch_samples, patch_sweep
    from ..validate import check_head_counts, check_shape

    checked = check_patch_args(args)
    scores = as_map(args.scores).float()
    check_shape(tuple(scores.shape), checked["facts"], args.scores)
    ks = k_grid(scores.numel()) if checked["ks"] == "auto" else checked["ks"]
    ks = [k for k in ks if k > 0]
    check_head_counts(scores, max(ks), 0, None, args.threshold)
    _check_controls(scores, ks, args.threshold)
    needles, left_out = masking_needles(load_needles(args.needle_file, None),
                                        scores_path=args.scores, skip=args.skip_needles,
                                        n=args.needles)
    if left_out:
        print(f"leaving out {left_out} needle(s) used to compute the scores")
    grid = grid_from_args(args, needles)
    torch.set_grad_enabled(False)
    model = load_model_from_args(args)
    check_shape(tuple(scores.shape), {"n_layers": model.cfg.n_layers,
                                      "n_heads": model.cfg.n_heads}, args.scores)
    samples = patch_samples(grid, model.tokenizer, args.pairs, seed=args.pair_seed,
                            n_ctx=model.cfg.n_ctx)
    index = list(range(len(samples)))
    shard, out = checked["shard"], checked["out"]
    if shard is not None:
        print(f"shard {shard}: {len(shard.select(index))} of {len(index)} pairs")
        samples, index = shard.select(samples), shard.select(index)
    df = patch_sweep(model, samples, scores, ks, checked["seeds"], threshold=args.threshold,
                     index=index, out=out, heads=not args.no_heads, dla=not args.no_dla,
                     force_answer=args.force_answer, max_new_tokens=args.max_new_tokens,
                     positions=args.positions, batch_size=args.batch_size)
    n_pairs = df.pair.nunique()
    print(f"\n{n_pairs} pair(s) patched, {len(df.attrs['skipped'])} skipped (not answered)")
    if n_pairs:
        s = group_summary(df, n_boot=200)
        print(s[["direction", "kind", "k", "pairs", "fraction", "fraction_lo", "fraction_hi",
                 "greedy_clean"]].round(2).to_string(index=False))
    print(f"wrote {out}")
    return 0


def _check_controls(scores, ks, threshold: float) -> None:
    """Enough control heads (in the retrieval heads' layers, below the threshold, not among
    the top max(K)) for the largest K."""
    from ..errors import UsageError
    from ..score.heads import control_pool, top_heads

    top = set(top_heads(scores, max(ks)))
    pool = [h for h in control_pool(scores, threshold, same_layers=True) if h not in top]
    if max(ks) > len(pool):
        raise UsageError(f"ks: only {len(pool)} control heads (in the retrieval heads' layers, "
                         f"scoring <= {threshold}, not in the top {max(ks)}) can be drawn, so "
                         f"K = {max(ks)} has no control; ask for smaller K.", arg="ks")
