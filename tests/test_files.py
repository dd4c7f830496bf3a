"""Bounded local reads (:mod:`rhlens.files`): only regular files, never past a size cap."""

from __future__ import annotations

import os

import pytest

from rhlens.errors import UsageError
from rhlens.files import MAX_BYTES, open_regular, read_bytes


def test_reads_a_regular_file_through_a_symlink(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "a.txt")
    assert read_bytes(tmp_path / "link") == b"abc"
    with open_regular(tmp_path / "a.txt") as f:
        assert f.read() == b"abc"


@pytest.mark.parametrize("target, kind", [("/dev/zero", "a character device"),
                                          ("/dev/null", "a character device"),
                                          ("fifo", "a FIFO"), ("folder", "a folder")])
def test_refuses_what_is_not_a_regular_file(tmp_path, target, kind):
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")  # nobody writes to it: reading it would block for ever
    elif target == "folder":
        (tmp_path / "folder").mkdir()
    path = tmp_path / target if not target.startswith("/") else target
    (tmp_path / "link").symlink_to(path)
    for p in (path, tmp_path / "link"):
        with pytest.raises(UsageError, match=f"Score file .* is {kind}.*, not a regular file"):
            read_bytes(p, "Score file")


def test_size_cap(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:  # sparse: no disk space used
        f.truncate(MAX_BYTES + 1)
    with pytest.raises(UsageError, match="over 64 MiB, the most rhlens reads"):
        read_bytes(big, "Score file")
    (tmp_path / "small").write_bytes(b"x" * 11)
    with pytest.raises(UsageError, match="over"):
        read_bytes(tmp_path / "small", limit=10)
    assert read_bytes(tmp_path / "small", limit=11) == b"x" * 11


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Needle file .* does not exist"):
        read_bytes(tmp_path / "nope.json", "Needle file")
