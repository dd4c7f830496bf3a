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

The flags become a :class:`~rhlens.intervene.patch_sweep.PatchConfig` (validated there: group
sizes, seeds, enough control heads), run by :func:`~rhlens.intervene.patch_sweep.patch_sweep`.
``--shard`` and the launcher's ranks split the pairs as for ``rhlens score``; ``rhlens merge``
joins the shards' CSVs.
"""

from __future__ import annotations

import argparse

from .args import (
    add_grid_args,
    add_model_args,
    add_shard_args,
    grid_from_args,
    load_model_from_args,
    merge_hint,
    shard_from_args,
)
from .checks import check_patch_args, check_shape
from .niah import held_out_needles


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
    p.add_argument("--out", default="patch.csv", help="CSV, a row per (pair, measure, heads)")
    add_shard_args(p)


def run(args) -> int:
    """group patching, per-head patching and direct logit attribution; CSV"""
    import torch

    from ..analyze.maps import as_map
    from ..analyze.patching import group_summary
    from ..intervene.patch_sweep import PatchConfig, patch_sweep

    shard = shard_from_args(args)
    checked = check_patch_args(args)
    scores = as_map(args.scores).float()
    check_shape(tuple(scores.shape), checked["facts"], args.scores)
    config = PatchConfig(grid_from_args(args, held_out_needles(args)), scores, checked["ks"],
                         checked["seeds"], threshold=args.threshold, heads=not args.no_heads,
                         dla=not args.no_dla, force_answer=args.force_answer,
                         positions=args.positions, pairs=args.pairs, pair_seed=args.pair_seed)
    torch.set_grad_enabled(False)
    model = load_model_from_args(args)
    check_shape(tuple(scores.shape), {"n_layers": model.cfg.n_layers,
                                      "n_heads": model.cfg.n_heads}, args.scores)
    df = patch_sweep(model, config, out=args.out, shard=shard, batch_size=args.batch_size)
    n_pairs = df.pair.nunique()
    print(f"\n{n_pairs} pair(s) patched, {len(df.attrs['skipped'])} skipped (not answered)"
          + (f" in shard {shard}" if shard is not None else ""))
    if n_pairs:
        s = group_summary(df, n_boot=200)
        print(s[["direction", "kind", "k", "pairs", "fraction", "fraction_lo", "fraction_hi",
                 "greedy_clean"]].round(2).to_string(index=False))
    print(f"wrote {args.out}")
    if shard is not None:
        print(merge_hint(shard, args.out))
    return 0
