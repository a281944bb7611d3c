"""The process's standard streams and early signals, set up before any command runs.

- Ctrl-C while the CLI's modules import: exit 130 with one line (no traceback).
- A closed stdout/stderr/stdin (``>&-``): the file descriptor is pointed at /dev/null so that no
  file opened later takes its number (llama.cpp's log or a model file would end up there);
  writing the product to a closed stdout is an error (exit 1), not silently dropped text; with
  stderr closed, warnings and errors are lost rather than sent to stdout.
- A reader that goes away (``| head``): exit quietly with 141, as a process killed by SIGPIPE.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
import threading

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`


def _quiet_interrupt(signum, frame) -> None:  # pragma: no cover - timing dependent
    try:
        os.write(2, b"error: interrupted\n")
    except OSError:
        pass
    os._exit(EXIT_INTERRUPTED)


def guard_startup() -> None:
    """Until ``release_startup``: Ctrl-C ends the process at once with exit code 130. Only in the
    ``mtprun`` program itself (console script or ``python -m mtprun``), not where the package is
    merely imported (tests, notebooks)."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program not in ("mtprun", "__main__.py"):
        return
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _quiet_interrupt)


def release_startup() -> None:
    """Give Ctrl-C back to Python (KeyboardInterrupt, handled by the error boundary)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _quiet_interrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class ClosedStdout(io.TextIOBase):
    """sys.stdout when file descriptor 1 was closed: writing fails with one clear error."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not s:
            return 0
        raise OSError(errno.EBADF, "standard output is closed: nothing can be written (remove '>&-' or redirect to a file)")

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("standard output is closed")


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def fix_std_streams() -> None:
    """Point closed descriptors 0-2 at /dev/null and give Python matching stream objects."""
    for fd in (0, 1, 2):
        if _fd_open(fd):
            continue
        try:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        except OSError:
            continue
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if fd == 0:
            sys.stdin = None  # type: ignore[assignment]  # read_prompt reports "stdin is closed"
        elif fd == 1:
            sys.stdout = ClosedStdout()
        else:
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    if sys.stdout is None:
        sys.stdout = ClosedStdout()
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115


def silence_stdout() -> None:
    """After a broken pipe or a failed write: drop what is still buffered so the exit is quiet."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass
    try:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    except OSError:
        pass


def stdout_is_devnull() -> bool:
    try:
        return os.path.samestat(os.fstat(1), os.stat(os.devnull))
    except OSError:
        return False
