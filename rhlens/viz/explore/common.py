"""What every explorer shares: the static fallback a built book page needs."""

from __future__ import annotations

import importlib.util
import os

import matplotlib.pyplot as plt

STATIC_ENV = "RHLENS_STATIC"
SINK = 4  # the first tokens, where heads park attention when they find nothing (attention sink)


def use_static(static: bool | None = None) -> bool:
    """Whether explorers should return static figures.

    ``static`` wins when given; otherwise static when ``RHLENS_STATIC`` is set to anything
    but ``""``/``"0"`` or when ipywidgets is not installed.
    """
    if static is not None:
        return bool(static)
    if os.environ.get(STATIC_ENV, "") not in ("", "0"):
        return True
    return importlib.util.find_spec("ipywidgets") is None


def static_figure(fig):
    """Close ``fig`` (so Jupyter does not show it twice) and return it for display."""
    plt.close(fig)
    return fig
