"""Are two score maps comparable? Their map cards (:mod:`rhlens.run.card`) say how each was
measured, and this module says where two cards differ in a way that changes scores.

:func:`warn_if_incomparable` (called by every comparison of :mod:`rhlens.analyze.compare`)
warns with a :class:`MapCardWarning` when two maps with cards differ in a field that changes
scores: always the measurement (:data:`MEASUREMENT`), and, for two runs of the same model id,
the model's own fields too (:data:`MODEL_FIELDS`: weights, revision, dtype, device, tokenizer,
chat template, library versions). Two different models are expected to differ in those. Maps
without a card (tensors, the published maps, other methods' maps) are not checked.

Example::

    >>> a = {"card_format": 1, "model": {"id": "m"}, "score": {"mode": "paper"}}
    >>> differences(a, {**a, "score": {"mode": "sum"}})
    ['score.mode paper vs sum']
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..run.card import card_path, read_card
from ..run.results import is_url

#: Fields whose difference changes scores whatever the model.
MEASUREMENT = ("score.mode", "score.span", "rouge.gate", "rouge.stemmer", "grid.prompt",
               "grid.max_new_tokens", "grid.lengths", "grid.depths", "grid.haystack",
               "grid.needles_digest", "versions.rhlens")
#: Fields of the model and its software, compared when two cards name the same model id.
MODEL_FIELDS = ("model.weights", "model.revision", "model.dtype", "model.device",
                "tokenizer.digest", "tokenizer.chat_template", "versions.transformers",
                "versions.transformer_lens", "versions.torch")


class MapCardWarning(UserWarning):
    """Two score maps were measured differently (see :func:`warn_if_incomparable`)."""


def flatten(card: dict, prefix: str = "") -> dict[str, Any]:
    """``{"score.mode": "paper", ...}``: the card's fields by dotted name."""
    out: dict[str, Any] = {}
    for key, value in card.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _same(field: str, a, b) -> bool:
    if field.startswith("versions.") and (isinstance(a, list) or isinstance(b, list)):
        # a resumed run lists every version it ran under: it agrees with any of them
        va = set(a) if isinstance(a, list) else {a}
        vb = set(b) if isinstance(b, list) else {b}
        return bool(va & vb) and (va <= vb or vb <= va)
    return a == b


def differences(a: dict, b: dict) -> list[str]:
    """Fields that change scores and differ between two cards: ``"score.mode paper vs
    sum"``; the model's own fields only when both name the same model id. A field either card
    does not record is not compared."""
    fa, fb = flatten(a), flatten(b)
    fields = list(MEASUREMENT)
    if fa.get("model.id") == fb.get("model.id"):
        fields += MODEL_FIELDS
    out = []
    for f in fields:
        if f in fa and f in fb and fa[f] is not None and fb[f] is not None \
                and not _same(f, fa[f], fb[f]):
            out.append(f"{f} {_short(fa[f])} vs {_short(fb[f])}")
    return out


def _short(value) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _card_of(source) -> dict | None:
    if not isinstance(source, (str, Path)) or is_url(source):
        return None
    if not card_path(source).is_file():
        return None
    try:
        return read_card(source)
    except (UsageError, FileNotFoundError):
        return None


def warn_if_incomparable(maps: dict[str, Any], stacklevel: int = 3) -> list[str]:
    """Warn (:class:`MapCardWarning`) for each pair of ``maps`` (name -> source) whose cards
    differ in a field that changes scores (:func:`differences`); sources without a card
    (tensors, published maps, other tools' maps) are not checked. Returns the warnings;
    ``stacklevel`` points them at the caller of the comparison that called this."""
    cards = {name: c for name, src in maps.items() if (c := _card_of(src)) is not None}
    names = list(cards)
    messages = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diffs = differences(cards[a], cards[b])
            if diffs:
                msg = (f"{a} and {b} were measured differently ({'; '.join(diffs)}): their "
                       "scores differ for that reason too (see `rhlens card`).")
                warnings.warn(msg, MapCardWarning, stacklevel=stacklevel)
                messages.append(msg)
    return messages


def warn_pair(a, b) -> list[str]:
    """:func:`warn_if_incomparable` of two sources, named by their paths."""
    if not all(isinstance(x, (str, Path)) for x in (a, b)):
        return []
    return warn_if_incomparable({str(a): a, str(b): b}, stacklevel=4)
