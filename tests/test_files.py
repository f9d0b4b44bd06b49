"""Atomic writes: the umask's file mode, no temp file left behind, the old file intact after a failure."""

import hashlib
import json
import os

import pytest

from structcore import files
from structcore.files import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file


@pytest.fixture
def umask():
    """Set a umask for one test; the previous one is restored afterwards."""
    set_umask = os.umask  # kept: a test may monkeypatch os.umask
    previous = set_umask(0o022)
    set_umask(previous)
    yield set_umask
    set_umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_new_files_get_the_mode_the_umask_gives(tmp_path, umask, mask):
    umask(mask)
    expected = 0o666 & ~mask
    reference = tmp_path / "plain"
    reference.write_text("x")  # what open() itself gives
    assert reference.stat().st_mode & 0o777 == expected
    for write, name in ((lambda p: atomic_write_text(p, "a"), "t.txt"), (lambda p: atomic_write_bytes(p, b"b"), "b.bin"),
                        (lambda p: atomic_write_json(p, {"k": 1}), "j.json")):
        write(tmp_path / name)
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
    assert os.umask(mask) == mask  # the library left the umask as it found it


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the umask from /proc")
def test_the_mode_is_found_without_changing_the_umask(monkeypatch, umask):
    umask(0o027)
    calls = []
    monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or 0)  # another thread could see a changed umask
    assert files.new_file_mode() == 0o640
    assert calls == []


def test_success_leaves_only_the_file(tmp_path):
    out = atomic_write_json(tmp_path / "sub" / "deeper" / "doc.json", {"a": [1, 2]})
    assert out == tmp_path / "sub" / "deeper" / "doc.json"
    assert json.loads(out.read_text()) == {"a": [1, 2]}
    assert os.listdir(out.parent) == ["doc.json"]
    atomic_write_text(out, "replaced")
    assert out.read_text() == "replaced" and os.listdir(out.parent) == ["doc.json"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path, error):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old content")
    seen = []

    def write(tmp):
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"half of the new cont")
        seen.append(tmp)
        raise error("disk full")

    with pytest.raises(error, match="disk full"):
        atomic_write(target, write)
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["model.bin"]
    assert not seen[0].exists()


def test_a_writer_that_never_creates_the_file_is_cleaned_up(tmp_path):
    def write(tmp):
        tmp.unlink()  # e.g. a library that writes by rename and fails before it
        raise OSError("no space left")

    with pytest.raises(OSError, match="no space"):
        atomic_write(tmp_path / "x.json", write)
    assert os.listdir(tmp_path) == []


def test_sha256_file_is_hashlibs_on_a_multi_megabyte_file(tmp_path):
    data = os.urandom(3 * (1 << 22) + 12345)  # spans several read chunks, not a multiple of one
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert sha256_file(path) != hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _holder(target, *, kill_after_lock: bool = False):
    """A real process that takes the lock of ``target``, says so, then waits for stdin (or dies at once)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import os, sys\nfrom structcore.files import exclusive\nwith exclusive(sys.argv[1]):\n"
            " print('held', flush=True)\n" + (" os._exit(9)\n" if kill_after_lock else " sys.stdin.readline()\n"))
    src = str(Path(__file__).resolve().parents[1] / "src")
    return subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": src})


def test_exclusive_names_the_holder_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    import time

    from structcore.errors import LockedError
    from structcore.files import exclusive, lock_path

    target = tmp_path / "model"
    holder = _holder(target)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockedError, match=f"being written by pid {holder.pid}"):
        with exclusive(target, timeout=0.2):
            pass
    lines = []
    started = time.monotonic()
    holder.stdin.write("go\n")
    holder.stdin.flush()
    with exclusive(target, log=lines.append):  # waits for the holder to let go
        assert lock_path(target).read_text().strip() == str(os.getpid())
        with exclusive(target, timeout=0):  # re-entrant in the holding process
            pass
    assert holder.wait(timeout=30) == 0 and time.monotonic() - started < 30
    dead = _holder(target, kill_after_lock=True)
    assert dead.stdout.readline().strip() == "held"
    assert dead.wait(timeout=30) == 9  # killed while holding the lock
    with exclusive(target, timeout=0):  # the kernel released it
        pass
