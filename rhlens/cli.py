"""Command line: ``rhlens score``, ``rhlens niah``, ``rhlens patch``, ``rhlens plot``, ``rhlens models``,
``rhlens published``.

::

    rhlens score --model smollm2-135m --lengths 500,1000 --depths 0.1,0.5,0.9 --needles 2 --out scores.json
    rhlens niah  --model smollm2-135m --scores scores.json --mask-top 20 --out niah.csv
    rhlens plot  scores.json --out heads.png
    rhlens published --json              # the paper's seven published maps, offline
    rhlens score ... --shard 0/2 --out scores.json    # and 1/2: writes scores.shard0of2.json...
    rhlens merge --out scores.json scores.shard0of2.json scores.shard1of2.json

Also ``python -m rhlens ...``. Each subcommand parses its flags into the library's objects (a
:class:`~rhlens.grid.Grid`, a :class:`~rhlens.ablation.Mask`) and calls the library; errors of
the library name their arguments (a :class:`~rhlens.errors.UsageError`'s ``arg``, or a name in
backquotes, `` `rouge_gate` ``), which :func:`main` shows as the flags that set them
(``--rouge-gate``). Every argument that can be checked without the model is checked before it
loads (:mod:`rhlens.validate`); errors are one line, with the exit codes of
:data:`rhlens.errors.EXIT_CODES_HELP`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .errors import (EXIT_CODES_HELP, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, RunError,
                     UsageError)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit code 2), pointing to ``--help``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_list(text: str, kind=float) -> list:
    """``"500,1000"`` -> ``[500, 1000]``, with a clear error for bad items."""
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {kind.__name__}s, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def _ints(text: str) -> list[int]:
    return parse_list(text, int)


def _floats(text: str) -> list[float]:
    values = parse_list(text, float)
    if any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"depths must lie in [0, 1], got {text!r}")
    return values


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype``: shared by every command that loads a model."""
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m (embedded, offline), a paper model key (see `rhlens "
                        "models`), a Hugging Face id, a local directory or a .gguf file")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16... (default: fp32 on CPU)")
    p.add_argument("--device-map", default=None, choices=DEVICE_MAPS,
                   help="spread the model over every visible GPU with accelerate (auto), for "
                        "a model larger than one GPU; instead of --device")


#: ``--device-map`` values: accelerate's placement strategies.
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def load_model_from_args(args):
    """The model ``--model``, ``--device``, ``--dtype`` and ``--device-map`` name."""
    from .models import load_model

    return load_model(args.model, args.device, args.dtype,
                      device_map=getattr(args, "device_map", None))


def add_shard_args(p: argparse.ArgumentParser) -> None:
    """``--shard i/n`` (else the launcher's ``RANK``/``WORLD_SIZE``)."""
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N of the grid (0-based) into OUT's shard file, e.g. "
                        "0/2 and 1/2, then `rhlens merge`; under accelerate launch or torchrun "
                        "the shard is RANK/WORLD_SIZE and each process takes cuda:LOCAL_RANK")


def shard_from_args(args):
    """The :class:`~rhlens.shard.Shard` of ``--shard`` or the launcher, or ``None``; for a
    shard, ``--out`` (and ``--plot``) become the shard's own files and, under a launcher, the
    device its GPU (``cuda:LOCAL_RANK``) unless ``--device`` or ``--device-map`` is given."""
    from .shard import Shard, launcher_device

    shard = Shard.resolve(args.shard)
    if shard is None:
        return None
    args.out = shard.output(args.out)
    if getattr(args, "plot", None):
        args.plot = shard.output(args.plot)
    if args.device is None and getattr(args, "device_map", None) is None:
        args.device = launcher_device()
    return shard


def merge_hint(shard, out: str) -> str:
    """How to merge the shards once all have finished (``out``: this shard's file).

    >>> from rhlens.shard import Shard
    >>> merge_hint(Shard(1, 2), "runs/s.shard1of2.json")
    'shard 1/2: when all 2 have finished, `rhlens merge --out runs/s.json runs/s.shard*of2.json`'
    """
    p = Path(out)
    merged = p.with_name(p.name.replace(shard.suffix, "", 1))
    pattern = p.with_name(p.name.replace(shard.suffix, f".shard*of{shard.count}", 1))
    return (f"shard {shard}: when all {shard.count} have finished, `rhlens merge --out "
            f"{merged} {pattern}`")


def add_grid_args(p: argparse.ArgumentParser) -> None:
    """``--lengths``, ``--depths``, ``--needles``, ``--needle-file``, ``--haystack``."""
    p.add_argument("--lengths", type=_ints, default=[500, 1000], help="prompt lengths in tokens")
    p.add_argument("--depths", type=_floats, default=[0.1, 0.5, 0.9], help="needle depths, 0..1")
    p.add_argument("--needles", type=int, default=None,
                   help="use the first N needles (default: all of them)")
    p.add_argument("--needle-file", default=None, help="JSON list of {text, question, answer}")
    p.add_argument("--haystack", default=None,
                   help="text file, folder of .txt files or hf:DATASET (default: built-in prose)")
    p.add_argument("--prompt", choices=["rhlens", "public-code"], default=None,
                   help="prompt layout: rhlens's (default) or the paper's public code's "
                        "(<book>context</book>, 'Based on the content of the book, Question: "
                        "...', 'Answer:')")


