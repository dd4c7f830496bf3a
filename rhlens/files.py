"""Bounded local reads: every file rhlens reads (a haystack, a needle file, a score file, a
sample log) is read through here, so that a FIFO nobody writes to, a device such as
``/dev/zero`` or a file far too large is refused in one line instead of hanging the run or
filling the memory.

Only regular files are read (symlinks are followed to what they name), and never more than
``limit`` bytes: :data:`MAX_BYTES` (64 MiB, as for a score file fetched from a URL) unless the
caller says otherwise (a sample log may hold up to :data:`MAX_LOG_BYTES`).

>>> import tempfile, os
>>> with tempfile.NamedTemporaryFile(delete=False) as f:
...     _ = f.write(b"abc")
>>> read_bytes(f.name)
b'abc'
>>> read_bytes("/dev/zero", "Needle file")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
rhlens.errors.UsageError: Needle file /dev/zero is a character device, not a regular file; ...
>>> os.unlink(f.name)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import UsageError

#: The most bytes read from one input file (a haystack, a needle file, a score file).
MAX_BYTES = 64 * 2**20
#: The most bytes read from one sample log (a long sweep's log is much larger than its inputs).
MAX_LOG_BYTES = 2**30


def kind_of(mode: int) -> str:
    """What a file of ``mode`` (``os.stat(...).st_mode``) is, in words, for an error."""
    for test, words in [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")]:
        if test(mode):
            return words
    return "not a regular file"


def _size_words(n: int) -> str:
    if n % 2**30 == 0:
        return f"{n // 2**30} GiB"
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n} bytes"


def _refuse_irregular(path: str | Path, what: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what} {path} is {kind_of(mode)}, not a regular file; pass a file "
                         "saved on disk.")


@contextmanager
def open_regular(path: str | Path, what: str = "File",
                 limit: int = MAX_BYTES) -> Iterator[BinaryIO]:
    """``path`` opened for binary reading, when it is a regular file of at most ``limit``
    bytes.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UsageError: it is a folder, a FIFO, a device or a socket, or larger than ``limit``.
    """
    try:
        st = os.stat(path)  # follows symlinks: what the path names is what is read
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist.") from None
    _refuse_irregular(path, what, st.st_mode)
    # O_NONBLOCK: should a FIFO take the file's place after the check, opening it does not
    # wait for a writer; fstat below then refuses it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    f = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        _refuse_irregular(path, what, st.st_mode)
        if st.st_size > limit:
            raise UsageError(f"{what} {path} is over {_size_words(limit)}, the most rhlens reads "
                             f"from one file ({st.st_size / 2**20:.0f} MiB); pass a smaller "
                             "file.")
        yield f
    finally:
        f.close()


def read_bytes(path: str | Path, what: str = "File", limit: int = MAX_BYTES) -> bytes:
    """The bytes of ``path`` (see :func:`open_regular`); never more than ``limit``, even should
    the file grow while it is read."""
    with open_regular(path, what, limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what} {path} grew over {_size_words(limit)} while it was read; "
                         "pass a file that is not being written.")
    return data
