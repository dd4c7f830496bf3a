"""Downstream tasks under head masks: extractive QA and chain-of-thought (paper, section 4).

The paper masks retrieval heads during decoding and finds that tasks which must *look back*
at the context suffer (extractive QA, chain-of-thought reasoning) while answers from memory
do not. This module provides

* **tasks** that need the context and no world knowledge (:mod:`rhlens.apps.tasks`: invented
  profiles for extractive QA, chains of assignments for chain of thought, SQuAD and GSM8K);
* **metrics** from :mod:`rhlens.niah.answers`: SQuAD token F1
  (:func:`~rhlens.niah.answers.token_f1`) and exact numeric answers
  (:func:`~rhlens.niah.answers.extract_number`);
* **conditions**: named masks (``{"none": Mask(), "top-20": Mask.top(scores, 20), ...}``) or
  named lists of TransformerLens decode hooks; any mask plugs in. :func:`head_conditions`
  builds the paper's three (no mask, top-K retrieval heads masked, K random heads with score
  ``<= 0.1``, several seeds);
* **batched decoding** (:func:`rhlens.run.decode.decode_conditions`): the prompt is prefilled
  *once* (masks act only at decode steps, as in the paper), then every condition decodes as
  one row of a batch, each row with its own hooks.

Example::

    >>> conds = head_conditions(torch.tensor([[0.9, 0.0], [0.0, 0.0]]), 1, seeds=(0,))
    >>> {name: mask.heads for name, mask in conds.items()}
    {'none': (), 'top-1': ((0, 0),), 'random-1-s0': ((1, 1),)}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..intervene.mask import Mask
from ..niah.answers import extract_number, token_f1
from ..run.decode import Hook, decode_conditions
from .tasks import CoTTask, QAItem, cot_prompt, qa_prompt

#: A condition of a downstream run: a :class:`~rhlens.intervene.mask.Mask` or decode hooks.
Condition = Mask | Sequence[Hook]

# --------------------------------------------------------------------------- conditions


def head_conditions(
    scores: torch.Tensor,
    k: int,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    threshold: float = 0.1,
    mask: Mask = Mask(),
) -> dict[str, Mask]:
    """The paper's three conditions as named masks.

    Top-K heads come from :meth:`Mask.top`, random ones (score ``<= threshold``, one draw per
    seed) from :meth:`Mask.random`; ``mask`` gives the mode (and means) of every condition.

    Returns ``{"none": Mask(), "top-K": top K, "random-K-s0": K random, ...}``.
    """
    conds = {"none": mask.with_heads(()), f"top-{k}": mask.with_heads(Mask.top(scores, k).heads)}
    for seed in seeds:
        conds[f"random-{k}-s{seed}"] = mask.with_heads(
            Mask.random(scores, k, seed, threshold=threshold).heads)
    return conds


def condition_hooks(model, conditions: Mapping[str, Condition]) -> dict[str, list[Hook]]:
    """Decode hooks of every condition (a mask's :meth:`~rhlens.intervene.mask.Mask.hooks`).

    Batched decoding prefills once for all conditions, so a mask that covers the prefill
    cannot be honoured there and is refused.
    """
    out = {}
    for name, cond in conditions.items():
        if isinstance(cond, Mask):
            if cond.prefill:
                raise ValueError(f"Condition {name!r} masks the prefill too; batched decoding "
                                 "shares one prefill, so use prefill=False (the paper's) here.")
            out[name] = cond.hooks(model)
        else:
            out[name] = list(cond)
    return out



def evaluate_qa(
    model,
    items: Sequence[QAItem],
    conditions: Mapping[str, Condition],
    max_new_tokens: int = 12,
    progress: bool = True,
):
    """Token F1 of every item under every condition.

    Returns a pandas DataFrame with columns ``item``, ``condition``, ``output``, ``f1``
    (0-100) and ``answer``.
    """
    hooks = condition_hooks(model, conditions)
    rows = []
    for i, item in enumerate(tqdm(items, desc="extractive QA", disable=not progress)):
        ids = qa_prompt(model.tokenizer, item)
        outs = decode_conditions(model, ids, hooks, max_new_tokens)
        for cond, text in outs.items():
            rows.append({"item": i, "condition": cond, "output": text,
                         "f1": 100 * token_f1(text, item.answers), "answer": item.answer})
    return pd.DataFrame(rows)



def evaluate_cot(
    model,
    tasks: Sequence[CoTTask | tuple[str, int]],
    conditions: Mapping[str, Condition],
    cot: bool,
    max_new_tokens: int | None = None,
    progress: bool = True,
):
    """Accuracy of every task under every condition, with or without chain of thought.

    Returns a DataFrame with ``task``, ``condition``, ``cot``, ``output``, ``prediction``,
    ``answer``, ``correct`` (0 or 100).
    """
    max_new_tokens = max_new_tokens or (48 if cot else 6)
    hooks = condition_hooks(model, conditions)
    rows = []
    for i, task in enumerate(tqdm(tasks, desc=f"CoT={cot}", disable=not progress)):
        ids = cot_prompt(model.tokenizer, task, cot)
        answer = task[1] if isinstance(task, tuple) else task.answer
        outs = decode_conditions(model, ids, hooks, max_new_tokens)
        for cond, text in outs.items():
            pred = extract_number(text)
            rows.append({"task": i, "condition": cond, "cot": cot, "output": text,
                         "prediction": pred, "answer": answer,
                         "correct": 100.0 * (pred == answer)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summaries


def condition_family(name: str) -> str:
    """``"random-20-s3"`` -> ``"random-20"`` (seeds pooled); other names unchanged."""
    return re.sub(r"-s\d+$", "", name)


def summarize_conditions(frame, metric: str = "f1", by: Sequence[str] = ()):
    """Mean ``metric`` per condition, seeds of random draws pooled as mean ± std over seeds.

    Returns a DataFrame with ``condition``, ``mean``, ``spread`` (std over seeds, 0 for
    single conditions), ``n_seeds`` and ``change`` (relative to ``"none"``, in percent).
    """
    by = list(by)
    per_seed = frame.groupby(by + ["condition"], sort=False)[metric].mean().reset_index()
    per_seed["family"] = per_seed["condition"].map(condition_family)
    out = per_seed.groupby(by + ["family"], sort=False)[metric].agg(["mean", "std", "count"])
    out = out.reset_index().rename(columns={"family": "condition", "std": "spread",
                                            "count": "n_seeds"})
    out["spread"] = out["spread"].fillna(0.0)
    base = out[out["condition"] == "none"].set_index(by)["mean"] if by else \
        out.loc[out["condition"] == "none", "mean"]
    if by:
        ref = out.set_index(by).index.map(base)
        out["change"] = 100 * (out["mean"] - ref.values) / ref.values
    else:
        ref = float(base.iloc[0]) if len(base) else float("nan")
        out["change"] = 100 * (out["mean"] - ref) / ref if ref else float("nan")
    return pd.DataFrame(out)
