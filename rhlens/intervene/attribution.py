"""Direct logit attribution: how much of the answer's logit each head writes straight to the
output.

The final residual stream is a sum of components (embeddings, each head's output, each MLP).
Through the final norm with its *scale frozen* at the value of the run (as TransformerLens does
with ``cache.apply_ln_to_stack``), the logits are linear in that sum, so each head gets its
share: head ``(l, h)`` at position ``t`` writes ``z[t, h] @ W_O[h]`` (``hook_z`` times the
output matrix) and contributes

    DLA[l, h] = (z[t, h] @ W_O[h]) / scale[t] * w_norm @ (W_U[:, clean_t] - W_U[:, cf_t])

to the logit *difference* between the clean answer token and the counterfactual one (the
same metric as :mod:`rhlens.intervene.patch`), averaged over the answer tokens ``t``, in the clean
run (the formula alone: :func:`rhlens.score.logit.head_dla`). A head that copies the needle
straight to the output has a large DLA; a head that moves it through later layers (which then
write it) restores much by patching but has a small DLA.

Example::

    >>> run = run_pair(model, make_pair(model, sample))        # doctest: +SKIP
    >>> direct_logit_attribution(model, run).shape              # doctest: +SKIP
    torch.Size([30, 9])
"""

from __future__ import annotations

import torch

from ..score.logit import centres_output, final_norm_weight, head_dla
from .patch import PairRun


@torch.no_grad()
def direct_logit_attribution(model, run: PairRun) -> torch.Tensor:
    """``[n_layers, n_heads]`` direct contribution of each head to
    ``logit(clean answer token) - logit(counterfactual token)``, mean over the answer tokens.

    The final norm's scale is the clean run's (frozen), so the heads' shares plus those of
    the embeddings, the MLPs and the output biases add up to the clean run's logit difference
    (tested in ``tests/intervene/test_patching.py``). RMSNorm models (every model rhlens loads) are
    handled; a LayerNorm's centring is applied too.
    """
    if run.scale is None:
        raise ValueError("The run has no final-norm scale (ln_final.hook_scale); direct logit "
                         "attribution needs a model with a final norm.")
    pair = run.pair
    steps = pair.answer_steps - run.start  # z and scale start at the first patched position
    w_u = model.W_U  # [d_model, vocab]
    direction = (w_u[:, pair.clean_tokens.to(w_u.device)]
                 - w_u[:, pair.cf_tokens.to(w_u.device)]).T.float()  # [m, d_model]
    weight = final_norm_weight(model)
    if weight is not None:
        direction = direction * weight.float()[None]
    scale = run.scale[steps].to(direction)  # [m]
    centre = centres_output(model)
    out = []
    for layer, z in enumerate(run.z["clean"]):
        w_o = model.blocks[layer].attn.W_O.float()  # [n_heads, d_head, d_model]
        za = z[steps].to(w_o)  # [m, n_heads, d_head]
        if centre:  # a LayerNorm centres what each head writes
            w_o = w_o - w_o.mean(-1, keepdim=True)
        out.append(head_dla(za, w_o, scale.to(w_o), direction.to(w_o)).cpu())
    return torch.stack(out)
