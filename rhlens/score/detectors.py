"""Four head detectors, one family: where a head *reads*, and what it *writes*.

Each detector maps one NIAH sample to a ``[n_layers, n_heads]`` map; the mean over the samples
whose answer passes the ROUGE gate is the detector's map, written in the public score-file format
(``{"layer-head": [per-sample values]}``, :mod:`rhlens.run.results`) beside a card that says what it
measures (:data:`CARDS`). With ``N`` the needle span (``Sample.span``), ``q`` the question's
tokens, ``A^h`` head ``h``'s attention, and at each answer step ``t`` the generated token ``y_t``:

* ``copy_paste`` (Wu et al. 2024, arXiv 2404.15574, Sec. 2): the retrieval score of
  :mod:`rhlens.score.scoring`, ``|g_h ∩ k| / |k|``: the share of the answer span's tokens the head
  copied (its most-attended key lies in ``k`` and holds the generated token). Reads.
* ``query_focus`` (QRHead, Zhang et al. 2025, arXiv 2506.09944, QRscore):
  ``(1/|q|) Σ_{t_q ∈ q} Σ_{t_d ∈ N} A^h[t_q → t_d]``, the attention mass the question's tokens
  put on the needle while the prompt is read. Reads.
* ``logit_contribution`` (LOCOS, Gema, Alex and Minervini 2026, arXiv 2607.01002): what a head
  writes to the answer's logit from each key position ``j``,
  ``φ_t(j) = α_t(j) · (v_j W_O^h) · (w ⊙ u_{y_t}) / s_t`` (attention weight times the head's
  value-output vector, through the final norm with its scale ``s_t`` frozen and its weight
  ``w``, on the answer token's unembedding ``u_{y_t}``; summed over ``j`` it is the head's direct
  logit attribution, :func:`rhlens.score.logit.head_dla`), contrasted between needle and
  off-needle prompt positions ``O``: ``mean_{j ∈ N} φ_t(j) − mean_{j ∈ O} φ_t(j)``, averaged
  over the answer steps. In logits, signed. Writes. (LOCOS describes the contrast as needle
  against off-needle positions in one forward pass; the difference of the two means is this
  module's reading of it. LOCOS tests its heads by mean-ablation; rhlens masks as the paper.)
* ``needle_attention``: ``Σ_{j ∈ N} α_t(j)``, averaged over the same answer steps: the
  simplest baseline, ``logit_contribution`` without the OV projection. Reads.

**Passes.** ``copy_paste``, ``needle_attention`` and ``logit_contribution`` come from one greedy
decode (:func:`rhlens.run.decode.greedy_decode`, its prompt prefilled with SDPA) with read-only
decode hooks. ``query_focus`` cannot join it: it reads the prompt's *prefill* rows, which the
SDPA prefill never computes (reading them there would force the hooked eager attention over the
whole prompt). It runs its own prefill instead: SDPA up to the question, then only the question's
``|q|`` rows through the hooked attention (``|q| x n`` scores per layer, never ``n x n``).

Maps over a grid and their files: :mod:`rhlens.score.detector_maps`; held against the
interventions: :mod:`rhlens.intervene.detector_eval`, :mod:`rhlens.analyze.detectors`.

Example::

    >>> rec = detect_sample(model, sample)                       # doctest: +SKIP
    >>> sorted(rec["maps"]), len(rec["maps"]["query_focus"])     # doctest: +SKIP
    (['copy_paste', 'logit_contribution', 'needle_attention', 'query_focus'], 30)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import einops
import torch

from ..errors import UsageError
from ..niah.answers import rouge1_recall
from ..niah.prompts import Sample, ScoreSpan, answer_ids, question_span
from ..run.decode import greedy_decode, model_device, new_cache, prefill
from ..run.hooks import act_name, every_layer, layer_of
from ..run.sdpa import sdpa_attention
from .logit import centres_output, final_norm_weight, head_dla
from .scoring import ScoreMode, retrieval_scores

Detector = Literal["copy_paste", "query_focus", "logit_contribution", "needle_attention"]
DETECTORS: tuple[Detector, ...] = ("copy_paste", "query_focus", "logit_contribution",
                                   "needle_attention")
#: Which decode steps ``logit_contribution`` and ``needle_attention`` average over: the steps
#: that write the needle's answer, or every decode step.
Steps = Literal["answer", "decode"]
STEPS: tuple[Steps, ...] = ("answer", "decode")


@dataclass(frozen=True)
class Card:
    """What a detector's map means: its formula, source, circuit and unit."""

    name: str
    formula: str
    source: str
    circuit: str  # "reads (QK)": where the head attends; "writes (OV)": what it adds
    computed: str
    unit: str
    signed: bool = False


