"""Activation patching of head outputs between a clean and a counterfactual NIAH prompt.

The two prompts differ *only* in the needle's answer tokens (the counterfactual answer has
the same number of tokens, so every other position lines up). Both runs are teacher-forced
on the clean model's answer. At each answer token we measure the logit difference

    LD = logit(clean answer token) - logit(counterfactual answer token)

which is high in the clean run and low in the counterfactual run (the model copies the
needle it was given). Patching one head's output (``blocks.{l}.attn.hook_z``, per query
head) from the clean run into the counterfactual run, at the decode positions only (the
prompt's last token and the answer), restores

    restored = (LD_patched - LD_cf) / (LD_clean - LD_cf)

of the difference: about 1 when that head alone carries the needle's content to the output.

Efficiency: the counterfactual prompt is prefilled once into a KV cache (patching at decode
positions cannot change it); then each layer's heads are patched in one batch (one batch row
per head), running only the few decode positions.

Example::

    >>> pair = make_pair(model, sample)                 # doctest: +SKIP
    >>> res = patch_heads(model, pair)                  # doctest: +SKIP
    >>> res.restored.shape                              # doctest: +SKIP
    torch.Size([30, 9])
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

from .ablation import split_heads
from .decode import greedy_decode, model_device, new_cache, prefill
from .heads import head_name, spearman, top_heads, top_k_overlap
from .prompts import Sample

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


def make_pair(model, sample: Sample, seed: int = 0, max_new_tokens: int = 32) -> PatchPair:
    """Build the counterfactual prompt of ``sample`` and the clean continuation.

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


def _logit_diff(logits: torch.Tensor, pair: PatchPair) -> torch.Tensor:
    """``logits``: ``[batch, s, vocab]`` at the decode positions -> ``[batch]`` mean LD."""
    at = logits[:, pair.answer_steps]  # [b, m, vocab]
    clean = at.gather(-1, pair.clean_tokens[None, :, None].expand(at.shape[0], -1, 1).to(at.device))
    cf = at.gather(-1, pair.cf_tokens[None, :, None].expand(at.shape[0], -1, 1).to(at.device))
    return (clean - cf)[..., 0].float().mean(-1).cpu()


@dataclass
class PatchResult:
    """Patching one pair: ``restored`` ``[n_layers, n_heads]``, and the two reference logit
    differences (``ld_clean`` should exceed ``ld_cf``)."""

    restored: torch.Tensor
    ld_clean: float
    ld_cf: float


@torch.no_grad()
def patch_heads(model, pair: PatchPair, chunk_size: int = 512) -> PatchResult:
    """Patch every query head's ``hook_z`` from the clean into the counterfactual run.

    Cost: two prefills of the prompt and ``n_layers`` batched forwards of the decode positions
    (batch = ``n_heads``).
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    device = model_device(model)
    suffix = torch.cat([pair.clean_ids[-1:], pair.continuation[:-1]]).to(device)  # decode inputs
    s = suffix.numel()

    clean_cache = new_cache(model)
    prefill(model, pair.clean_ids[:-1].to(device), clean_cache, chunk_size)
    logits, act = model.run_with_cache(suffix[None], past_key_values=clean_cache,
                                       names_filter=lambda n: n.endswith("attn.hook_z"))
    clean_z = [split_heads(act[f"blocks.{l}.attn.hook_z"], n_heads)[0] for l in range(n_layers)]
    ld_clean = float(_logit_diff(logits, pair)[0])
    del clean_cache, act

    cache = new_cache(model)
    prefill(model, pair.cf_ids[:-1].to(device), cache, chunk_size)
    logits, cache = model(suffix[None], return_type="logits_and_cache", past_key_values=cache)
    ld_cf = float(_logit_diff(logits, pair)[0])
    cache.crop(-s)
    cache.batch_repeat_interleave(n_heads)
    batch = suffix[None].expand(n_heads, -1)
    idx = torch.arange(n_heads)
    lds = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        def put(z, hook, layer=layer):
            zz = split_heads(z, n_heads).clone()  # [head (batch row), s, head, d]
            zz[idx, :, idx] = clean_z[layer].transpose(0, 1).to(zz.dtype)
            return zz.reshape(z.shape)

        with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", put)]):
            logits, cache = model(batch, return_type="logits_and_cache", past_key_values=cache)
        lds[layer] = _logit_diff(logits, pair)
        cache.crop(-s)
    denom = ld_clean - ld_cf
    if abs(denom) < 1e-6:
        raise ValueError("The clean and counterfactual runs give the same logit difference; "
                         "the needle does not change the answer, so patching measures nothing.")
    return PatchResult(restored=(lds - ld_cf) / denom, ld_clean=ld_clean, ld_cf=ld_cf)


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
