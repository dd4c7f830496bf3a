"""Activation patching of head outputs between a clean and a counterfactual NIAH prompt.

The two prompts differ *only* in the needle's answer tokens (the counterfactual answer has
the same number of tokens, so every other position lines up). Both runs are teacher-forced
on the clean model's answer. At each answer token we measure the logit difference

    LD = logit(clean answer token) - logit(counterfactual answer token)

which is high in the clean run and low in the counterfactual run (the model copies the
needle it was given). Patching head outputs (``blocks.{l}.attn.hook_z``, per query head)
from the clean run into the counterfactual run, at decode positions only (the prefill is
untouched, as the paper masks), restores

    restored = (LD_patched - LD_cf) / (LD_clean - LD_cf)

of the difference: about 1 when those heads alone carry the needle's content to the output.
The reverse (counterfactual outputs into the clean run) destroys
``(LD_clean - LD_patched) / (LD_clean - LD_cf)``.

* :func:`patch_heads`: each head alone (the per-head map);
* :func:`patch_groups`: groups of heads together, e.g. the top-K retrieval heads against K
  control heads (:func:`control_groups`), in either :data:`Direction`;
* :func:`patch_sweep`: both over many pairs of a :class:`~rhlens.grid.Grid`, with direct logit
  attribution (:mod:`rhlens.attribution`), into a resumable CSV (``rhlens patch``);
* :func:`group_summary`, :func:`map_correlation`: bootstrap intervals over pairs and a
  head-shuffle null.

Efficiency: each prompt is prefilled once into a KV cache (:func:`run_pair`; patching at
decode positions cannot change it); then patched runs go in batches (one batch row per head
or group), running only the few decode positions.

Example::

    >>> pair = make_pair(model, sample)                 # doctest: +SKIP
    >>> res = patch_heads(model, pair)                  # doctest: +SKIP
    >>> res.restored.shape                              # doctest: +SKIP
    torch.Size([30, 9])
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

from .mask import Mask, split_heads
from ..run.decode import EAGER_CHUNK, greedy_decode, model_device, new_cache, prefill
from ..score.heads import (Head, as_heads, check_heads, head_name, head_names, heads_by_layer, spearman,
                    top_heads, top_k_overlap)
from ..niah.prompts import Sample
from ..run.sdpa import attention_hooks_in_use, sdpa_attention

#: Plain words used to build counterfactual answers (kept if they are one token).
REPLACEMENT_WORDS = (
    "red", "blue", "green", "stone", "river", "paper", "silver", "garden", "window", "table",
    "orange", "candle", "forest", "copper", "winter", "violet", "marble", "harbor", "pepper",
    "cotton", "ginger", "lemon", "tiger", "eagle", "maple", "salt", "iron", "cloud", "north",
    "seven", "ninety", "ocean", "bridge", "yellow", "wooden", "golden", "velvet", "olive",
)


def _find(haystack: list[int], needle: list[int], start: int = 0) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Token ids of the answer as it appears after a space inside a sentence."""
    return tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]


