"""The flags the commands share, and how they become the library's objects: a model, a
:class:`~rhlens.niah.grid.Grid`, a :class:`~rhlens.run.shard.Shard`; ``--compat`` presets.

>>> parse_list("500,1000", int)
[500, 1000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EXIT_USAGE, UsageError
from ..run.shard import Shard, launcher_device
from . import interrupt


class Parser(argparse.ArgumentParser):
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
    from ..models.loading import load_model

    model = load_model(args.model, args.device, args.dtype,
                       device_map=getattr(args, "device_map", None))
    interrupt.check()  # a Ctrl-C during the imports and the load that a library swallowed
    return model


def add_shard_args(p: argparse.ArgumentParser) -> None:
    """``--shard i/n`` (else the launcher's ``RANK``/``WORLD_SIZE``)."""
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N of the grid (0-based) into OUT's shard file, e.g. "
                        "0/2 and 1/2, then `rhlens merge`; under accelerate launch or torchrun "
                        "the shard is RANK/WORLD_SIZE and each process takes cuda:LOCAL_RANK")


def shard_from_args(args):
    """The :class:`~rhlens.run.shard.Shard` of ``--shard`` or the launcher, or ``None``; for a
    shard, ``--out`` (and ``--plot``) become the shard's own files and, under a launcher, the
    device its GPU (``cuda:LOCAL_RANK``) unless ``--device`` or ``--device-map`` is given."""
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

    >>> merge_hint(Shard(1, 2), "runs/s.shard1of2.json")
    'shard 1/2: when all 2 have finished, `rhlens merge --out runs/s.json runs/s.shard*of2.json`'
    """
    p = Path(out)
    merged = p.with_name(p.name.replace(shard.suffix, "", 1))
    pattern = p.with_name(p.name.replace(shard.suffix, f".shard*of{shard.count}", 1))
    return (f"shard {shard}: when all {shard.count} have finished, `rhlens merge --out "
            f"{merged} {pattern}`")


def _batch_size(text: str) -> int | str:
    """``--batch-size``'s value: a number, or the text as given (``auto``, or something
    :func:`rhlens.validate.batch_size` rejects with the flag's name)."""
    try:
        return int(text)
    except ValueError:
        return text


def add_batch_args(p: argparse.ArgumentParser) -> None:
    """``--batch-size B|auto`` of the commands that decode a grid (``score``, ``niah``)."""
    p.add_argument("--batch-size", type=_batch_size, default="auto", metavar="B|auto",
                   help="decode up to B prompts of one length at once; auto (default): 4 on a "
                        "CPU (while a batch holds at most 8,192 tokens), on a GPU as many as fit "
                        "half its free memory (at most 16). The results and the sample log are "
                        "the same under every B, so a run resumes under another")


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
    """The :class:`~rhlens.niah.grid.Grid` that ``--lengths``, ``--depths``, ``--needles``,
    ``--needle-file``, ``--haystack`` and ``--max-new-tokens`` describe (``needles``: already
    chosen needles, e.g. the held-out ones of a masking run)."""
    from ..niah.grid import Grid
    from ..niah.haystack import load_haystack, load_needles

    if needles is None:
        needles = load_needles(args.needle_file, args.needles)
    return Grid(args.lengths, args.depths, tuple(needles), load_haystack(args.haystack),
                args.max_new_tokens, prompt_style=getattr(args, "prompt", None) or "rhlens")


def save_figure(fig, path, **kwargs) -> None:
    """Save ``fig`` to ``path``, making its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **kwargs)
