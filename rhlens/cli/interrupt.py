"""Ctrl-C stops a command, even when a library swallows it.

Python turns Ctrl-C into a ``KeyboardInterrupt`` raised wherever the command happens to be. While
the command starts (``torch``, ``transformers`` and the model load, seconds of imports) that can
be inside a library's ``try: ... except BaseException`` (or a bare ``except:``), which swallows
it, and the run then goes on as if nothing was pressed. :func:`handling` installs a handler that
also records the press, and :func:`check` (called once the model has loaded, before any sample)
raises it again; the command then stops with its one line and exit code 130.

>>> with handling():
...     check()                      # nothing pressed: nothing happens
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_pressed = threading.Event()


def _on_sigint(signum, frame):
    _pressed.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Within the block, Ctrl-C raises ``KeyboardInterrupt`` (as Python's own handler does) and
    is remembered for :func:`check`; the previous handler is back afterwards. Outside the main
    thread (where no handler can be installed) it does nothing."""
    _pressed.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _pressed.clear()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed and something swallowed it."""
    if _pressed.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def ignored() -> Iterator[None]:
    """Within the block, a further Ctrl-C is ignored: the command is already stopping (its
    one line and its exit code are not cut short). Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