def counterfactual_tokens(tokenizer, original: Sequence[int], seed: int = 0) -> list[int]:
    """Same-length replacement of ``original`` token ids: each token becomes a different
    one-token word (with a leading space where the original has one).

    >>> tok.decode(counterfactual_tokens(tok, answer_ids(tok, "smoked cardamom")))  # doctest: +SKIP
    ' maple cloudblue'
    """
    rng = random.Random(seed)
    pools = {}
    for space in (True, False):
        pool = []
        for w in REPLACEMENT_WORDS:
            ids = tokenizer((" " if space else "") + w, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                pool.append(ids[0])
        pools[space] = pool
    out = []
    for t in original:
        space = tokenizer.decode([t]).startswith(" ")
        choices = [c for c in pools[space] or pools[not space] if c not in original and c not in out]
        if not choices:
            raise ValueError("No replacement word left for the counterfactual answer.")
        out.append(rng.choice(choices))
    return out


@dataclass
class PatchPair:
    """A clean and a counterfactual prompt, teacher-forced on the clean answer.

    Attributes:
        clean_ids, cf_ids: ``[n]`` prompts, equal except at the answer's tokens in the needle.
        continuation: ``[T]`` the clean model's generated tokens, up to the end of the answer.
        answer_steps: ``[m]`` indices into ``continuation`` of the answer tokens.
        clean_tokens, cf_tokens: ``[m]`` answer tokens of each prompt.
        sample: the clean sample.
    """

    clean_ids: torch.Tensor
    cf_ids: torch.Tensor
    continuation: torch.Tensor
    answer_steps: torch.Tensor
    clean_tokens: torch.Tensor
    cf_tokens: torch.Tensor
    sample: Sample


class NoAnswerError(ValueError):
    """The clean model's output does not contain the needle's answer, so nothing to patch."""


def make_pair(model, sample: Sample, seed: int = 0, max_new_tokens: int = 32, *,
              force_answer: bool = False) -> PatchPair:
    """Build the counterfactual prompt of ``sample`` and the clean continuation.

    With ``force_answer`` the continuation is the needle's answer itself, right after the
    prompt, whatever the model would write (for random-weight test models).

    Raises:
        NoAnswerError: when the model does not answer the clean prompt with the needle's answer.
    """
    tok = model.tokenizer
    ids = sample.input_ids.tolist()
    a_ids = answer_ids(tok, sample.needle.answer)
    start, end = sample.needle_span
    at = _find(ids[start:end], a_ids)
    if at < 0:
        raise ValueError(f"The answer {sample.needle.answer!r} is not a token span of the needle.")
    cf = counterfactual_tokens(tok, a_ids, seed)
    cf_ids = list(ids)
    cf_ids[start + at : start + at + len(a_ids)] = cf
    if force_answer:
        gen, pos = list(a_ids), 0
    else:
        trace = greedy_decode(model, sample.input_ids, max_new_tokens)
        gen = trace.tokens.tolist()
        pos = _find(gen, a_ids)
    if pos < 0:
        raise NoAnswerError(f"The model answered {trace.text!r}, without {sample.needle.answer!r}.")
    return PatchPair(
        clean_ids=sample.input_ids,
        cf_ids=torch.tensor(cf_ids),
        continuation=torch.tensor(gen[: pos + len(a_ids)]),
        answer_steps=torch.arange(pos, pos + len(a_ids)),
        clean_tokens=torch.tensor(a_ids),
        cf_tokens=torch.tensor(cf),
        sample=sample,
    )


def _logit_diff(logits: torch.Tensor, pair: PatchPair, start: int = 0) -> torch.Tensor:
    """``logits``: ``[batch, s, vocab]`` at the decode positions from ``start`` on -> ``[batch]``
    mean LD."""
    at = logits[:, pair.answer_steps - start]  # [b, m, vocab]
    clean = at.gather(-1, pair.clean_tokens[None, :, None].expand(at.shape[0], -1, 1).to(at.device))
    cf = at.gather(-1, pair.cf_tokens[None, :, None].expand(at.shape[0], -1, 1).to(at.device))
    return (clean - cf)[..., 0].float().mean(-1).cpu()


def _greedy_clean(logits: torch.Tensor, pair: PatchPair, start: int = 0) -> torch.Tensor:
    """``[batch]`` bool: the argmax at every decode position is the clean continuation's token.

    Then greedy decoding with the same patch writes exactly the clean continuation (answer
    included): teacher forcing and free decoding agree as long as every argmax agrees.
    """
    want = pair.continuation[start:].to(logits.device)
    return (logits.argmax(-1) == want[None]).all(-1).cpu()


@dataclass
class PairRun:
    """Both prompts of a pair read once: what every patch of the pair reuses.

    Attributes:
        pair: the pair.
        suffix: ``[s]`` decode inputs (the prompt's last token, then the continuation but its
            last token).
        z: ``{"clean": [...], "cf": [...]}``, per layer ``[s, n_heads, d_head]`` head outputs.
        ld: ``{"clean": LD, "cf": LD}``, mean logit differences of the unpatched runs.
        greedy: ``{"clean": bool, "cf": bool}``: whether the unpatched run decodes the clean
            continuation.
        scale: ``[s]`` the final norm's scale in the clean run (for direct logit attribution).
        caches: ``{"clean": ..., "cf": ...}`` KV caches of the prompts but their last token
            (and of the decode positions before ``start``).
        start: the first patched decode position (0: every decode position; the first answer
            token's step with ``positions="answer"``); ``z`` and ``scale`` hold positions
            ``start..s-1`` only.
        pre_greedy: per run, whether its argmax before ``start`` follows the clean continuation.
    """

    pair: PatchPair
    suffix: torch.Tensor
    z: dict[str, list[torch.Tensor]]
    ld: dict[str, float]
    greedy: dict[str, bool]
    scale: torch.Tensor
    caches: dict
    start: int = 0
    pre_greedy: dict | None = None

    @property
    def gap(self) -> float:
        """``LD_clean - LD_cf``: what a patch can restore (or destroy)."""
        return self.ld["clean"] - self.ld["cf"]


#: Where patches act: every decode position (the prompt's last token and the whole
#: continuation), or only the answer's positions (the decode positions from the one that
#: writes the first answer token on; what comes before, e.g. a restated question, runs unpatched).
Positions = Literal["decode", "answer"]


@torch.no_grad()
def run_pair(model, pair: PatchPair, chunk_size: int | None = None, *,
             positions: Positions = "decode") -> PairRun:
    """Prefill both prompts (with SDPA: patches act at decode positions only; through the
    hooked attention when the model carries attention hooks of its own) and run the decode
    positions of each, caching ``hook_z`` and the final norm's scale (``positions``: where the
    patches will act, :data:`Positions`)."""
    if positions not in ("decode", "answer"):
        raise ValueError(f"positions must be 'decode' or 'answer', got {positions!r}.")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    device = model_device(model)
    suffix = torch.cat([pair.clean_ids[-1:], pair.continuation[:-1]]).to(device)
    start = int(pair.answer_steps[0]) if positions == "answer" else 0
    pre_greedy = {}
    want = lambda n: n.endswith("attn.hook_z") or n == "ln_final.hook_scale"  # noqa: E731
    z, ld, greedy, caches, scale = {}, {}, {}, {}, None
    for run, ids in (("clean", pair.clean_ids), ("cf", pair.cf_ids)):
        cache = new_cache(model)
        if attention_hooks_in_use(model):  # hooks the model carries must see the prompt too
            prefill(model, ids[:-1].to(device), cache, chunk_size or EAGER_CHUNK)
        else:
            with sdpa_attention(model):
                prefill(model, ids[:-1].to(device), cache, chunk_size or max(1, ids.numel() - 1))
        pre_greedy[run] = True
        if start:  # the unpatched decode positions join the prompt's cache
            pre = model(suffix[None, :start], past_key_values=cache)
            want_pre = pair.continuation[:start].to(pre.device)
            pre_greedy[run] = bool((pre[0].argmax(-1) == want_pre).all())
        rest = suffix[start:]
        logits, act = model.run_with_cache(rest[None], past_key_values=cache, names_filter=want)
        cache.crop(-rest.numel())  # back to the unpatched part: every patched run starts here
        z[run] = [split_heads(act[f"blocks.{l}.attn.hook_z"], n_heads)[0] for l in range(n_layers)]
        ld[run] = float(_logit_diff(logits, pair, start)[0])
        greedy[run] = pre_greedy[run] and bool(_greedy_clean(logits, pair, start)[0])
        caches[run] = cache
        if run == "clean" and "ln_final.hook_scale" in act:
            scale = act["ln_final.hook_scale"][0].reshape(rest.numel(), -1)[:, 0].cpu()
    if abs(ld["clean"] - ld["cf"]) < 1e-6:
        raise ValueError("The clean and counterfactual runs give the same logit difference; "
                         "the needle does not change the answer, so patching measures nothing.")
    return PairRun(pair, suffix, z, ld, greedy, scale, caches, start, pre_greedy)


def _forward_rows(model, run: PairRun, target: str, rows: Sequence[dict[int, torch.Tensor]],
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``target``'s decode positions once per row; row ``b`` replaces, in each layer ``l``
    of ``rows[b]``, the heads where ``rows[b][l]`` (``[n_heads]`` bool) is set by the other
    run's outputs. Returns ``[len(rows)]`` LDs and greedy-clean flags."""
    n_heads = model.cfg.n_heads
    source = run.z["cf" if target == "clean" else "clean"]
    lds, greedy = [], []
    for at in range(0, len(rows), batch_size):
        part = rows[at : at + batch_size]
        b = len(part)
        cache = copy.deepcopy(run.caches[target])
        if b > 1:
            cache.batch_repeat_interleave(b)
        layers = sorted({l for r in part for l in r})
        masks = {l: torch.stack([r.get(l, torch.zeros(n_heads, dtype=torch.bool)) for r in part])
                 for l in layers}  # [b, n_heads]

        def put(z, hook):
            layer = int(hook.name.split(".")[1])
            zz = split_heads(z, n_heads)
            m = masks[layer].to(zz.device)[:, None, :, None]  # [b, 1, head, 1]
            zz = torch.where(m, source[layer][None].to(zz), zz)
            return zz.reshape(z.shape)

        hooks = [(f"blocks.{l}.attn.hook_z", put) for l in layers]
        with model.hooks(fwd_hooks=hooks):
            logits = model(run.suffix[None, run.start :].expand(b, -1), past_key_values=cache)
        lds.append(_logit_diff(logits, run.pair, run.start))
        greedy.append(_greedy_clean(logits, run.pair, run.start) & run.pre_greedy[target])
    return torch.cat(lds), torch.cat(greedy)


def _fraction(ld: torch.Tensor, run: PairRun, target: str) -> torch.Tensor:
    """Share of the gap a patch moves ``target``'s run towards the source run."""
    if target == "cf":
        return (ld - run.ld["cf"]) / run.gap
    return (run.ld["clean"] - ld) / run.gap


@dataclass
class PatchResult:
    """Patching one pair: ``restored`` ``[n_layers, n_heads]``, and the two reference logit
    differences (``ld_clean`` should exceed ``ld_cf``)."""

    restored: torch.Tensor
    ld_clean: float
    ld_cf: float


@torch.no_grad()
def patch_heads(model, pair: PatchPair | PairRun, batch_size: int | None = None) -> PatchResult:
    """Patch every query head's ``hook_z``, one at a time, from the clean into the
    counterfactual run (decode positions only).

    Cost: the two prompts read once (:func:`run_pair`) and ``n_layers`` batched forwards of
    the decode positions (one batch row per head).
    """
    run = pair if isinstance(pair, PairRun) else run_pair(model, pair)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            row = torch.zeros(n_heads, dtype=torch.bool)
            row[head] = True
            rows.append({layer: row})
    ld, _ = _forward_rows(model, run, "cf", rows, batch_size or n_heads)
    restored = _fraction(ld, run, "cf").reshape(n_layers, n_heads)
    return PatchResult(restored=restored, ld_clean=run.ld["clean"], ld_cf=run.ld["cf"])


@dataclass
class GroupPatch:
    """One group patch: ``ld`` of the patched run, ``fraction`` of the gap it moved
    (restored for ``"clean->cf"``, destroyed for ``"cf->clean"``), and ``greedy_clean``:
    whether greedy decoding under the patch writes the clean answer."""

    ld: float
    fraction: float
    greedy_clean: bool


#: ``"clean->cf"``: clean head outputs into the counterfactual run (do they restore the clean
#: answer? sufficiency); ``"cf->clean"``: the reverse (does the clean answer break?).
Direction = Literal["clean->cf", "cf->clean"]
DIRECTIONS: tuple[Direction, ...] = ("clean->cf", "cf->clean")


@torch.no_grad()
def patch_groups(model, pair: PatchPair | PairRun, groups: Mapping[str, Sequence[Head]],
                 direction: Direction = "clean->cf", *, batch_size: int = 8
                 ) -> dict[str, GroupPatch]:
    """Patch each group of heads *together* (``hook_z``, decode positions only), one batch row
    per group, in ``direction``.

    >>> res = patch_groups(model, pair, {"top5": top_heads(scores, 5)})   # doctest: +SKIP
    >>> res["top5"].fraction                                              # doctest: +SKIP
    0.62
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    run = pair if isinstance(pair, PairRun) else run_pair(model, pair)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names, rows = list(groups), []
    for name in names:
        heads = as_heads(groups[name])
        check_heads(heads, n_layers, n_heads)
        row = {}
        for layer, idx in heads_by_layer(heads).items():
            row[layer] = torch.zeros(n_heads, dtype=torch.bool)
            row[layer][idx] = True
        rows.append(row)
    target = "cf" if direction == "clean->cf" else "clean"
    ld, greedy = _forward_rows(model, run, target, rows, batch_size)
    frac = _fraction(ld, run, target)
    return {n: GroupPatch(float(ld[i]), float(frac[i]), bool(greedy[i]))
            for i, n in enumerate(names)}


def control_groups(scores: torch.Tensor, ks: Sequence[int], seeds: Sequence[int], *,
                   threshold: float = 0.1) -> dict[tuple[str, int, int], tuple[Head, ...]]:
    """The groups of a K sweep: ``("top", k, -1)``, the ``k`` best heads, and
    ``("control", k, seed)``, ``k`` heads drawn as masking draws them
    (:meth:`rhlens.ablation.Mask.random` with ``same_layers=True``: in the retrieval heads'
    layers, scoring ``<= threshold``, never one of the top ``max(ks)``).

    >>> s = torch.tensor([[0.9, 0.0, 0.05], [0.0, 0.3, 0.0]])
    >>> g = control_groups(s, [1, 2], [0])
    >>> g[("top", 2, -1)], len(g[("control", 2, 0)])
    (((0, 0), (1, 1)), 2)
    """
    top_all = top_heads(scores, max(ks))
    out = {}
    for k in ks:
        out[("top", k, -1)] = tuple(top_all[:k])
        for seed in seeds:
            mask = Mask.random(scores, k, seed, threshold=threshold, same_layers=True,
                               exclude=top_all)
            out[("control", k, seed)] = mask.heads
    return out


@dataclass
class PatchingRun:
    """:func:`patching_map` over several pairs: ``restored`` ``[n_layers, n_heads]`` (mean),
    ``per_pair`` ``[n_pairs, n_layers, n_heads]`` and one record per sample (``ld_clean``,
    ``ld_cf``, ``answer``, or ``skipped``)."""

    restored: torch.Tensor
    per_pair: torch.Tensor
    records: list[dict]


def patching_map(model, samples: Sequence[Sample], seed: int = 0, max_new_tokens: int = 32,
                 progress: bool = True) -> PatchingRun:
    """Patch every head on each sample the model answers; average the restored fractions.

    Samples whose clean answer lacks the needle's answer are skipped (and recorded).
    """
    maps, records = [], []
    for sample in tqdm(samples, desc="patching", disable=not progress):
        try:
            pair = make_pair(model, sample, seed, max_new_tokens)
        except NoAnswerError as err:
            records.append({"key": sample.key, "skipped": str(err)})
            continue
        res = patch_heads(model, pair)
        maps.append(res.restored)
        records.append({"key": sample.key, "ld_clean": res.ld_clean, "ld_cf": res.ld_cf,
                        "clean": model.tokenizer.decode(pair.clean_tokens),
                        "counterfactual": model.tokenizer.decode(pair.cf_tokens),
                        "skipped": ""})
    if not maps:
        raise NoAnswerError("The model answered none of the samples; nothing to patch. "
                            "Use shorter prompts or other needles.")
    per_pair = torch.stack(maps)
    return PatchingRun(per_pair.mean(0), per_pair, records)


# --------------------------------------------------------------------------- a run over a grid

#: Columns of a patching run's CSV, one row per (pair, measure, group or head). Rows of several
#: shards concatenate (sort by ``pair`` to get the single run's order).
COLUMNS = ["pair", "answer", "length", "depth", "measure", "direction", "kind", "seed", "k",
           "heads", "ld_clean", "ld_cf", "ld", "value", "greedy_clean"]

#: What a row measures: ``"group"`` (heads patched together; ``value`` is the fraction moved),
#: ``"head"`` (one head patched clean->cf; ``value`` is its restored fraction), ``"dla"``
#: (``value`` is the head's direct logit attribution, in logits) and ``"none"`` (the unpatched
#: runs: ``greedy_clean`` of the counterfactual run for ``clean->cf``, of the clean run for
#: ``cf->clean``).
MEASURES = ("none", "group", "head", "dla")


def patch_samples(grid, tokenizer, n_pairs: int | None = None, *, seed: int = 0,
                  n_ctx: int | None = None) -> list[Sample]:
    """``n_pairs`` prompts of ``grid`` drawn at random (``seed``), so that even a few pairs
    spread over its needles, lengths and depths; all of them (shuffled) when ``n_pairs`` is
    ``None``."""
    samples = grid.samples(tokenizer, n_ctx)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [samples[i] for i in order[: len(samples) if n_pairs is None else n_pairs]]


def pair_rows(model, run: PairRun, groups: Mapping[tuple[str, int, int], Sequence[Head]], *,
              heads: bool = True, dla: bool = True, batch_size: int = 8) -> list[dict]:
    """Every measure of one pair as CSV rows (without the pair's columns)."""
    from .attribution import direct_logit_attribution

    base = {"ld_clean": run.ld["clean"], "ld_cf": run.ld["cf"]}
    rows = [{**base, "measure": "none", "direction": "clean->cf", "kind": "none", "seed": -1,
             "k": 0, "heads": "", "ld": run.ld["cf"], "value": 0.0,
             "greedy_clean": run.greedy["cf"]},
            {**base, "measure": "none", "direction": "cf->clean", "kind": "none", "seed": -1,
             "k": 0, "heads": "", "ld": run.ld["clean"], "value": 0.0,
             "greedy_clean": run.greedy["clean"]}]
    named = {f"{kind}|{k}|{seed}": hs for (kind, k, seed), hs in groups.items()}
    for direction in DIRECTIONS:
        res = patch_groups(model, run, named, direction, batch_size=batch_size)
        for name, r in res.items():
            kind, k, seed = name.split("|")
            rows.append({**base, "measure": "group", "direction": direction, "kind": kind,
                         "seed": int(seed), "k": int(k), "heads": head_names(named[name]),
                         "ld": r.ld, "value": r.fraction, "greedy_clean": r.greedy_clean})
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = [head_name(l, h) for l in range(n_layers) for h in range(n_heads)]
    if heads:
        restored = patch_heads(model, run, batch_size=max(batch_size, n_heads)).restored
        rows += [{**base, "measure": "head", "direction": "clean->cf", "kind": "head",
                  "seed": -1, "k": 1, "heads": n, "ld": None, "value": float(v),
                  "greedy_clean": None} for n, v in zip(names, restored.flatten().tolist())]
    if dla:
        d = direct_logit_attribution(model, run)
        rows += [{**base, "measure": "dla", "direction": "", "kind": "head", "seed": -1, "k": 1,
                  "heads": n, "ld": None, "value": float(v), "greedy_clean": None}
                 for n, v in zip(names, d.flatten().tolist())]
    return rows


def patch_sweep(model, samples: Sequence[Sample], scores: torch.Tensor, ks: Sequence[int],
                seeds: Sequence[int] = (0, 1, 2), *, threshold: float = 0.1,
                index: Sequence[int] | None = None, out=None, heads: bool = True,
                dla: bool = True, force_answer: bool = False, max_new_tokens: int = 32,
                positions: Positions = "decode", batch_size: int = 8, progress: bool = True):
    """Group patching over the K grid (top-K against controls, both directions), the per-head
    map and direct logit attribution, on every pair of ``samples`` the model answers.

    Args:
        samples: the clean prompts (:func:`patch_samples`); a sample the model does not answer
            with its needle is skipped (and logged).
        scores: ``[n_layers, n_heads]`` score map that ranks the heads.
        ks: group sizes (0 is the unpatched reference, always written).
        seeds: control draws per K (:func:`control_groups`).
        index: each sample's number in the whole run (the ``pair`` column; default
            ``0..n-1``): a shard passes the numbers of its samples.
        out: CSV path, rewritten atomically after every pair; ``<out>.samples.jsonl`` lets a
            rerun resume.
        force_answer: teacher-force the needle's answer right after the prompt
            (:func:`make_pair`), for random-weight models.
        positions: where the patches act (:data:`Positions`).

    Returns:
        a DataFrame with :data:`COLUMNS` (the run's skipped samples in ``.attrs["skipped"]``).
    """
    import pandas as pd

    from ..run.results import atomic_write_text
    from ..run.samplelog import SampleLog, model_identity, tensor_digest

    ks = sorted({int(k) for k in ks if int(k) > 0})
    groups = control_groups(scores, ks, seeds, threshold=threshold) if ks else {}
    index = list(range(len(samples))) if index is None else list(index)
    settings = {**model_identity(model), "scores": tensor_digest(scores), "ks": ks,
                "seeds": list(seeds), "threshold": threshold, "heads": heads, "dla": dla,
                "force_answer": force_answer, "max_new_tokens": max_new_tokens,
                "positions": positions}
    log = SampleLog(f"{out}.samples.jsonl", settings, required=("rows",)) if out else None
    if log is not None:
        log.check_keys(s.key for s in samples)
    rows, skipped = [], []
    for i, sample in zip(index, tqdm(samples, desc="patching", unit="pair", disable=not progress)):
        if log is not None and sample.key in log:
            rec = log.records[sample.key]
        else:
            rec = {"key": sample.key, "needle": sample.needle.text, "length": sample.length,
                   "depth": sample.depth, "rows": [], "skipped": ""}
            try:
                pair = make_pair(model, sample, max_new_tokens=max_new_tokens,
                                 force_answer=force_answer)
                run = run_pair(model, pair, positions=positions)
                rec["rows"] = pair_rows(model, run, groups, heads=heads, dla=dla,
                                        batch_size=batch_size)
            except NoAnswerError as err:
                rec["skipped"] = str(err)
            if log is not None:
                log.add(rec)
        if rec["skipped"]:
            skipped.append(rec["skipped"])
        rows += [{"pair": i, "answer": sample.needle.answer, "length": sample.length,
                  "depth": sample.depth, **r} for r in rec["rows"]]
        if out:
            atomic_write_text(out, pd.DataFrame(rows, columns=COLUMNS).to_csv(
                index=False, float_format="%.6g"))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["skipped"] = skipped
    return df


# --------------------------------------------------------------------------- intervals


def bootstrap_ci(values, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 stat=None) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``stat`` (default the mean) of ``values`` (one per pair,
    first axis) and its percentile bootstrap interval over pairs resampled with ``seed``.

    >>> est, lo, hi = bootstrap_ci([0.0, 1.0, 1.0, 1.0])
    >>> est, lo <= est <= hi
    (0.75, True)
    """
    import numpy as np

    v = np.asarray(values, dtype=float)
    stat = stat or (lambda x: float(np.mean(x, axis=0)))
    if len(v) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    draws = [stat(v[rng.integers(0, len(v), len(v))]) for _ in range(n_boot)]
    a = (1 - level) / 2
    return float(stat(v)), float(np.quantile(draws, a)), float(np.quantile(draws, 1 - a))


def group_summary(df, *, n_boot: int = 1000, seed: int = 0):
    """Per direction, kind (``top``/``control``) and K: mean fraction moved and greedy
    clean-answer rate over pairs, each with a bootstrap interval over pairs (controls are first
    averaged over their seeds within each pair). ``k = 0`` is the unpatched run."""
    import pandas as pd

    g = df[df.measure.isin(["group", "none"])]
    per_pair = (g.assign(greedy=g.greedy_clean.astype(float))
                .groupby(["direction", "kind", "k", "pair"])[["value", "greedy"]].mean()
                .reset_index())
    out = []
    for (direction, kind, k), part in per_pair.groupby(["direction", "kind", "k"]):
        f = bootstrap_ci(part.value, n_boot=n_boot, seed=seed)
        r = bootstrap_ci(part.greedy, n_boot=n_boot, seed=seed)
        out.append({"direction": direction, "kind": kind, "k": k, "pairs": len(part),
                    "fraction": f[0], "fraction_lo": f[1], "fraction_hi": f[2],
                    "greedy_clean": r[0], "greedy_lo": r[1], "greedy_hi": r[2]})
    return pd.DataFrame(out).sort_values(["direction", "k", "kind"], ascending=[False, True, False],
                                         ignore_index=True)


def pair_maps(df, measure: str = "head") -> tuple[torch.Tensor, list[int]]:
    """``[n_pairs, n_layers, n_heads]`` per-head values of ``measure`` (``"head"`` or
    ``"dla"``) and the pairs' numbers."""
    from ..score.heads import parse_head

    part = df[df.measure == measure]
    if part.empty:
        raise ValueError(f"The run has no {measure!r} rows.")
    hs = [parse_head(h) for h in part.heads.unique()]
    n_layers, n_heads = max(l for l, _ in hs) + 1, max(h for _, h in hs) + 1
    pairs = sorted(part.pair.unique().tolist())
    maps = torch.zeros(len(pairs), n_layers, n_heads, dtype=torch.float64)
    where = {p: i for i, p in enumerate(pairs)}
    for p, h, v in zip(part.pair, part.heads, part.value):
        l, hh = parse_head(h)
        maps[where[p], l, hh] = v
    return maps, pairs


def map_correlation(maps: torch.Tensor, other: torch.Tensor, *, n_boot: int = 1000,
                    n_null: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman correlation of the mean of ``maps`` (``[n_pairs, L, H]``) with ``other``: a
    fixed ``[L, H]`` map (e.g. the scores) or per-pair maps ``[n_pairs, L, H]`` (e.g. DLA,
    resampled together with ``maps``).

    Returns ``spearman``, its percentile bootstrap interval over pairs (``lo``, ``hi``), and
    the head-shuffle null (the heads of ``other`` permuted at random, ``n_null`` times):
    ``null_hi`` (its ``level`` quantile) and ``p`` (share of shuffles at least as high).
    """
    import numpy as np

    paired = other.ndim == 3
    ref = other.mean(0) if paired else other
    rho = spearman(maps.mean(0), ref)
    rng = np.random.default_rng(seed)
    n = maps.shape[0]
    boots = []
    for _ in range(n_boot):
        idx = torch.as_tensor(rng.integers(0, n, n))
        boots.append(spearman(maps[idx].mean(0), other[idx].mean(0) if paired else other))
    a = (1 - level) / 2
    flat = ref.flatten()
    null = np.array([spearman(maps.mean(0), flat[torch.as_tensor(rng.permutation(flat.numel()))]
                              .reshape(ref.shape)) for _ in range(n_null)])
    return {"spearman": rho, "lo": float(np.quantile(boots, a)),
            "hi": float(np.quantile(boots, 1 - a)), "null_hi": float(np.quantile(null, level)),
            "p": float((np.sum(null >= rho) + 1) / (n_null + 1)), "pairs": n}


def plot_group_patching(summary, title: str | None = None, n_heads_total: int | None = None):
    """K curves of the fraction moved (with intervals): top-K against controls, one panel per
    direction."""
    import pandas as pd

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    labels = {"clean->cf": "clean → counterfactual: restored", "cf->clean":
              "counterfactual → clean: destroyed"}
    for ax, direction in zip(axes, DIRECTIONS):
        part = summary[summary.direction == direction]
        zero = part[part.kind == "none"]
        for kind, color in (("top", "C3"), ("control", "C0")):
            p = pd.concat([zero, part[part.kind == kind]]).sort_values("k")
            ax.plot(p.k, p.fraction, "o-", color=color,
                    label="top-K retrieval heads" if kind == "top" else "K control heads")
            ax.fill_between(p.k, p.fraction_lo, p.fraction_hi, color=color, alpha=0.2)
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("K (heads patched)" + (f" of {n_heads_total}" if n_heads_total else ""))
        ax.set_title(labels[direction], fontsize=10)
    axes[0].set_ylabel("fraction of the logit difference")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- comparison


def compare_maps(patch: torch.Tensor, scores: torch.Tensor, ks: Sequence[int] = (5, 10, 20)) -> dict:
    """Spearman correlation and top-K overlaps of the patching map with the score map
    (:func:`rhlens.compare.spearman`, :func:`rhlens.compare.top_k_overlap`).

    >>> compare_maps(torch.tensor([[3., 2.], [1., 0.]]), torch.tensor([[3., 0.], [2., 1.]]), (2,))
    {'spearman': 0.4, 'top2_overlap': 0.5}
    """
    out = {"spearman": spearman(patch, scores)}
    for k in ks:
        out[f"top{k}_overlap"] = top_k_overlap(patch, scores, k)
    return out


def plot_patching(patch: torch.Tensor, scores: torch.Tensor | None = None, title: str | None = None):
    """Layer x head map of the restored fraction and, with ``scores``, a scatter of the two."""
    ncols = 2 if scores is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 + 4.5 * (ncols - 1), max(4, 0.18 * patch.shape[0] + 1.5)),
                             squeeze=False)
    ax = axes[0, 0]
    lim = max(float(patch.abs().max()), 1e-6)
    im = ax.imshow(patch.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower", aspect="auto")
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title("logit difference restored by patching")
    plt.colorbar(im, ax=ax)
    if scores is not None:
        ax = axes[0, 1]
        ax.scatter(scores.flatten(), patch.flatten(), s=10, alpha=0.6)
        for l, h in top_heads(scores, min(5, scores.numel())):
            ax.annotate(head_name(l, h), (float(scores[l, h]), float(patch[l, h])), fontsize=7)
        k = min(10, scores.numel())
        c = compare_maps(patch, scores, (k,))
        ax.set_xlabel("retrieval score")
        ax.set_ylabel("restored fraction")
        ax.set_title(f"Spearman {c['spearman']:.2f}, top-{k} overlap {c[f'top{k}_overlap']:.0%}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
