"""Data shipped inside the package, reached through one function, so that a chapter opened alone
(on Colab, from an installed wheel, with no checkout beside it) finds what it loads.

* ``published_heads.json``: figures derived from the paper's seven published score files
  (:mod:`rhlens.analyze.published`);
* the book's precomputed runs (``ch04_*``, ``ch05_*``...), each made by the command given in
  this folder's ``README.md`` and beside the figure that shows it.

>>> path("published_heads.json").name
'published_heads.json'
>>> path("no-such-file.csv")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
FileNotFoundError: rhlens ships no data file 'no-such-file.csv'; it has: ...
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def names() -> list[str]:
    """Every data file the package ships (this module and the README left out)."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir()
                  if p.is_file() and not p.name.endswith((".py", ".pyc")) and p.name != "README.md")


def path(name: str) -> Path:
    """The path of the shipped data file ``name`` (e.g. ``"ch04_ksweep.csv"``).

    Raises:
        FileNotFoundError: naming the files there are, when ``name`` is not one of them.
    """
    file = resources.files(__name__).joinpath(name)
    if not file.is_file():
        raise FileNotFoundError(f"rhlens ships no data file {name!r}; it has: "
                                f"{', '.join(names())}.")
    return Path(str(file))
