"""Map cards: what made a score map, written beside it, so that a map can be trusted, rerun and
compared.

Every score file a detection writes (``rhlens score``, :func:`rhlens.score.detect.detect_retrieval_heads`
with ``out=``: the sweep's :class:`~rhlens.score.detect.ScoreSweep`) and every merged one
(``rhlens merge``: :func:`rhlens.run.merge.merge_shards`) gets a **sidecar**
``<scores>.card.json``, written atomically right after the score file and rewritten with it
after every sample, so a resumed or merged run's card always describes the file beside it (the
card holds the score file's sha256, and ``rhlens card`` says when they disagree).

Why a sidecar and not a reserved key inside the score file: the public format is
``{"layer-head": [per-sample scores]}``, and readers iterate over *every* key (the paper's own
loader splits each key on ``"-"`` and reads two integers; HeadKV averages every value). Any
extra key, even one rhlens's own loader skipped, would break them. A sidecar leaves the score
file byte for byte in the public format, as ``<scores>.samples.jsonl`` already does.

A card records (``rhlens card FILE`` prints it, :func:`format_card`; ``--json`` the file):

* ``model``: id, revision (the hub commit, when the checkpoint came from the hub), a
  fingerprint of its weights (:func:`rhlens.run.samplelog.model_identity`), dtype, device,
  layers x query heads (and key/value heads);
* ``tokenizer``: a digest of the tokenizer (its vocabulary, merges, normalisation and special
  tokens) and of its chat template;
* ``grid``: lengths, depths, new tokens, prompt style, a digest of the haystack text, the
  needles (and their digest), the number of prompts;
* ``score``: mode (``paper`` / ``sum``) and span (``answer`` / ``needle``); ``rouge``: the
  gate and whether words are stemmed;
* ``seed``: the seed of ``--until-stable``'s order (greedy decoding has none: ``null``), and
  ``until_stable``: the stopping rule and where it stopped (:mod:`rhlens.score.stopping`);
* ``samples``: prompts run, passed and rejected by the gate;
* ``versions``: rhlens, transformers, transformer-lens, torch (a run resumed under other
  versions lists each);
* ``run``: the digest of the run's settings, as its sample log's records carry it
  (:func:`rhlens.run.samplelog.run_digest`); ``shard`` for a shard's file; ``scores``: the
  score file's sha256.

Whether two cards describe comparable maps is :mod:`rhlens.analyze.cards`'s question.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..niah.grid import Grid
from ..niah.haystack import load_haystack
from .names import CARD_SUFFIX
from .results import atomic_write_text
from .samplelog import logged_settings, run_digest, text_digest

#: Version of the card's layout.
CARD_FORMAT = 1
#: A card's name beside its score file (:data:`rhlens.run.names.CARD_SUFFIX`).
SUFFIX = CARD_SUFFIX

#: The packages whose versions a card records (key -> distribution name).
PACKAGES = {"rhlens": "rhlens", "transformers": "transformers",
            "transformer_lens": "transformer-lens", "torch": "torch"}


# --------------------------------------------------------------------------- building


def card_path(scores: str | Path) -> Path:
    """The card of a score file: ``<scores>.card.json`` (a card's own path is kept)."""
    text = str(scores)
    return Path(text if text.endswith(SUFFIX) else text + SUFFIX)


def package_versions() -> dict[str, str | None]:
    """Installed versions of rhlens, transformers, transformer-lens and torch."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for key, dist in PACKAGES.items():
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out


def tokenizer_digest(tokenizer) -> str | None:
    """A digest of what decides a tokenizer's ids: a fast tokenizer's full serialisation
    (vocabulary, merges, normaliser, pre-tokeniser, added tokens), else its vocabulary, and
    its special tokens."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(
        sorted(tokenizer.get_vocab().items()))
    special = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True,
                         default=str)
    return text_digest(text + "\n" + special)


