"""Activation patching of head outputs between a clean and a counterfactual NIAH prompt.

The two prompts differ *only* in the needle's answer tokens (the counterfactual answer has
the same number of tokens, so every other position lines up). Both runs are teacher-forced
on the clean model's answer. At each answer token we measure the logit difference

    LD = logit(clean answer token) - logit(counterfactual answer token)

which is high in the clean run and low in the counterfactual run (the model copies the
needle it was given). Patching head outputs (``hook_z``, per query head)
from the clean run into the counterfactual run, at decode positions only (the prefill is
untouched, as the paper masks), restores

    restored = (LD_patched - LD_cf) / (LD_clean - LD_cf)

of the difference: about 1 when those heads alone carry the needle's content to the output.
The reverse (counterfactual outputs into the clean run) destroys
``(LD_clean - LD_patched) / (LD_clean - LD_cf)``.

* :func:`patch_heads`: each head alone (the per-head map);
* :func:`patch_groups`: groups of heads together, e.g. the top-K retrieval heads against K
  control heads (:func:`control_groups`), in either :data:`Direction`;
* :func:`~rhlens.intervene.patch_sweep.patch_sweep`: both over many pairs of a grid, with direct
  logit attribution (:mod:`rhlens.intervene.attribution`), into a resumable CSV (``rhlens patch``);
  :mod:`rhlens.analyze.patching` summarises it.

The pairs are built by :mod:`rhlens.intervene.pairs`; a patch is a ``"patch"``
:func:`~rhlens.intervene.edit.head_edit` of ``hook_z`` (one patched group per batch row).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..run.decode import EAGER_CHUNK, model_device, new_cache, prefill
from ..run.hooks import act_name, every_layer
from ..run.sdpa import attention_hooks_in_use, sdpa_attention
from ..score.heads import Head, as_heads, check_heads, heads_by_layer, top_heads
from .edit import head_edit, split_heads
from .mask import Mask
from .pairs import PatchPair


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
    scale: torch.Tensor | None
    caches: dict
    start: int = 0
    pre_greedy: dict[str, bool] = field(default_factory=dict)

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
    z_of, scale_name = every_layer("z"), act_name("scale")

    def want(name: str) -> bool:
        return z_of(name) or name == scale_name

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
        z[run] = [split_heads(act[act_name("z", l)], n_heads)[0] for l in range(n_layers)]
        ld[run] = float(_logit_diff(logits, pair, start)[0])
        greedy[run] = pre_greedy[run] and bool(_greedy_clean(logits, pair, start)[0])
        caches[run] = cache
        if run == "clean" and scale_name in act:
            scale = act[scale_name][0].reshape(rest.numel(), -1)[:, 0].cpu()
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
        hooks = [head_edit("patch", l, masks[l], n_heads=n_heads, value=source[l]) for l in layers]
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
    (:meth:`rhlens.intervene.mask.Mask.random` with ``same_layers=True``: in the retrieval heads'
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


