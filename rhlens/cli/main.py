"""Command line: ``rhlens score``, ``rhlens niah``, ``rhlens patch``, ``rhlens detectors``,
``rhlens merge``, ``rhlens plot``, ``rhlens card``, ``rhlens models``, ``rhlens published``.

::

    rhlens score --model smollm2-135m --lengths 500,1000 --depths 0.1,0.5,0.9 --needles 2 --out scores.json
    rhlens niah  --model smollm2-135m --scores scores.json --mask-top 20 --out niah.csv
    rhlens plot  scores.json --out heads.png
    rhlens published --json              # the paper's seven published maps, offline
    rhlens score ... --shard 0/2 --out scores.json    # and 1/2: writes scores.shard0of2.json...
    rhlens merge --out scores.json scores.shard0of2.json scores.shard1of2.json
    rhlens card scores.json                      # what made the map (scores.json.card.json)
    rhlens score ... --until-stable 10 --max-samples 80   # stop when the top 10 is stable

Also ``python -m rhlens ...``. Each subcommand (one module each: :mod:`~rhlens.cli.score`,
:mod:`~rhlens.cli.niah`, :mod:`~rhlens.cli.patch`, :mod:`~rhlens.cli.detectors`,
:mod:`~rhlens.cli.tools`) builds the library's
run config from its flags (a :class:`~rhlens.score.detect.ScoreConfig`,
:class:`~rhlens.intervene.niah.NiahConfig` or :class:`~rhlens.intervene.patch_sweep.PatchConfig`,
which validate themselves) and calls the library; errors of the library name their arguments (a
:class:`~rhlens.errors.UsageError`'s ``arg``, or a name in backquotes, `` `rouge_gate` ``), which
:func:`main` shows as the flags that set them (``--rouge-gate``). Every argument that can be
checked without the model is checked before it loads (:mod:`rhlens.cli.checks`); errors are one
line, with the exit codes of :data:`rhlens.errors.EXIT_CODES_HELP`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping

from ..errors import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RunError,
    UsageError,
)
from ..models.registry import ModelNotFoundError
from . import detectors, interrupt, niah, patch, score, tools
from .args import Parser

#: Library arguments whose flag has another name (a config field -> the flag that sets it).
FLAG_ALIASES = {"score_mode": "--mode", "score_span": "--span", "rouge_stemmer": "--stem",
                "prompt_style": "--prompt"}


def build_parser() -> argparse.ArgumentParser:
    """The ``rhlens`` parser, every subcommand with its flags and its function."""
    parser = Parser(
        prog="rhlens", description="Find, mask and patch retrieval heads (Wu et al. 2024).",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = [
        ("score", "retrieval score of every head over a NIAH grid", score.add_arguments,
         score.run, None),
        ("niah", "needle-in-a-haystack with top-K or random heads masked", niah.add_arguments,
         niah.run, niah.__doc__),
        ("merge", "join the shards of a --shard run into one score file or CSV",
         tools.add_merge_arguments, tools.merge, None),
        ("patch", "group and per-head activation patching, direct logit attribution",
         patch.add_arguments, patch.run, patch.__doc__),
        ("detectors", "four head detectors held against masking and patching",
         detectors.add_arguments, detectors.run, detectors.__doc__),
        ("plot", "heatmap and sorted-score curve of a score file", tools.add_plot_arguments,
         tools.plot, None),
        ("card", "print the map card of a score file: model, tokenizer, grid, measurement, "
                 "versions, samples", tools.add_card_arguments, tools.card, None),
        ("models", "list the model names rhlens knows and the GPU memory each paper model needs",
         tools.add_models_arguments, tools.models, None),
        ("published", "the paper's seven published score maps (offline)",
         tools.add_published_arguments, tools.published, None),
    ]
    for name, help_text, add, func, description in commands:
        p = sub.add_parser(name, help=help_text, description=description, epilog=EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add(p)
        p.set_defaults(func=func)
    return parser


def flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{argument name: flag}`` over all subcommands: every flag's ``dest`` (``rouge_gate`` ->
    ``--rouge-gate``), and the library's names of flags named otherwise (:data:`FLAG_ALIASES`)."""
    out = dict(FLAG_ALIASES)
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for s in subs:
        for p in s.choices.values():
            for a in p._actions:
                if a.option_strings:
                    out.setdefault(a.dest, "--" + a.dest.replace("_", "-"))
    return out


def one_line(err: BaseException, flags: Mapping[str, str] | None = None) -> str:
    """The error as one line, the library's argument names written as the CLI's flags: the
    argument a :class:`UsageError` names (``arg``) at its start, and any argument written
    between backticks elsewhere in the message.

    >>> one_line(UsageError("needles must be at least 1.", arg="needles"), {"needles": "--needles"})
    '--needles must be at least 1.'
    >>> one_line(UsageError("score_mode must be one of ...", arg="score_mode"), FLAG_ALIASES)
    '--mode must be one of ...'
    >>> one_line(ValueError("a negative `rouge_gate`   or `other`"), {"rouge_gate": "--rouge-gate"})
    'a negative --rouge-gate or `other`'
    """
    flags = flags or {}
    text = " ".join(str(err).split()) or type(err).__name__
    arg = getattr(err, "arg", None)
    if flags and arg and text.startswith(arg):
        text = flags.get(arg, "--" + arg.replace("_", "-")) + text[len(arg):]
    return re.sub(r"`([a-z_]+)`", lambda m: flags.get(m.group(1), m.group(0)), text)


def show_traceback() -> bool:
    """Whether ``RHLENS_TRACEBACK`` asks for tracebacks: ``1``, ``yes``, ``true`` or ``on``
    (``0``, ``no``, ``false``, ``off`` and empty do not, as a user setting ``=0`` means).

    >>> os.environ["RHLENS_TRACEBACK"] = "0"; show_traceback()
    False
    >>> os.environ["RHLENS_TRACEBACK"] = "1"; show_traceback()
    True
    >>> del os.environ["RHLENS_TRACEBACK"]
    """
    return os.environ.get("RHLENS_TRACEBACK", "").strip().lower() in ("1", "yes", "true", "on")


def run_command(args, flags: Mapping[str, str]) -> int:
    """``args.func(args)`` with every failure reported as one line and an exit code."""
    where = f"rhlens {args.command}: error:"
    try:
        return args.func(args)
    except (UsageError, ModelNotFoundError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, ValueError) as err:
        print(f"{where} {one_line(err, flags)}", file=sys.stderr)
        return EXIT_USAGE
    except RunError as err:  # nothing passed the gate, a download failed...
        print(f"{where} {one_line(err, flags)}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, RuntimeError, MemoryError) as err:  # disk full, CUDA out of memory...
        if show_traceback():
            raise
        print(f"{where} {type(err).__name__}: {one_line(err)}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as err:  # noqa: BLE001 (a bug: one line, the traceback on request)
        if show_traceback():
            raise
        print(f"{where} internal error: {type(err).__name__}: {one_line(err)} (set "
              "RHLENS_TRACEBACK=1 to see where; please report it)", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rhlens`` command; returns its exit code."""
    with interrupt.handling():
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            import matplotlib

            matplotlib.use("Agg")
            return run_command(args, flags(parser))
        except KeyboardInterrupt:
            with interrupt.ignored():
                lead = "\n" if sys.stderr.isatty() else ""  # end a progress bar's line first
                print(f"{lead}rhlens: interrupted; finished samples are saved: rerun the same "
                      "command to resume.", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