CARDS: dict[str, Card] = {c.name: c for c in (
    Card("copy_paste", "|g_h ∩ k| / |k| (top-1 key in the answer span holds the generated token)",
         "Wu et al. 2024, arXiv 2404.15574, Sec. 2", "reads (QK)", "decode steps",
         "share of span tokens copied, 0..1"),
    Card("query_focus", "(1/|q|) Σ_{t_q∈q} Σ_{t_d∈N} A[t_q→t_d]",
         "Zhang et al. 2025 (QRHead), arXiv 2506.09944, QRscore", "reads (QK)",
         "prefill, question rows only", "attention mass, 0..1"),
    Card("logit_contribution", "mean_{j∈N} φ(j) − mean_{j∈O} φ(j), φ(j) = α(j)·(v_j W_O)·(w⊙u_y)/s",
         "Gema, Alex, Minervini 2026 (LOCOS), arXiv 2607.01002", "writes (OV)",
         "answer steps", "logits", signed=True),
    Card("needle_attention", "Σ_{j∈N} α(j)", "baseline (attention mass on the needle)",
         "reads (QK)", "answer steps", "attention mass, 0..1"),
)}


# --------------------------------------------------------------------------- the formulas


def query_focus_score(rows: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """QRscore: ``rows`` ``[..., |q|, keys]`` (the question's attention rows) -> ``[...]``,
    the mean over question tokens of the mass on ``span``. With the one row of a decode step,
    the needle attention of that step.

    >>> query_focus_score(torch.tensor([[[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]]]), (1, 3))
    tensor([0.7500])
    """
    a, b = span
    return rows[..., a:b].sum(-1).mean(-1)


def split_values(alpha: torch.Tensor, values: torch.Tensor, span: tuple[int, int],
                 n_prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-weighted value sums of one decode step, on the needle and off it.

    Args:
        alpha: ``[n_heads, keys]`` attention rows of the query heads.
        values: ``[n_kv_heads, keys, d_head]`` the keys' values (grouped-query attention:
            query head ``h`` reads value group ``h // (n_heads // n_kv_heads)``).
        span: the needle ``N``; off-needle ``O`` is every other prompt position ``< n_prompt``.

    Returns:
        ``(Σ_{j∈N} α(j) v_j, Σ_{j∈O} α(j) v_j)``, each ``[n_heads, d_head]``.
    """
    a, b = span
    grouped = einops.rearrange(alpha, "(g r) k -> g r k", g=values.shape[0])
    needle = torch.einsum("grk,gkd->grd", grouped[..., a:b], values[:, a:b])
    prompt = torch.einsum("grk,gkd->grd", grouped[..., :n_prompt], values[:, :n_prompt])
    flat = lambda x: einops.rearrange(x, "g r d -> (g r) d")  # noqa: E731
    return flat(needle), flat(prompt - needle)


def write_contrast(needle: torch.Tensor, off: torch.Tensor, n_needle: int, n_off: int,
                   w_o: torch.Tensor, scale: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """LOCOS's spatial contrast, averaged over steps: ``[n_heads]``.

    ``needle``, ``off``: ``[m, n_heads, d_head]`` sums of :func:`split_values` at ``m`` steps;
    ``w_o`` ``[n_heads, d_head, d_model]``; ``scale`` ``[m]``; ``direction`` ``[m, d_model]``
    (``w ⊙ u_{y_t}``). Since ``φ`` is linear in ``α(j) v_j``, the mean of ``φ`` over ``N`` is the
    head's direct logit attribution (:func:`rhlens.score.logit.head_dla`) of ``Σ_N α v / |N|``.

    >>> w_o = torch.eye(2)[None]; d = torch.tensor([[1.0, 0.0]])
    >>> write_contrast(torch.tensor([[[4.0, 0.0]]]), torch.tensor([[[6.0, 0.0]]]), 2, 3, w_o,
    ...                torch.tensor([2.0]), d)
    tensor([0.])
    """
    return head_dla(needle / n_needle - off / n_off, w_o, scale, direction)


# --------------------------------------------------------------------------- where things are


def answer_steps(tokenizer, sample: Sample, tokens: torch.Tensor) -> list[int]:
    """The decode steps that write the needle's answer: where its tokens (as after a space)
    appear in ``tokens``, else the steps whose token is one of the answer span's."""
    gen, want = tokens.tolist(), answer_ids(tokenizer, sample.needle.answer)
    for i in range(len(gen) - len(want) + 1):
        if gen[i : i + len(want)] == want:
            return list(range(i, i + len(want)))
    a0, a1 = sample.answer_span
    inside = set(sample.input_ids[a0:a1].tolist())
    return [t for t, tok in enumerate(gen) if tok in inside]


# --------------------------------------------------------------------------- the two passes


@torch.no_grad()
def question_focus(model, sample: Sample, span: tuple[int, int]) -> torch.Tensor:
    """``[n_layers, n_heads]`` QRscore of one sample: the prompt up to the question is
    prefilled with SDPA, then only the question's tokens run through the hooked attention."""
    q0, q1 = question_span(model.tokenizer, sample)
    if span[1] > q0:
        raise ValueError(f"The span {span} does not lie before the question ({q0}..{q1}).")
    ids = sample.input_ids.to(model_device(model))
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)

    def read(pattern, hook):  # [1, head, |q|, keys]
        out[layer_of(hook.name)] = query_focus_score(pattern[0].float(), span).cpu()

    cache = new_cache(model)
    with sdpa_attention(model):
        prefill(model, ids[:q0], cache)
    with model.hooks(fwd_hooks=[(every_layer("pattern"), read)]):
        prefill(model, ids[q0:q1], cache, chunk_size=q1 - q0)
    return out


class _StepReader:
    """Read-only decode hooks: at each step, every head's needle mass and value sums on and off
    the needle, and the final norm's scale. The values of every key come from the KV cache,
    caught as the model is called with it."""

    def __init__(self, model, span: tuple[int, int], n_prompt: int):
        self.model, self.span, self.n_prompt = model, span, n_prompt
        self.cache: Any = None  # the model's KV cache object, caught at each call
        self.mass: list[list] = [[] for _ in range(model.cfg.n_layers)]
        self.needle: list[list] = [[] for _ in range(model.cfg.n_layers)]
        self.off: list[list] = [[] for _ in range(model.cfg.n_layers)]
        self.scale: list[torch.Tensor] = []

    @contextlib.contextmanager
    def catch_cache(self):
        def grab(module, args, kwargs):
            self.cache = kwargs.get("past_key_values", self.cache)

        handle = self.model.original_model.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def read(self, pattern: torch.Tensor, hook) -> None:
        layer = layer_of(hook.name)
        alpha = pattern[0, :, -1].float()  # [head, keys]
        values = self.cache.layers[layer].values[0].float()  # [kv, keys, d]
        step = len(self.mass[layer])
        if values.shape[1] != alpha.shape[-1] or alpha.shape[-1] != self.n_prompt + step:
            raise ValueError("logit_contribution needs the value of every key, but this model's "
                             "KV cache holds a window of them; leave it out of `detectors`.")
        self.mass[layer].append(query_focus_score(alpha[:, None], self.span))  # one row
        needle, off = split_values(alpha, values.to(alpha), self.span, self.n_prompt)
        self.needle[layer].append(needle)
        self.off[layer].append(off)

    def read_scale(self, scale: torch.Tensor, hook) -> None:
        self.scale.append(scale.reshape(-1)[-1].float())

    def hooks(self) -> list:
        return [(every_layer("pattern"), self.read), (act_name("scale"), self.read_scale)]


def _contributions(model, reader: _StepReader, tokens: torch.Tensor, steps: list[int],
                   n_needle: int, n_off: int) -> torch.Tensor:
    """``[n_layers, n_heads]`` LOCOS contrast over ``steps`` from what ``reader`` kept."""
    w_u = model.W_U
    direction = w_u[:, tokens[steps].to(w_u.device)].T.float()  # [m, d_model]
    weight = final_norm_weight(model)
    if weight is not None:
        direction = direction * weight.float().to(direction.device)[None]
    scale = torch.stack([reader.scale[t] for t in steps]).to(direction)
    centre = centres_output(model)
    out = []
    for layer in range(model.cfg.n_layers):
        w_o = model.blocks[layer].attn.W_O.float()
        if centre:  # a LayerNorm centres what each head writes
            w_o = w_o - w_o.mean(-1, keepdim=True)
        needle = torch.stack([reader.needle[layer][t] for t in steps]).to(w_o)
        off = torch.stack([reader.off[layer][t] for t in steps]).to(w_o)
        out.append(write_contrast(needle, off, n_needle, n_off, w_o, scale.to(w_o),
                                  direction.to(w_o)).cpu())
    return torch.stack(out)


@torch.no_grad()
def detect_sample(model, sample: Sample, *, detectors: Sequence[str] = DETECTORS,
                  score_span: ScoreSpan = "answer", read_span: ScoreSpan = "needle",
                  score_mode: ScoreMode = "paper", steps: Steps = "answer",
                  max_new_tokens: int = 32, rouge_stemmer: bool = True) -> dict:
    """Every detector's map of one sample, as a JSON-ready record.

    ``copy_paste`` reads ``sample.span(score_span)`` (the answer, as ``rhlens score``); the
    other three read ``sample.span(read_span)`` (the needle sentence, QRHead's relevant span
    and LOCOS's needle positions). ``maps[d]`` is ``None`` for a step-based detector when no
    decode step wrote the answer (``steps="answer"``).
    """
    detectors = check_detectors(detectors)
    span, n = sample.span(read_span), sample.input_ids.numel()
    reader = _StepReader(model, span, n)
    step_based = {"logit_contribution", "needle_attention"} & set(detectors)
    with reader.catch_cache() if step_based else contextlib.nullcontext():
        trace = greedy_decode(model, sample.input_ids, max_new_tokens,
                              decode_hooks=reader.hooks() if step_based else ())
    chosen = (answer_steps(model.tokenizer, sample, trace.tokens) if steps == "answer"
              else list(range(len(trace.tokens))))
    maps: dict[str, torch.Tensor | None] = {}
    if "copy_paste" in detectors:
        maps["copy_paste"] = retrieval_scores(trace.argmax, trace.tokens, sample.input_ids,
                                              sample.span(score_span), score_mode)
    if "query_focus" in detectors:
        maps["query_focus"] = question_focus(model, sample, span)
    if "needle_attention" in detectors:
        maps["needle_attention"] = (torch.stack([torch.stack([m[t] for t in chosen]).mean(0).cpu()
                                                 for m in reader.mass]) if chosen else None)
    if "logit_contribution" in detectors:
        n_needle = span[1] - span[0]
        maps["logit_contribution"] = (_contributions(model, reader, trace.tokens, chosen,
                                                     n_needle, n - n_needle) if chosen else None)
    return {"key": sample.key, "needle": sample.needle.text, "length": sample.length,
            "depth": sample.depth, "answer": trace.text,
            "rouge": rouge1_recall(sample.needle.answer, trace.text, rouge_stemmer),
            "steps": chosen,
            "maps": {d: None if m is None else m.double().tolist() for d, m in maps.items()}}


def check_detectors(detectors: Iterable[str]) -> tuple[str, ...]:
    """The detectors named, in :data:`DETECTORS` order; an error names an unknown one."""
    detectors = tuple(detectors)
    bad = [d for d in detectors if d not in DETECTORS]
    if bad or not detectors:
        raise UsageError(f"detectors must be some of {', '.join(DETECTORS)}; got "
                         f"{', '.join(bad) or 'none'}.", arg="detectors")
    return tuple(d for d in DETECTORS if d in detectors)