def add_rouge_args(p: argparse.ArgumentParser) -> None:
    """``--stem/--no-stem``: how answers are scored with ROUGE-1."""
    p.add_argument("--stem", action=argparse.BooleanOptionalAction, default=None,
                   help="ROUGE-1 with Porter stemming, as the paper's public code (default); "
                        "--no-stem for the unstemmed variant")


#: ``--compat`` presets: the flags each one sets. ``public-code``: numbers that can be put
#: beside the published score files (the public code's summing score over the answer span, its
#: stemmed ROUGE gate, its prompt layout and its 50 decoded tokens).
COMPAT = {"public-code": {"mode": "sum", "span": "answer", "stem": True,
                          "prompt": "public-code", "max_new_tokens": 50}}
#: ``rhlens score``'s defaults for the flags a preset can set.
SCORE_DEFAULTS = {"mode": "paper", "span": "answer", "stem": True, "prompt": "rhlens",
                  "max_new_tokens": 48}


def resolve_preset(args, defaults: dict) -> None:
    """Fill the flags a ``--compat`` preset sets, else their defaults; a flag given with a value
    other than the preset's is a usage error (rather than silently one or the other)."""
    preset = COMPAT.get(getattr(args, "compat", None) or "", {})
    for dest, default in defaults.items():
        given = getattr(args, dest, None)
        if dest in preset:
            if given is not None and given != preset[dest]:
                flag = "--" + dest.replace("_", "-")
                shown = {True: "--stem", False: "--no-stem"}.get(given) if dest == "stem" else \
                    f"{flag} {given}"
                raise UsageError(f"compat {args.compat} sets {flag} to {preset[dest]!r}; drop "
                                 f"{shown} or --compat.", arg="compat")
            setattr(args, dest, preset[dest])
        elif given is None:
            setattr(args, dest, default)


def grid_from_args(args, needles=None):
    """The :class:`~rhlens.grid.Grid` that ``--lengths``, ``--depths``, ``--needles``,
    ``--needle-file``, ``--haystack`` and ``--max-new-tokens`` describe (``needles``: already
    chosen needles, e.g. the held-out ones of a masking run)."""
    from .grid import Grid
    from .haystack import load_haystack, load_needles

    if needles is None:
        needles = load_needles(args.needle_file, args.needles)
    return Grid(args.lengths, args.depths, tuple(needles), load_haystack(args.haystack),
                args.max_new_tokens, prompt_style=getattr(args, "prompt", None) or "rhlens")


def _save_figure(fig, path, **kwargs) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **kwargs)


def _score(args) -> int:
    from .validate import check_score_args

    resolve_preset(args, SCORE_DEFAULTS)
    shard = shard_from_args(args)
    check_score_args(args)
    import torch

    from .detect import detect_retrieval_heads
    from .plotting import plot_scores

    grid = grid_from_args(args)
    torch.set_grad_enabled(False)
    model = load_model_from_args(args)
    run = detect_retrieval_heads(model, grid, score_mode=args.mode, rouge_gate=args.rouge_gate,
                                 out=args.out, shard=shard, score_span=args.span,
                                 rouge_stemmer=args.stem)
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
    print(f"wrote {args.out} (and {args.out}.samples.jsonl)")
    if args.plot:
        _save_figure(plot_scores(run.scores, title=args.model), args.plot, dpi=130)
        print(f"wrote {args.plot}")
    if shard is not None:
        print(merge_hint(shard, args.out))
    return 0


def _merge(args) -> int:
    from .shard import merge_shards

    done = merge_shards(args.shards, args.out, force=args.force)
    what = (f"{done['n_passed']}/{done['n_samples']} samples passed the ROUGE gate"
            if done["kind"] == "score" else f"{done['n_samples']} NIAH samples")
    print(f"merged {done['n_shards']} shards ({what}); wrote {done['out']} (and {done['log']})")
    return 0


def _plot(args) -> int:
    from .plotting import plot_scores
    from .published import NAMES, is_published, load_published
    from .results import load_scores, score_file_mode
    from .validate import check_plot_args

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
    _save_figure(fig, args.out, dpi=130)
    print(f"wrote {args.out}")
    return 0


def _published(args) -> int:
    import json

    from .heads import head_name
    from .published import published_rows, source

    if args.top < 1:
        raise ValueError(f"`top` must be at least 1, got {args.top}.")
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


