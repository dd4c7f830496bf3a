#!/usr/bin/env python
"""Point every install line and Colab badge at the repository where rhlens is published.

The one source of truth is ``repository.url`` (and ``repository.branch``) in ``_config.yml``:
the book's launch buttons read it, and this script copies it into the chapters' set-up cells
(``git+URL``), their *Open in Colab* badges, the exercise notebooks, the README and the intro.
``tests/book/test_book.py`` fails when any of them disagrees with ``_config.yml``.

    python scripts/set_repository.py https://github.com/me/rhlens     # publish under a new URL
    python scripts/set_repository.py --branch dev                     # another branch
    python scripts/set_repository.py --check                          # list what disagrees
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "_config.yml"
INSTALL = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+?(?=[\"'\s\\)]|$)")
BADGE = re.compile(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/([\w.-]+)/")
_URL = re.compile(r"^(\s*url:\s*)(\S+)\s*$", re.M)
_BRANCH = re.compile(r"^(\s*branch:\s*)(\S+)\s*$", re.M)


def files() -> list[Path]:
    """Every file that names the install source or opens a notebook on Colab."""
    out = sorted((ROOT / "notebooks").glob("*.ipynb"))
    out += sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb"))
    return out + [ROOT / "README.md", ROOT / "book" / "intro.md"]


def repository() -> tuple[str, str]:
    """``(url, branch)`` from ``_config.yml``."""
    text = CONFIG.read_text()
    block = text[text.index("repository:"):]
    return _URL.search(block).group(2), _BRANCH.search(block).group(2)


def expected(url: str, branch: str) -> tuple[str, str]:
    slug = url.rstrip("/").removesuffix(".git").split("github.com/")[-1]
    return f"git+{url.rstrip('/')}", f"colab.research.google.com/github/{slug}/blob/{branch}/"


def disagreements() -> list[str]:
    """``file: found (expected ...)`` for every install line or badge off ``_config.yml``."""
    install, badge = expected(*repository())
    bad = []
    for path in files():
        if not path.exists():
            continue
        text = path.read_text()
        for found in INSTALL.findall(text):
            if found != install:
                bad.append(f"{path.relative_to(ROOT)}: {found} (expected {install})")
        for m in BADGE.finditer(text):
            if m.group(0) != badge:
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)} (expected {badge})")
    return bad


def rewrite(url: str | None, branch: str | None) -> list[Path]:
    text = CONFIG.read_text()
    head, block = text[:text.index("repository:")], text[text.index("repository:"):]
    if url:
        block = _URL.sub(lambda m: m.group(1) + url, block, count=1)
    if branch:
        block = _BRANCH.sub(lambda m: m.group(1) + branch, block, count=1)
    CONFIG.write_text(head + block)
    install, badge = expected(*repository())
    changed = []
    for path in files():
        if not path.exists():
            continue
        old = path.read_text()
        new = BADGE.sub(badge, INSTALL.sub(install, old))
        if new != old:
            path.write_text(new)
            changed.append(path)
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", nargs="?", help="https://github.com/OWNER/REPO (default: keep _config.yml's)")
    p.add_argument("--branch", help="branch the badges open (default: keep _config.yml's)")
    p.add_argument("--check", action="store_true", help="only list what disagrees with _config.yml")
    args = p.parse_args(argv)
    if args.check:
        bad = disagreements()
        print("\n".join(bad) or "every install line and badge agrees with _config.yml")
        return 1 if bad else 0
    if args.url and not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", args.url.rstrip("/")):
        print(f"error: {args.url!r} is not https://github.com/OWNER/REPO", file=sys.stderr)
        return 2
    for path in rewrite(args.url, args.branch):
        print("updated", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