def chat_template_digest(tokenizer) -> str | None:
    """A digest of the tokenizer's chat template (``None`` without one)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    return text_digest(template if isinstance(template, str)
                       else json.dumps(template, sort_keys=True))


def settings_card(settings: dict[str, Any]) -> dict:
    """The card as far as a sample log's settings tell it (model identity, ``mode``, ``span``,
    ``rouge_gate``, ``rouge_stemmer``, ``max_new_tokens``, ``prompt``); the rest ``null``."""
    return {
        "card_format": CARD_FORMAT,
        "model": {"id": settings.get("model"), "revision": None,
                  "weights": settings.get("weights"), "dtype": settings.get("dtype"),
                  "device": settings.get("device")},
        "tokenizer": None,
        "grid": {"max_new_tokens": settings.get("max_new_tokens"),
                 "prompt": settings.get("prompt")},
        "score": {"mode": settings.get("mode"), "span": settings.get("span")},
        "rouge": {"gate": settings.get("rouge_gate"), "stemmer": settings.get("rouge_stemmer")},
        "seed": None, "until_stable": None, "samples": None, "versions": None,
        "run": run_digest(logged_settings(settings)), "shard": None, "scores": None,
    }


def new_card(model, grid: Grid, settings: dict[str, Any], *, seed: int | None = None,
             shard: dict | None = None) -> dict:
    """The card of a detection run of ``model`` over ``grid`` with ``settings`` (the sample
    log's, :func:`settings_card`), ``seed`` and ``shard`` (:meth:`rhlens.run.shard.Shard.part`),
    without its sample counts (:func:`with_samples`)."""
    hf, cfg, tok = getattr(model, "original_model", model), model.cfg, model.tokenizer
    needles = [dataclasses.asdict(n) for n in grid.needle_list]
    haystack = grid.haystack if grid.haystack is not None else load_haystack(None)
    card = settings_card(settings)
    card["model"].update(
        revision=getattr(getattr(hf, "config", None), "_commit_hash", None),
        n_layers=int(cfg.n_layers), n_heads=int(cfg.n_heads),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads))
    card["tokenizer"] = {"digest": tokenizer_digest(tok), "chat_template": chat_template_digest(tok)}
    card["grid"] = {"lengths": list(grid.lengths), "depths": list(grid.depths), **card["grid"],
                    "haystack": text_digest(haystack), "needles": needles,
                    "needles_digest": text_digest(json.dumps(needles, sort_keys=True)),
                    "n_prompts": len(grid)}
    card.update(seed=seed, versions=package_versions(),
                shard=({"index": shard["index"], "count": shard["count"],
                        "n_prompts": len(shard["keys"])} if shard else None))
    return card


def with_samples(card: dict, records: Iterable[dict]) -> dict:
    """``card`` with ``samples``: prompts ``run``, ``passed`` and ``rejected`` by the gate."""
    records = list(records)
    passed = sum(bool(r["passed"]) for r in records)
    return {**card, "samples": {"run": len(records), "passed": passed,
                                "rejected": len(records) - passed}}


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _union(a, b):
    """Versions seen by a run: one string, or the list of the distinct ones."""
    seen = []
    for v in (a if isinstance(a, list) else [a]) + (b if isinstance(b, list) else [b]):
        if v not in seen:
            seen.append(v)
    return seen[0] if len(seen) == 1 else seen


def resume_card(card: dict, scores: str | Path) -> dict:
    """``card`` keeping the versions of the card already beside ``scores`` when that card is
    of the same run (a resumed run's samples may come from an earlier process)."""
    try:
        old = json.loads(card_path(scores).read_text("utf-8"))
    except (OSError, ValueError):
        return card
    if not isinstance(old, dict) or old.get("run") != card["run"] or \
            not isinstance(old.get("versions"), dict):
        return card
    versions = {k: _union(old["versions"].get(k, v), v) for k, v in card["versions"].items()}
    return {**card, "versions": versions}


def write_card(scores: str | Path, card: dict, records: Iterable[dict]) -> dict:
    """Write ``card`` (with the sample counts of ``records`` and the sha256 of the score file
    as it is now) atomically to ``<scores>.card.json``; returns what was written."""
    full = with_samples(card, records)
    full["scores"] = {"sha256": _file_digest(Path(scores))}
    atomic_write_text(card_path(scores), json.dumps(full, indent=1) + "\n")
    return full


def merged_card(shard_files: list[str], settings: dict[str, Any], records: list[dict]) -> dict:
    """The card a single process running the whole grid writes, from the shards' cards (their
    versions joined); where a shard has no card, the fields its sample log cannot give are
    ``null`` and a note says so."""
    cards, missing = [], []
    for path in shard_files:
        try:
            cards.append(read_card(path))
        except (UsageError, FileNotFoundError):
            missing.append(path)
    if missing:
        print(f"note: {', '.join(missing)} has no readable map card; the merged card lacks "
              "what only a card records (tokenizer, haystack, needles, versions).",
              file=sys.stderr)
    if cards:
        card = {**cards[0], "shard": None, "samples": None, "scores": None}
        for other in cards[1:]:
            card["versions"] = {k: _union(v, other["versions"].get(k, v))
                                for k, v in card["versions"].items()}
        return with_samples(card, records)
    return with_samples(settings_card(settings), records)


# --------------------------------------------------------------------------- reading


def read_card(source: str | Path) -> dict:
    """The card of a score file (or the card file itself).

    Raises:
        UsageError: the score file has no card beside it, or the card is not one.
    """
    path = card_path(source)
    if not path.is_file():
        if not str(source).endswith(SUFFIX) and not Path(source).exists():
            raise FileNotFoundError(f"{source} does not exist; name a score file written by "
                                    "`rhlens score` or `rhlens merge`.")
        raise UsageError(f"{source} has no map card ({path.name} is not beside it): cards are "
                         "written by `rhlens score` and `rhlens merge`; rerun the command that "
                         "made it (it resumes from its sample log) to write one.")
    try:
        card = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise UsageError(f"{path} is not JSON: a damaged map card; rerun the command that "
                         "made the score file to rewrite it.") from None
    if not isinstance(card, dict) or card.get("card_format") != CARD_FORMAT:
        raise UsageError(f"{path} is not a map card of format {CARD_FORMAT} (written by "
                         "another rhlens?); rerun the command that made the score file.")
    return card


def scores_match(card: dict, scores: str | Path) -> bool | None:
    """Whether the score file is the one the card describes (``None``: nothing to check)."""
    want = (card.get("scores") or {}).get("sha256")
    if want is None or not Path(scores).is_file():
        return None
    return _file_digest(Path(scores)) == want


# --------------------------------------------------------------------------- printing


def format_card(card: dict, scores: str | Path | None = None) -> str:
    """The card as ``rhlens card`` prints it."""
    def get(path: str, default="-"):
        value: Any = card
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return default if value is None else value

    def joined(value) -> str:
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)

    needles = get("grid.needles", [])
    answers = "; ".join(repr(n.get("answer")) for n in needles[:3]) + \
        (f"; ... ({len(needles)} in all)" if len(needles) > 3 else "")
    rouge = get("rouge.gate")
    stem = {True: "stemmed", False: "unstemmed"}.get(get("rouge.stemmer", None), "-")
    samples = get("samples", {}) or {}
    versions = get("versions", {}) or {}
    lines = [
        f"map card{f' of {scores}' if scores else ''} (format {card.get('card_format')})",
        f"model        {get('model.id')}  revision {get('model.revision')}  weights "
        f"{get('model.weights')}",
        f"             {get('model.dtype')} on {get('model.device')}; {get('model.n_layers')} "
        f"layers x {get('model.n_heads')} query heads ({get('model.n_kv_heads')} kv heads)",
        f"tokenizer    {get('tokenizer.digest')}  chat template {get('tokenizer.chat_template')}",
        f"grid         lengths {joined(get('grid.lengths'))}; depths {joined(get('grid.depths'))}"
        f"; {len(needles)} needles = {get('grid.n_prompts')} prompts",
        f"             {get('grid.max_new_tokens')} new tokens; prompt {get('grid.prompt')}; "
        f"haystack {get('grid.haystack')}",
        f"needles      {get('grid.needles_digest')}: {answers or '-'}",
        f"score        {get('score.mode')} mode over the {get('score.span')} span",
        f"ROUGE gate   recall > {rouge}, {stem}",
        f"seed         {get('seed', 'none (greedy decoding)')}",
    ]
    stop = card.get("until_stable")
    if stop:
        lines.append(
            f"until stable top-{stop['k']} stability {stop['stability']:.3f} (level "
            f"{stop['level']}, {stop['n_resamples']} resamples) after {stop['samples']} "
            f"samples, {stop['passed']} passed: {stop['reason']}")
    shard = card.get("shard")
    if shard:
        lines.append(f"shard        {shard['index']}/{shard['count']} ({shard['n_prompts']} of "
                     "the prompts); `rhlens merge` joins the shards")
    lines += [
        f"samples      {samples.get('passed', '-')} passed, {samples.get('rejected', '-')} "
        f"rejected of {samples.get('run', '-')} run",
        "versions     " + (", ".join(f"{PACKAGES[k]} {joined(v)}" for k, v in versions.items())
                           or "-"),
        f"run          {get('run')}",
    ]
    digest = get("scores.sha256", None)
    match = scores_match(card, scores) if scores else None
    state = {True: " (matches the file)", False: " (the file has changed since: rerun its "
             "command to rewrite both)", None: ""}[match]
    lines.append(f"scores       sha256 {digest[:16] if digest else '-'}{state}")
    return "\n".join(lines)
