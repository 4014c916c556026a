"""What every kasf command does with an error the user can fix: one line, the same exit codes.

Exit codes, the same for every CLI: 0 success, 2 bad input (a flag, a config value, a missing, unreadable or
corrupt file, a path that cannot be written), 130 interrupted with Ctrl-C (the shell's own convention). A command
may add its own codes above these (kasf-export: 3 when parity fails). Anything else is a bug in kasf and keeps its
traceback.
"""

from __future__ import annotations

import errno
import sys
from typing import TextIO

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _file_error_line(err: OSError) -> str:
    """One line for a file-system error: which file, what went wrong and what to do about it."""
    name = err.filename if err.filename is not None else "(unnamed file)"
    if isinstance(err, PermissionError):
        return f"{name}: permission denied; choose a place you may write to (or read from), or fix its permissions"
    if isinstance(err, FileExistsError):
        return f"{name}: a file is in the way of a folder on this path; choose another output path"
    if isinstance(err, NotADirectoryError):
        return f"{name}: part of this path is a file, not a folder; choose another output path"
    if isinstance(err, IsADirectoryError):
        return f"{name}: is a folder; give a file path"
    if isinstance(err, FileNotFoundError):
        return f"{name}: not found" if err.filename is not None else str(err)
    if err.errno == errno.ENOSPC:
        return f"{name}: no space left on the device; free some space or write elsewhere"
    if err.errno == errno.EROFS:
        return f"{name}: the file system is read-only; choose another output path"
    return f"{name}: {err.strerror or err}"


def error_line(err: BaseException) -> str:
    """The one line a user sees for ``err`` (without the program name)."""
    if isinstance(err, OSError) and (err.filename is not None or not err.args or isinstance(err.args[0], int)):
        return _file_error_line(err)
    return str(err) or type(err).__name__


def report_error(prog: str, err: BaseException, hint: str = "", stream: TextIO | None = None) -> int:
    """Print ``prog: error: ...`` (and ``hint``, if any) as one line and return the exit code for bad input."""
    print(f"{prog}: error: {error_line(err)}{hint}", file=stream or sys.stderr)
    return EXIT_BAD_INPUT


def report_interrupt(prog: str, what_was_kept: str, stream: TextIO | None = None) -> int:
    """Print the one line after Ctrl-C and return its exit code."""
    print(f"{prog}: interrupted; {what_was_kept}", file=stream or sys.stderr)
    return EXIT_INTERRUPTED
