"""How the command line reports failures: one ``structcore: error: ...`` line naming the file or option and
what to do; the Python traceback only with ``--debug`` (or ``STRUCTCORE_DEBUG=1``). Exit status 2 for
errors, 130 when interrupted; a command may return its own status (``predict --strict``: 1)."""

from __future__ import annotations

import errno
import os
import traceback
import warnings

from ..errors import StructcoreError

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another --out",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another --out",
    errno.EACCES: "permission denied: choose a place you can write to, or fix its permissions",
    errno.EPERM: "permission denied: choose a place you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another place",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENAMETOOLONG: "the name is too long",
}


def describe(e: BaseException) -> str:
    """One line for an exception: the library's own message, or what is known about the failure."""
    if isinstance(e, StructcoreError):
        text = str(e)
    elif isinstance(e, KeyError):
        text = str(e.args[0]) if e.args else "unknown key"
    elif isinstance(e, OSError):
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        hint = _OS_HINTS.get(e.errno, e.strerror or str(e))
        text = f"{where}: {hint}" if where else f"{hint} ({e})"
    elif isinstance(e, MemoryError):
        text = "out of memory: lower --batch-size, use a smaller --resize, or use a machine with more memory"
    elif isinstance(e, ValueError):
        text = str(e)
    else:
        text = (f"unexpected {type(e).__name__}: {e} (this is a bug in structcore or one of its libraries: "
                "rerun with --debug and report the traceback)")
    return " ".join(text.split()) or type(e).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"structcore: warning: {' '.join(str(message).split())}", file=_stream[0])


_stream = [None]


def run_command(args, stderr) -> int:
    """Validate and run a parsed command (``args.validate`` then ``args.func``); report errors on ``stderr``."""
    debug = getattr(args, "debug", False) or os.environ.get("STRUCTCORE_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():
        _stream[0] = stderr
        warnings.showwarning = _show_warning  # restored when the block ends
        try:
            if (validate := getattr(args, "validate", None)) is not None:
                validate(args)
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            if debug:
                traceback.print_exc()
            print("structcore: interrupted", file=stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - the one place every failure becomes a message
            if debug:
                traceback.print_exc()
            print(f"structcore: error: {describe(e)}", file=stderr)
            return 2
