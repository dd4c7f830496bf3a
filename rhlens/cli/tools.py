"""The commands that load no model: ``rhlens merge`` (join the shards of a run), ``rhlens plot``
(heatmap of a score file or a published map), ``rhlens published`` (the paper's seven maps) and
``rhlens models`` (the names rhlens knows).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError
from ..models.registry import EMBEDDED, PAPER_MODELS
from .args import save_figure
from .checks import check_plot_args


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", nargs="+", metavar="SHARD_FILE",
                   help="every shard's output (e.g. scores.shard0of2.json scores.shard1of2.json)")
    p.add_argument("--out", required=True, help="the merged score file or CSV (its "
                                                ".samples.jsonl log is written beside it)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def merge(args) -> int:
    """join the shards of a --shard run into one score file or CSV"""
    from ..run.merge import merge_shards

    done = merge_shards(args.shards, args.out, force=args.force)
    what = {"score": f"{done.get('n_passed')}/{done['n_samples']} samples passed the ROUGE gate",
            "niah": f"{done['n_samples']} NIAH samples",
            "patch": f"{done['n_samples']} patching pairs, {done.get('n_skipped')} not answered",
            }[done["kind"]]
    print(f"merged {done['n_shards']} shards ({what}); wrote {done['out']} (and {done['log']})")
    return 0


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scores", help="score file, URL, or a published map's name (see `rhlens "
                                  "published`)")
    p.add_argument("--out", default="heads.png")
    p.add_argument("--title", default=None)


def plot(args) -> int:
    """heatmap and sorted-score curve of a score file"""
    from ..analyze.published import NAMES, is_published, load_published
    from ..run.results import load_scores, score_file_mode
    from ..viz.plots import plot_scores

    check_plot_args(args)
    if is_published(args.scores) and not Path(args.scores).exists():
        scores, title = load_published(args.scores), f"{args.scores} (published)"
    else:
        try:
            scores = load_scores(args.scores, mode=score_file_mode(args.scores))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} Or name a published map: {', '.join(NAMES)}.") from None
        title = Path(args.scores).stem
    fig = plot_scores(scores, title=args.title or title)
    save_figure(fig, args.out, dpi=130)
    print(f"wrote {args.out}")
    return 0


def add_published_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per model")
    p.add_argument("--top", type=int, default=5, help="top heads per model (default 5)")


def published(args) -> int:
    """the paper's seven published score maps (offline)"""
    from ..analyze.published import published_rows, source
    from ..score.heads import head_name

    if args.top < 1:
        raise UsageError(f"top must be at least 1, got {args.top}.", arg="top")
    rows = published_rows(top=args.top)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'model':18s} {'layers x heads':>14s} {'samples':>7s} {'> 0.1':>6s} {'= 0':>6s}  "
          f"top {args.top} heads")
    for r in rows:
        top = ", ".join(f"{head_name(l, h)} {v:.2f}" for l, h, v in r["top"])
        print(f"{r['name']:18s} {r['n_layers']:>7d} x {r['n_heads']:<4d} {r['samples']:>7d} "
              f"{r['share_above_0_1']:5.2f}% {r['share_zero']:5.1f}%  {top}")
    src = source()
    print(f"\nshares of all query heads; means over samples. Source: {src['source']}\n"
          f"({src['paper']}); derived figures only.")
    return 0


def models(args) -> int:
    """list the model names rhlens knows"""
    print(f"{EMBEDDED:26s} SmolLM2-135M-Instruct (embedded GGUF, offline, CPU)")
    for key, spec in PAPER_MODELS.items():
        print(f"{key:26s} {spec.hf_id}  ({spec.note})")
    print("tiny-llama, tiny-mistral, tiny-qwen2, tiny-mixtral: random weights, for smoke tests")
    print("tiny-<paper key> (e.g. tiny-mixtral-8x7b): a paper model's random-weight stand-in")
    print("...or any Hugging Face id, local checkpoint directory or .gguf file.")
    return 0