def _models(args) -> int:
    from .models import EMBEDDED, PAPER_MODELS
    from .resources import memory_table

    table = memory_table(args.tokens)           # checks --tokens before printing anything
    print(f"{EMBEDDED:26s} SmolLM2-135M-Instruct (embedded GGUF, offline, CPU)")
    for key, spec in PAPER_MODELS.items():
        print(f"{key:26s} {spec.hf_id}  ({spec.note})")
    print("tiny-llama, tiny-mistral, tiny-qwen2, tiny-mixtral: random weights, for smoke tests")
    print("tiny-<paper key> (e.g. tiny-mixtral-8x7b): a paper model's random-weight stand-in")
    print("...or any Hugging Face id, local checkpoint directory or .gguf file.")
    print(f"\nWhat each paper model needs on a GPU:\n{table}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import niah_cli, patch_cli

    parser = _Parser(
        prog="rhlens", description="Find, mask and patch retrieval heads (Wu et al. 2024).",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    raw = {"epilog": EXIT_CODES_HELP, "formatter_class": argparse.RawDescriptionHelpFormatter}

    p = sub.add_parser("score", help="retrieval score of every head over a NIAH grid", **raw)
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
    add_shard_args(p)
    p.set_defaults(func=_score)

    p = sub.add_parser("niah", help="needle-in-a-haystack with top-K or random heads masked",
                       description=niah_cli.__doc__, **raw)
    niah_cli.add_arguments(p)
    p.set_defaults(func=niah_cli.run)

    p = sub.add_parser("merge", help="join the shards of a --shard run into one score file "
                                     "or NIAH CSV", **raw)
    p.add_argument("shards", nargs="+", metavar="SHARD_FILE",
                   help="every shard's output (e.g. scores.shard0of2.json scores.shard1of2.json)")
    p.add_argument("--out", required=True, help="the merged score file or CSV (its "
                                                ".samples.jsonl log is written beside it)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_merge)

    p = sub.add_parser("patch", help="group and per-head activation patching, direct logit "
                       "attribution", description=patch_cli.__doc__, **raw)
    patch_cli.add_arguments(p)
    p.set_defaults(func=patch_cli.run)

    p = sub.add_parser("plot", help="heatmap and sorted-score curve of a score file", **raw)
    p.add_argument("scores", help="score file, URL, or a published map's name (see `rhlens "
                                  "published`)")
    p.add_argument("--out", default="heads.png")
    p.add_argument("--title", default=None)
    p.set_defaults(func=_plot)

    p = sub.add_parser("models", help="list the model names rhlens knows and the GPU memory "
                                      "each paper model needs", **raw)
    p.add_argument("--tokens", type=int, default=32768,
                   help="prompt length the memory is computed at (default 32768)")
    p.set_defaults(func=_models)

    p = sub.add_parser("published", help="the paper's seven published score maps (offline)", **raw)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per model")
    p.add_argument("--top", type=int, default=5, help="top heads per model (default 5)")
    p.set_defaults(func=_published)
    return parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag's ``dest`` (``rouge_gate``) over all subcommands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest for s in subs for p in s.choices.values() for a in p._actions if a.option_strings}


def _one_line(err: BaseException, flags: set[str] = frozenset()) -> str:
    """The error as one line, the library's argument names written as the CLI's flags: the
    argument a :class:`UsageError` names (``arg``) at its start, and any `` `argument` ``.

    >>> _one_line(UsageError("needles must be at least 1.", arg="needles"), {"needles"})
    '--needles must be at least 1.'
    >>> _one_line(ValueError("a negative `rouge_gate`   or `other`"), {"rouge_gate"})
    'a negative --rouge-gate or `other`'
    """
    text = " ".join(str(err).split()) or type(err).__name__
    arg = getattr(err, "arg", None)
    if flags and arg and text.startswith(arg):
        text = "--" + arg.replace("_", "-") + text[len(arg):]
    return re.sub(r"`([a-z_]+)`",
                  lambda m: "--" + m.group(1).replace("_", "-") if m.group(1) in flags
                  else m.group(0), text)


def _run(args, flags: set[str]) -> int:
    """``args.func(args)`` with every failure reported as one line and an exit code."""
    import os

    from .detect import NoPassingSampleError
    from .models import ModelNotFoundError

    where = f"rhlens {args.command}: error:"
    try:
        return args.func(args)
    except (UsageError, ModelNotFoundError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, ValueError) as err:
        print(f"{where} {_one_line(err, flags)}", file=sys.stderr)
        return EXIT_USAGE
    except (RunError, NoPassingSampleError) as err:
        print(f"{where} {_one_line(err, flags)}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, RuntimeError, MemoryError) as err:  # disk full, CUDA out of memory...
        if os.environ.get("RHLENS_TRACEBACK"):
            raise
        print(f"{where} {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as err:  # noqa: BLE001 (a bug: one line, the traceback on request)
        if os.environ.get("RHLENS_TRACEBACK"):
            raise
        print(f"{where} internal error: {type(err).__name__}: {_one_line(err)} (set "
              "RHLENS_TRACEBACK=1 to see where; please report it)", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rhlens`` command; returns its exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        import matplotlib

        matplotlib.use("Agg")
        return _run(args, _flags(parser))
    except KeyboardInterrupt:
        lead = "\n" if sys.stderr.isatty() else ""  # end a progress bar's line first
        print(f"{lead}rhlens: interrupted; finished samples are saved: rerun the same command "
              "to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
