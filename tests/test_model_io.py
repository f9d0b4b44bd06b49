"""Model folders: a writer killed at every step of the swap leaves a model the next read or write recovers;
malformed manifests give a ModelFileError."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from structcore.errors import ModelFileError
from structcore.model_io import read_model, write_model

SRC = Path(__file__).resolve().parents[1] / "src"
STEPS = ("model-files-written", "model-manifest-written", "model-old-moved-aside", "model-new-moved-in")
WRITER = """
import sys, torch
from pathlib import Path
from structcore.model_io import write_model
write_model(Path(sys.argv[1]), {"tag": sys.argv[2]}, {"t.safetensors": {"x": torch.full((3,), float(sys.argv[3]))}})
print("written")
"""


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **extra}


def _write(folder: Path, tag: str, value: float):
    write_model(folder, {"tag": tag}, {"t.safetensors": {"x": torch.full((3,), value)}})


def _beside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.") and not p.name.endswith(".lock"))


def _kill_writers(folders: list[Path], steps) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(f), "new", "2"], env=_env(STRUCTCORE_FAULT=s),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f, s in zip(folders, steps)]
    return [(p, *p.communicate(timeout=120)) for p in procs]


def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_model(tmp_path):
    folders = [tmp_path / s / "model" for s in STEPS]
    for f in folders:
        _write(f, "old", 1.0)
    for (proc, out, err), step, folder in zip(_kill_writers(folders, STEPS), STEPS, folders):
        assert proc.returncode == 86 and "written" not in out, (step, err)  # killed at the step, not before
        assert _beside(folder), step  # the kill left something behind to heal
        manifest, files = read_model(folder)  # the next read recovers ...
        expected = "new" if step == "model-new-moved-in" else "old"
        assert manifest["tag"] == expected, step
        assert files["t.safetensors"]["x"].tolist() == [2.0 if expected == "new" else 1.0] * 3
        assert _beside(folder) == [], step  # ... and leaves no leftovers
        _write(folder, "again", 3.0)  # and the folder takes a new model
        assert read_model(folder)[0]["tag"] == "again" and _beside(folder) == []


def test_a_killed_first_write_leaves_no_model_and_the_next_write_cleans_up(tmp_path):
    folder = tmp_path / "model"
    (proc, _, err), = _kill_writers([folder], ["model-manifest-written"])
    assert proc.returncode == 86, err
    assert not folder.exists() and _beside(folder) != []
    with pytest.raises(ModelFileError, match="manifest.json is missing"):
        read_model(folder)
    _write(folder, "first", 1.0)
    assert read_model(folder)[0]["tag"] == "first" and _beside(folder) == []


def test_the_recovery_waits_for_a_live_writer(tmp_path):
    """A reader that finds leftovers while a writer holds the lock must not touch them."""
    from structcore.files import exclusive

    folder = tmp_path / "model"
    _write(folder, "old", 1.0)
    fake = tmp_path / ".model.writing-999999"
    fake.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom structcore.files import exclusive\n"
                               "with exclusive(sys.argv[1]):\n print('held', flush=True); time.sleep(3)", str(folder)],
                              env=_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="being written by pid"):
        with exclusive(folder, timeout=0):
            pass
    started = time.monotonic()
    assert read_model(folder)[0]["tag"] == "old"  # waited for the holder, then healed
    assert time.monotonic() - started > 1 and not fake.exists()
    assert holder.wait(timeout=30) == 0
