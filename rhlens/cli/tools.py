"""The commands that load no model: ``rhlens merge`` (join the shards of a run), ``rhlens plot``
(heatmap of a score file or a published map), ``rhlens card`` (what made a score file),
``rhlens published`` (the paper's seven maps) and ``rhlens models`` (the names rhlens knows).
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
    card = f", {done['out']}.card.json" if done["kind"] == "score" else ""
    print(f"merged {done['n_shards']} shards ({what}); wrote {done['out']} (and {done['log']}"
          f"{card})")
    return 0


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scores", help="score file, URL, or a published map's name (see `rhlens "
                                  "published`)")
    p.add_argument("--out", default="heads.png")
    p.add_argument("--title", default=None)
    p.add_argument("--mark-uncertain", action="store_true",
                   help="outline heads whose 95%% bootstrap interval over the file's samples "
                        "crosses 0.1 (needs per-sample scores: a score file)")


def plot(args) -> int:
    """heatmap and sorted-score curve of a score file"""
    from ..analyze.published import NAMES, is_published, load_published
    from ..run.results import load_scores, per_sample_scores, score_file_mode
    from ..score.uncertainty import head_intervals
    from ..viz.plots import plot_scores

    check_plot_args(args)
    published = is_published(args.scores) and not Path(args.scores).exists()
    if published and args.mark_uncertain:
        raise UsageError("mark_uncertain needs each sample's scores, and the published maps "
                         "ship their means only; pass a score file.", arg="mark_uncertain")
    if published:
        scores, title = load_published(args.scores), f"{args.scores} (published)"
    else:
        try:
            scores = load_scores(args.scores, mode=score_file_mode(args.scores))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} Or name a published map: {', '.join(NAMES)}.") from None
        title = Path(args.scores).stem
    uncertain = head_intervals(per_sample_scores(args.scores)).uncertain() \
        if args.mark_uncertain else None
    fig = plot_scores(scores, title=args.title or title, uncertain=uncertain)
    save_figure(fig, args.out, dpi=130)
    print(f"wrote {args.out}")
    return 0


def add_card_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scores", help="a score file written by `rhlens score` or `rhlens merge`")
    p.add_argument("--json", action="store_true", help="print the card's JSON")


def card(args) -> int:
    """print the map card of a score file: model, tokenizer, grid, measurement, versions,
    samples"""
    from ..run.card import format_card, read_card

    found = read_card(args.scores)
    print(json.dumps(found, indent=1) if args.json else format_card(found, args.scores))
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
