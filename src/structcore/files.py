"""Writing files so that a reader never sees half of one: temp file beside, fsync, rename; one writer
of a file or folder at a time (:func:`exclusive`); fault points for kill tests (:func:`fault_point`).

One file-mode policy for everything structcore writes: ``0o666 & ~umask``, what ``open()`` would give
(``tempfile`` and safetensors would otherwise leave 0600 files).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError, LockedError


def _umask() -> int:
    """The process's umask. Read from /proc where it can be: setting it to read it back (the fallback)
    leaves a moment in which a file another thread creates gets mode 0666."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # the safe value in the meantime
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode the process's umask gives a new file."""
    return 0o666 & ~_umask()


def fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, new_file_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# -- one writer at a time ---------------------------------------------------------------------------
_held: dict[str, int] = {}  # lock files this process holds -> nesting depth (exclusive() is re-entrant)
_held_guard = threading.Lock()


def lock_path(target: str | Path) -> Path:
    """The lock file of ``target`` (a file or folder): ``.NAME.lock`` beside it, so that it survives the
    folder being swapped for a new one."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}.lock"


def _lock_holder(lock: Path) -> str:
    try:
        text = lock.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return "another process"
    return f"pid {text}" if text.isdigit() else "another process"


@contextmanager
def exclusive(target: str | Path, timeout: float | None = None, what: str = "writing",
              log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock of ``target`` (see :func:`lock_path`) while the block runs: one writer at a time.

    The lock is an ``flock`` on ``.NAME.lock`` beside ``target``, which holds the holder's pid; the kernel
    releases it when the holder exits, however it exits, so a killed writer never leaves a stale lock.
    ``timeout``: seconds to wait for another holder (``None``: wait as long as it takes, ``0``: not at all);
    then :class:`~structcore.errors.LockedError` names the holder. ``log`` gets one line when waiting starts.
    Re-entrant within a process (a job that holds the lock can call a writer that takes it again).
    """
    lock = lock_path(target)
    key = str(lock)
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield lock
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, new_file_mode())
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _lock_holder(lock)
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockedError(
                        f"{target} is being written by {holder} (lock {lock}); wait for it to finish, "
                        "or give a longer --lock-timeout"
                    ) from None
                if not told and log is not None:
                    log(f"{target} is being written by {holder}; waiting for it to finish ({what})")
                    told = True
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        with _held_guard:
            _held[key] = 1
        try:
            yield lock
        finally:
            with _held_guard:
                del _held[key]
            os.ftruncate(fd, 0)  # flock is released by close() below
    finally:
        os.close(fd)


def holds_lock(target: str | Path) -> bool:
    """Whether this process holds the lock of ``target``."""
    return str(lock_path(target)) in _held


def check_writable_folder(folder: str | Path, option: str) -> Path:
    """Create ``folder`` if needed and check a file can be written in it, before any work starts;
    otherwise raise :class:`~structcore.errors.DataError` naming ``option`` and the reason."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{option} {folder}: is a file, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".structcore-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"{option} {folder}: cannot write there ({e.strerror or e}); choose another folder") from None
    return folder


# -- fault injection (tests) ------------------------------------------------------------------------
FAULT_ENV = "STRUCTCORE_FAULT"
FAULT_ONCE_ENV = "STRUCTCORE_FAULT_ONCE"
DELAY_ENV = "STRUCTCORE_DELAY"
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill the process here (``os._exit(86)``, no cleanup) when ``$STRUCTCORE_FAULT`` is ``name`` or
    ``name:N`` (at the N-th time this point is reached); sleep here when ``$STRUCTCORE_DELAY`` is
    ``name:SECONDS``. Lets tests kill a real writer at each step, or widen a race window, deterministically.
    With ``$STRUCTCORE_FAULT_ONCE`` naming a file, only the first process to create that file is killed
    (so a restarted worker, which sees the same environment, runs on)."""
    delay = os.environ.get(DELAY_ENV, "")
    if delay.partition(":")[0] == name:
        time.sleep(float(delay.partition(":")[2] or 1))
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want, _, count = spec.partition(":")
    if want != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] >= int(count or 1) and _first_to_claim(os.environ.get(FAULT_ONCE_ENV)):
        os._exit(86)


def _first_to_claim(marker: str | None) -> bool:
    """True without a marker file; with one, True only for the process that creates it."""
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
