"""What a head writes to a token's logit: the direct-logit formula, in one place.

Through the final norm with its *scale frozen* at the value of the run (as TransformerLens does
with ``cache.apply_ln_to_stack``), the logits are linear in the residual stream, so a head's
output ``z`` (``hook_z``) contributes ``(z @ W_O) / scale * (w_norm ⊙ u)`` to the logit along
an unembedding direction ``u``. Two readings use it:

* direct logit attribution (:mod:`rhlens.intervene.attribution`): ``u`` is the difference of
  the clean and counterfactual answer tokens' unembeddings, ``z`` the head's output;
* the ``logit_contribution`` detector (:mod:`rhlens.score.detectors`): ``u`` is the answer
  token's unembedding, ``z`` the attention-weighted values of some key positions only.

>>> z = torch.ones(1, 1, 2); w_o = torch.eye(2)[None]; d = torch.tensor([[3.0, -1.0]])
>>> head_dla(z, w_o, torch.tensor([2.0]), d)
tensor([1.])
"""

from __future__ import annotations

import torch


def final_norm_weight(model) -> torch.Tensor | None:
    """The final norm's elementwise weight ``[d_model]`` (``None`` when it has none)."""
    for name, p in model.ln_final.named_parameters():
        if name.endswith("weight") or name in ("w", "weight"):
            return p.detach()
    return None


def centres_output(model) -> bool:
    """Whether the final norm is a LayerNorm, which centres what each head writes (RMSNorm,
    every model rhlens loads, does not)."""
    return str(getattr(model.cfg, "normalization_type", "RMS") or "RMS").startswith("LN")


def head_dla(z: torch.Tensor, w_o: torch.Tensor, scale: torch.Tensor,
             direction: torch.Tensor) -> torch.Tensor:
    """Direct logit attribution of heads, the formula alone.

    Args:
        z: ``[m, n_heads, d_head]`` head outputs (``hook_z``) at the ``m`` answer positions.
        w_o: ``[n_heads, d_head, d_model]`` output matrices.
        scale: ``[m]`` the final norm's scale at those positions (frozen from the run).
        direction: ``[m, d_model]`` per position, the unembedding direction (e.g.
            ``W_U[:, clean] - W_U[:, cf]``) times the final norm's weight.

    Returns:
        ``[n_heads]``: each head's mean direct contribution to the logit along ``direction``.

    >>> z = torch.ones(1, 1, 2); w_o = torch.eye(2)[None]; d = torch.tensor([[3.0, -1.0]])
    >>> head_dla(z, w_o, torch.tensor([2.0]), d)
    tensor([1.])
    """
    written = torch.einsum("mhd,hde->mhe", z, w_o)  # [m, n_heads, d_model]
    return (torch.einsum("mhe,me->mh", written, direction) / scale[:, None]).mean(0)
