"""TransformerLens hook names, from the one place that builds them.

Every hook rhlens attaches (the argmax recorder, masks, patches, the compressed KV cache) is
named by TransformerLens's own ``get_act_name``, so no module types ``blocks.{l}.attn.hook_*``
by hand:

>>> act_name("pattern", 17), act_name("z", 3), act_name("scale")
('blocks.17.attn.hook_pattern', 'blocks.3.attn.hook_z', 'ln_final.hook_scale')
>>> every_layer("z")("blocks.5.attn.hook_z"), every_layer("z")("blocks.5.attn.hook_q")
(True, False)
>>> layer_of("blocks.12.attn.hook_attn_scores")
12
"""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.lru_cache(maxsize=1)
def _get_act_name() -> Callable[..., str]:
    # Imported when a first hook is named, not with rhlens: importing TransformerLens takes
    # seconds, which the command line's usage errors and `import rhlens` should not wait for.
    from transformer_lens.utilities import get_act_name

    return get_act_name


def act_name(name: str, layer: int | None = None) -> str:
    """The TransformerLens hook name of activation ``name`` (``"pattern"``, ``"attn_scores"``,
    ``"z"``, ``"scale"``...) in ``layer`` (``None``: outside the blocks, e.g. ``ln_final``)."""
    return _get_act_name()(name, layer)


def every_layer(name: str) -> Callable[[str], bool]:
    """A hook-name filter that matches activation ``name`` in every layer (for
    ``run_with_cache(names_filter=...)`` and ``(filter, fn)`` hooks)."""
    suffix = act_name(name, 0).split(".", 2)[2]  # e.g. "attn.hook_z"
    return lambda hook_name: hook_name.startswith("blocks.") and hook_name.endswith("." + suffix)


def module_hooked(module, idle: frozenset[int] = frozenset()) -> bool:
    """Whether a PyTorch hook sits on ``module`` itself (TransformerLens attaches its hooks to
    hook points as these), the forward pre-hooks whose handle ids are in ``idle`` aside."""
    pre = module._forward_pre_hooks
    return bool(module._forward_hooks or (pre and (not idle or set(pre) - idle))
                or module._backward_hooks or getattr(module, "_backward_pre_hooks", None))


def layer_of(hook_name: str) -> int:
    """The layer of a block's hook name (``blocks.12.attn.hook_z`` -> 12)."""
    return int(hook_name.split(".")[1])
