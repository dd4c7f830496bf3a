"""The toy chapters' measurements, all through the same code that scores a 7B model.

* :func:`toy_retrieval_scores`: greedy-decode toy prompts with :func:`rhlens.run.decode.greedy_decode`
  and score every head with :func:`rhlens.score.scoring.retrieval_scores` (needle span = the value
  tokens in the prompt);
* :func:`masked_accuracy`: apply a :class:`rhlens.intervene.mask.Mask` (uniform attention, as the
  paper, or zero output) at the decode positions and measure exact-value accuracy;
  :func:`masking_effect`: top-K against random-K (:func:`rhlens.score.heads.random_heads`);
* :func:`prev_token_induction_scores`: TransformerLens ``head_detector`` scores;
* :func:`emergence`: retrieval, induction and previous-token scores at every checkpoint.

Score maps compare with :func:`rhlens.analyze.statistics.pearson`, like any other.

Example::

    >>> run = toy_retrieval_scores(bridge, task, n=16)                # doctest: +SKIP
    >>> run.scores.shape, run.accuracy                                # doctest: +SKIP
    (torch.Size([2, 4]), 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..intervene.mask import Mask, MaskMode
from ..run.decode import greedy_decode
from ..score.heads import control_pool, head_name, head_names, random_heads, top_heads
from ..score.scoring import ScoreMode, retrieval_scores
from .task import ToyTask
from .train import accuracy, hf_module, to_bridge

if TYPE_CHECKING:
    import pandas


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
    fewer) from :func:`rhlens.score.heads.control_pool`: heads scoring ``<= retrieval_threshold``,
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
        rand = [masked_accuracy(model, task, Mask(tuple(d), mask_mode), n=n) for d in draws]
        rows.append({
            "k": k,
            "top_heads": head_names(top, sep=", "),
            "top_min_score": float(min(scores[hd] for hd in top)),
            "acc_none": base,
            "acc_top": masked_accuracy(model, task, Mask(tuple(top), mask_mode), n=n),
            "acc_random": sum(rand) / len(rand) if rand else float("nan"),
            "acc_random_min": min(rand) if rand else float("nan"),
            "random_draws": len(draws),
            "pool_size": len(pool),
        })
    return pd.DataFrame(rows)


@torch.no_grad()
def prev_token_induction_scores(model, task: ToyTask, n: int = 16, seed: int = 2000):
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
    plain: dict[str, torch.Tensor] = {}
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
            prev, ind = prev_token_induction_scores(model, task, n=n)
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


# --------------------------------------------------------------------------- retrieval vs induction


def induction_accuracy(task: ToyTask, n: int = 256, seed: int = 12345) -> float:
    """Exact-value accuracy of *plain induction* on ``task``, with no model at all.

    Plain induction looks for the last earlier occurrence of the question token and copies
    the ``value_len`` tokens that followed it. On the plain task the question is the key, so
    it answers every prompt; on the alias variant the question token never occurred before,
    so it answers none. That is what makes the alias variant a test that separates retrieval
    from induction.

    >>> from rhlens.toy.task import ALIAS_VOCAB
    >>> induction_accuracy(ToyTask(), n=32), induction_accuracy(ToyTask(alias=True, vocab=ALIAS_VOCAB), n=32)
    (1.0, 0.0)
    """
    batch = task.sample(n, seed=seed)
    m = task.value_len
    right = 0
    for row, value in zip(batch.input_ids.tolist(), batch.values.tolist()):
        q_pos = len(row) + task.question_index
        earlier = [j for j in range(q_pos) if row[j] == row[q_pos]]
        if earlier:
            j = earlier[-1]
            right += row[j + 1: j + 1 + m] == value
    return right / n


@torch.no_grad()
def first_step_copies(model, task: ToyTask, n: int = 32, seed: int = 1000) -> torch.Tensor:
    """``[n_layers, n_heads]`` share of prompts on which the head, at the *first* decode step
    (the query is the question token), puts its attention argmax on the first value token
    while the model emits it. On the alias variant this is the step induction cannot do."""
    bridge = to_bridge(model)
    batch = task.sample(n, seed=seed)
    hits = []
    for i in range(n):
        prompt = batch.input_ids[i]
        trace = greedy_decode(bridge, prompt, max_new_tokens=1, stop_at_newline=False)
        start, _ = batch.needle_span(i)
        ok = int(trace.tokens[0]) == int(batch.values[i, 0])
        hits.append((trace.argmax[0] == start) & ok)
    return torch.stack(hits).float().mean(0)


def retrieval_vs_induction(variants: dict, *, n: int = 32) -> pandas.DataFrame:
    """Each head's retrieval score beside its induction score, for several task variants.

    Args:
        variants: ``{name: (model, task)}``, e.g. the plain task and the alias variant, each
            with the model trained on it.
        n: prompts per variant for the retrieval score (the induction and previous-token
            scores use :func:`prev_token_induction_scores`'s default of 16 full sequences).

    Returns:
        one row per (variant, head): ``variant``, ``head`` (``L1H2``), ``retrieval`` (the
        paper's score), ``first_step`` (:func:`first_step_copies`), ``induction`` and
        ``prev_token`` (TransformerLens ``detect_head``), and per variant the model's greedy
        ``accuracy`` and plain induction's (:func:`induction_accuracy`).
    """
    import pandas as pd

    rows = []
    for name, (model, task) in variants.items():
        run = toy_retrieval_scores(model, task, n=n)
        first = first_step_copies(model, task, n=n)
        prev, ind = prev_token_induction_scores(model, task)
        plain_induction = induction_accuracy(task)
        n_layers, n_heads = run.scores.shape
        for l in range(n_layers):
            for h in range(n_heads):
                rows.append({"variant": name, "head": head_name(l, h),
                             "retrieval": float(run.scores[l, h]),
                             "first_step": float(first[l, h]),
                             "induction": float(ind[l, h]), "prev_token": float(prev[l, h]),
                             "accuracy": run.accuracy, "induction_accuracy": plain_induction})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- matching heads


@torch.no_grad()
def decode_patterns(model, task: ToyTask, layer: int, n: int = 32, seed: int = 3000) -> torch.Tensor:
    """``[n_heads, n * value_len * n_keys]``: each head of ``layer``'s attention rows at the
    answer positions (teacher forcing on ``n`` prompts), flattened: what the head does when
    the model answers, comparable across models that share the task."""
    bridge = to_bridge(model)
    batch = task.sample(n, seed=seed)
    full = batch.full()[:, :-1]
    n_prompt = batch.input_ids.shape[1]
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = bridge.run_with_cache(full, names_filter=name)
    pattern = cache[name][:, :, n_prompt - 1: n_prompt - 1 + task.value_len]  # [b, head, m, key]
    return pattern.transpose(0, 1).flatten(1).float()


def best_permutation(similarity: torch.Tensor) -> tuple[int, ...]:
    """The permutation ``p`` maximising ``sum_i similarity[i, p[i]]`` (brute force, so for
    the few heads of one toy layer: at most 8).

    >>> best_permutation(torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
    (1, 0)
    """
    import itertools

    n = similarity.shape[0]
    if n > 8:
        raise ValueError(f"best_permutation tries every permutation; {n} heads are too many.")
    return max(itertools.permutations(range(n)),
               key=lambda p: float(sum(similarity[i, j] for i, j in enumerate(p))))


def match_heads(model_a, model_b, task: ToyTask, scores_a: torch.Tensor,
                scores_b: torch.Tensor, layer: int, *, n: int = 32):
    """Match the heads of ``layer`` in two models up to permutation, by what they do.

    Heads of one layer are interchangeable (permuting them gives the same function), so a
    head-by-head comparison of two independently trained models must first decide which head
    of ``model_b`` plays the part of each head of ``model_a``. The match maximises the
    summed cosine similarity of their attention rows at the answer positions
    (:func:`decode_patterns`, :func:`best_permutation`).

    Returns:
        a pandas DataFrame, one row per head of ``model_a``: ``head_a``, ``head_b`` (its
        match), ``similarity`` (cosine of their patterns), ``score_a``, ``score_b``; with
        ``attrs``: ``pearson_matched`` (the layer's scores after matching),
        ``pearson_unmatched`` (same head index), ``similarity_unmatched`` (mean cosine of
        same-index heads).
    """
    import pandas as pd

    from ..analyze.statistics import pearson

    pa = torch.nn.functional.normalize(decode_patterns(model_a, task, layer, n), dim=1)
    pb = torch.nn.functional.normalize(decode_patterns(model_b, task, layer, n), dim=1)
    sim = pa @ pb.T
    perm = best_permutation(sim)
    a, b = scores_a[layer], scores_b[layer]
    frame = pd.DataFrame([{
        "head_a": head_name(layer, i), "head_b": head_name(layer, j),
        "similarity": float(sim[i, j]), "score_a": float(a[i]), "score_b": float(b[j]),
    } for i, j in enumerate(perm)])

    def safe_pearson(x, y):
        return pearson(x[None], y[None]) if float(x.std()) > 0 and float(y.std()) > 0 else float("nan")

    frame.attrs.update(
        pearson_matched=safe_pearson(a, b[list(perm)]),
        pearson_unmatched=safe_pearson(a, b),
        similarity_matched=float(frame.similarity.mean()),
        similarity_unmatched=float(sim.diagonal().mean()),
    )
    return frame
