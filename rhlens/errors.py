"""The two kinds of failure rhlens reports, and the exit codes the command line gives them.

* :class:`UsageError` (a ``ValueError``): an argument or an input file is wrong; running
  again unchanged fails again. Exit code 2.
* :class:`RunError` (a ``RuntimeError``): the inputs are fine but the run could not finish
  (a download failed, nothing passed the ROUGE gate, the disk is full). Exit code 1. A
  failed download is a :class:`FetchError`, also an ``OSError``; a detection none of whose
  samples passed the ROUGE gate a :class:`NoPassingSampleError`.

A library error names the *argument* it is about (``needles must be at least 1``); the
command line turns it into the flag (``--needles must be at least 1``).

>>> err = UsageError("needles must be at least 1, got -1.", arg="needles")
>>> isinstance(err, ValueError), err.arg
(True, 'needles')
"""

from __future__ import annotations

#: Exit codes of the ``rhlens`` command.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The table printed by ``rhlens --help`` (and kept in the README).
EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    runtime failure: a server could not be reached, no sample passed the ROUGE
       gate, a file could not be written, or an internal error (RHLENS_TRACEBACK=1
       shows its traceback)
  2    usage error: a bad argument or input file (a score file URL answering 4xx
       too), or a resume that would mix two runs; checked before the model loads
       where possible, and nothing is written
  130  interrupted (Ctrl-C); finished samples are kept: rerun to resume"""


class UsageError(ValueError):
    """A bad argument or input. ``arg`` names the argument when there is one."""

    def __init__(self, message: str, arg: str | None = None):
        super().__init__(message)
        self.arg = arg


class RunError(RuntimeError):
    """The inputs were fine but the run failed (network, disk, nothing to score)."""


class FetchError(RunError, OSError):
    """A download failed (unreachable, too slow, a server error). Also an ``OSError``, as
    urllib's own errors are, so ``except OSError`` keeps catching an offline machine."""


class NoPassingSampleError(RunError):
    """No sample's answer passed the ROUGE gate, so there is no score to average."""
