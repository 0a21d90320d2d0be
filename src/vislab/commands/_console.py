"""How the ``vislab`` command line answers: exit codes, one-line errors, and stdout that may close early.

Exit codes: 0 done, 1 an internal error (a bug: traceback, then a line asking for a report), 2 bad input
(one line), 3 training diverged (one line), 130 interrupted (a resume hint), 141 stdout closed by its
reader (``| head``), only after the command's files are complete.

Standard library only: ``vislab --help`` imports this.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe

BUG_REPORT = ("vislab: internal error: this is a bug in vislab, not a problem with your input; please report it "
              "with the traceback above and the command you ran")
_OS_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EEXIST: "it already exists (as a file where a folder is needed, or the other way round)",
    errno.EISDIR: "it is a folder, where a file is needed",
    errno.ENOTDIR: "a part of the path is a file, where a folder is needed",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EMFILE: "too many open files",
}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError``: the path(s) it names and why, in words."""
    reason = _OS_REASONS.get(exc.errno or -1) or (exc.strerror or first_line(exc)).strip()
    if exc.filename is None:
        return f"{reason} ({first_line(exc)})" if exc.strerror else first_line(exc)
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"cannot use {where}: {reason}"


def stdout_to_devnull() -> None:
    """Point the process's stdout at /dev/null, so that the flush at exit does not fail again on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (captured in tests): nothing to protect
        pass


class LineWriter:
    """Result lines on stdout for a command that goes on working after the first line: when the reader goes away
    (``BrokenPipeError``) the printing stops, the work and its files go on, and :meth:`exit_code` says 141."""

    def __init__(self) -> None:
        self.broken = False

    def __call__(self, text: str) -> None:
        if self.broken:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            self.broken = True
            stdout_to_devnull()

    def exit_code(self, code: int = EXIT_OK) -> int:
        return EXIT_BROKEN_PIPE if self.broken and code == EXIT_OK else code


def parse_args_one_line(parser: argparse.ArgumentParser,
                        argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]] | int:
    """``parser.parse_known_args(argv)``, with argparse's usage block + error turned into one line on stderr;
    returns the exit code instead of the namespace then. ``--help`` prints as usual (and exits 0)."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return parser.parse_known_args(list(argv))
    except SystemExit as exc:
        if exc.code in (0, None):
            sys.stderr.write(buf.getvalue())
            raise
        print(argparse_line(buf.getvalue(), parser.prog), file=sys.stderr)
        return EXIT_USAGE


def argparse_line(text: str, prog: str) -> str:
    """``vislab: error: MESSAGE (see `PROG -h`)`` from argparse's usage block and error line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    line = next((entry for entry in reversed(lines) if ": error: " in entry), lines[-1] if lines else "")
    where, _, msg = line.partition(": error: ")
    if not msg:
        where, msg = prog, line or "invalid arguments"
    return f"vislab: error: {msg} (see `{where.strip() or prog} -h`)"


def guard(fn: Callable[[], Any], *, debug: bool | None = None) -> int:
    """Run a command and turn what it raises into an exit code and at most one line on stderr (module docstring).

    ``UserError`` (and :class:`~vislab.io.images.ImageReadError`, one of them), the ``OSError`` family and
    ``TrainingDiverged`` are expected faults; anything else is a bug and keeps its traceback. ``VISLAB_DEBUG=1``
    re-raises every fault with its traceback.
    """
    from vislab.errors import UserError

    diverged: tuple[type[BaseException], ...] = ()
    try:
        from vislab.errors import TrainingDiverged

        diverged = (TrainingDiverged,)
    except ImportError:  # pragma: no cover - an errors module without it
        pass
    debug = bool(os.environ.get("VISLAB_DEBUG")) if debug is None else debug
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print("vislab: interrupted (resume a run with --resume and the same --out)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`vislab list | head`): stop quietly, as other command-line tools do
        stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except diverged as exc:
        if debug:
            raise
        print(f"vislab: training diverged: {first_line(exc)}", file=sys.stderr)
        return EXIT_DIVERGED
    except UserError as exc:
        if debug:
            raise
        print(f"vislab: error: {first_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if debug:
            raise
        print(f"vislab: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        import traceback

        traceback.print_exc()
        print(BUG_REPORT, file=sys.stderr)
        return EXIT_BUG
