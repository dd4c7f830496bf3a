"""The toy chapters' measurements, all through the same code that scores a 7B model.

* :func:`toy_retrieval_scores`: greedy-decode toy prompts with :func:`rhlens.decode.greedy_decode`
  and score every head with :func:`rhlens.scoring.retrieval_scores` (needle span = the value
  tokens in the prompt);
* :func:`masked_accuracy`: apply a :class:`rhlens.ablation.Mask` (uniform attention, as the
  paper, or zero output) at the decode positions and measure exact-value accuracy;
  :func:`masking_effect`: top-K against random-K (:func:`rhlens.heads.random_heads`);
* :func:`prev_token_induction_scores`: TransformerLens ``head_detector`` scores;
* :func:`emergence`: retrieval, induction and previous-token scores at every checkpoint.

Score maps compare with :func:`rhlens.heads.pearson`, like any other.

Example::

    >>> run = toy_retrieval_scores(bridge, task, n=16)                # doctest: +SKIP
    >>> run.scores.shape, run.accuracy                                # doctest: +SKIP
    (torch.Size([2, 4]), 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..ablation import Mask, MaskMode
from ..decode import greedy_decode
from ..heads import control_pool, head_name, head_names, random_heads, top_heads
from ..scoring import ScoreMode, retrieval_scores
from .task import ToyTask
from .train import accuracy, hf_module, to_bridge


@dataclass
class ToyScoreRun:
    """Retrieval scores of a toy model.

    Attributes:
        scores: ``[n_layers, n_heads]`` mean over samples.
        per_sample: ``[n, n_layers, n_heads]``.
        correct: ``[n]`` bool, whether greedy decoding produced the exact value.
        depth: ``[n]`` needle depths.
    """

    scores: torch.Tensor
    per_sample: torch.Tensor
    correct: torch.Tensor
    depth: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())


@torch.no_grad()
def toy_retrieval_scores(
    model, task: ToyTask, n: int = 32, seed: int = 1000, *, score_mode: ScoreMode = "paper",
    with_key: bool = False, mask: Mask | None = None, only_correct: bool = False,
) -> ToyScoreRun:
    """Decode ``n`` prompts of ``task`` greedily and compute each head's retrieval score.

    The needle span is the value tokens (``with_key`` adds the key). ``only_correct`` averages
    over the samples answered exactly (the analogue of the paper's ROUGE gate); by default all
    samples count, so an untrained model scores near 0 rather than raising.
    """
    bridge = to_bridge(model)
    batch = task.sample(n, seed=seed)
    per_sample, correct = [], []
    for i in range(n):
        prompt = batch.input_ids[i]
        trace = greedy_decode(bridge, prompt, max_new_tokens=task.value_len,
                              stop_at_newline=False, mask=mask)
        span = batch.needle_span(i, with_key=with_key)
        per_sample.append(retrieval_scores(trace.argmax, trace.tokens, prompt, span, score_mode))
        correct.append(trace.tokens.tolist() == batch.values[i].tolist())
    per = torch.stack(per_sample)
    ok = torch.tensor(correct)
    keep = per[ok] if only_correct and ok.any() else per
    return ToyScoreRun(keep.mean(0), per, ok, batch.depth)


@torch.no_grad()
def masked_accuracy(model, task: ToyTask, mask: Mask = Mask(), *, n: int = 256,
                    seed: int = 12345) -> float:
    """Exact-value accuracy with ``mask`` applied at the decode positions only (teacher
    forcing on the batch: the same as masking during KV-cached greedy decoding)."""
    if not mask.heads:
        return accuracy(model, task, n, seed)["accuracy"]
    bridge = to_bridge(model)
    batch = task.sample(n, seed=seed)
    full = batch.full()
    n_prompt = batch.input_ids.shape[1]
    logits = bridge.run_with_hooks(
        full[:, :-1], fwd_hooks=mask.hooks(bridge, from_pos=n_prompt - 1)
    )
    pred = logits[:, n_prompt - 1: n_prompt - 1 + task.value_len].argmax(-1)
    return float((pred == batch.values).all(1).float().mean())


def masking_effect(model, task: ToyTask, scores: torch.Tensor, ks: Sequence[int] = (1, 2), *,
                   n_random: int = 5, n: int = 256, mask_mode: MaskMode = "uniform",
                   seed: int = 0, retrieval_threshold: float = 0.1, same_layers: bool = True):
    """Accuracy with the top-``k`` retrieval heads masked versus ``k`` random heads.

    Random heads are drawn (seeded, ``n_random`` draws per ``k``, or every subset when there are
    fewer) from :func:`rhlens.heads.control_pool`: heads scoring ``<= retrieval_threshold``,
    with ``same_layers`` only in the retrieval heads' layers. When the pool has fewer than
    ``k`` heads, the random columns are NaN.

    Returns a pandas DataFrame: ``k``, ``top_heads``, ``top_scores`` (min score among them),
    ``acc_none``, ``acc_top``, ``acc_random`` (mean over draws), ``acc_random_min``,
    ``random_draws`` (the distinct control sets used), ``pool_size``.
    """
    import itertools
    import math

    import pandas as pd

    base = masked_accuracy(model, task, n=n)
    pool = control_pool(scores, retrieval_threshold, same_layers=same_layers)
    rows = []
    for k in ks:
        top = top_heads(scores, k)
        if k > len(pool):
            draws = []
        elif math.comb(len(pool), k) <= n_random:
            draws = [list(c) for c in itertools.combinations(pool, k)]
        else:
            draws = [random_heads(scores, k, seed + 1000 * k + j, retrieval_threshold,
                                  same_layers=same_layers)
                     for j in range(n_random)]
        rand = [masked_accuracy(model, task, Mask(d, mask_mode), n=n) for d in draws]
        rows.append({
            "k": k,
            "top_heads": head_names(top, sep=", "),
            "top_min_score": float(min(scores[hd] for hd in top)),
            "acc_none": base,
            "acc_top": masked_accuracy(model, task, Mask(top, mask_mode), n=n),
            "acc_random": sum(rand) / len(rand) if rand else float("nan"),
            "acc_random_min": min(rand) if rand else float("nan"),
            "random_draws": len(draws),
            "pool_size": len(pool),
        })
    return pd.DataFrame(rows)


@torch.no_grad()
def prev_token_induction_scores(model, task: ToyTask, n: int = 8, seed: int = 2000):
    """Previous-token and induction scores of every head, with TransformerLens
    ``detect_head`` (``"mul"`` measure: the share of a head's attention on the expected keys),
    on ``n`` full task sequences (prompt + value): the induction pattern marks, for each token
    seen before, the position just after its earlier occurrence -- for the answer tokens, the
    next needle token.

    Returns ``(prev [n_layers, n_heads], induction [n_layers, n_heads])``.
    """
    from transformer_lens.head_detector import detect_head

    bridge = to_bridge(model)
    batch = task.sample(n, seed=seed)
    tok = bridge.tokenizer
    texts = [tok.decode(row[1:-1]) for row in batch.full()]  # to_tokens adds <bos>
    prev = detect_head(bridge, texts, "previous_token_head", exclude_bos=True)
    ind = detect_head(bridge, texts, "induction_head", exclude_bos=True)
    return prev.float(), ind.float()


def _plain_state(hf) -> dict:
    """The Hugging Face module's weights under their plain names: once wrapped in a bridge,
    its ``state_dict`` keys gain ``._original_component`` segments (and bridge aliases)."""
    plain = {}
    for key, value in hf.state_dict().items():
        plain.setdefault(key.replace("._original_component", ""), value)
    return plain


@torch.no_grad()
def _load_plain_state(hf, state: dict) -> None:
    """Copy ``state`` (plain Hugging Face names, e.g. a checkpoint saved before wrapping) into
    ``hf`` in place, whether or not it is wrapped in a bridge."""
    current = _plain_state(hf)
    missing = [k for k in state if k not in current]
    if missing:
        raise KeyError(f"Checkpoint keys not found in the model: {missing[:3]}...; "
                       "was it saved from a model of another shape?")
    for key, value in state.items():
        current[key].copy_(value)


def emergence(model, task: ToyTask, history, n: int = 16, seed: int = 1000):
    """Retrieval, induction and previous-token scores of every head at every checkpoint.

    Args:
        model: the trained model (its weights are restored afterwards).
        history: the DataFrame of :func:`rhlens.toy.train` with ``attrs["checkpoints"]``.

    Returns:
        a long pandas DataFrame: ``step``, ``head`` (``L1H2``), ``retrieval``, ``induction``,
        ``prev_token``, joined with the history's ``loss`` and ``accuracy``.
    """
    import pandas as pd

    hf = hf_module(model)
    final = {k: v.clone() for k, v in _plain_state(hf).items()}
    rows = []
    try:
        for step, state in sorted(history.attrs["checkpoints"].items()):
            _load_plain_state(hf, state)
            run = toy_retrieval_scores(model, task, n=n, seed=seed)
            prev, ind = prev_token_induction_scores(model, task, n=4)
            n_layers, n_heads = run.scores.shape
            for l in range(n_layers):
                for h in range(n_heads):
                    rows.append({"step": step, "head": head_name(l, h), "layer": l,
                                 "retrieval": float(run.scores[l, h]),
                                 "induction": float(ind[l, h]), "prev_token": float(prev[l, h]),
                                 "greedy_accuracy": run.accuracy})
    finally:
        _load_plain_state(hf, final)
    frame = pd.DataFrame(rows)
    return frame.merge(history[["step", "loss", "accuracy"]], on="step", how="left")
