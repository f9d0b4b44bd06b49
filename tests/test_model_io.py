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


# -- manifests of any shape: a ModelFileError or a model, nothing else --------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def fitted(synthetic_mvtec, tmp_path_factory):
    from structcore import Detector, DetectorConfig

    config = DetectorConfig(backbone="tiny", resize=64, crop=56, blocks=(-1, -2), projection_dim=16, coreset_ratio=0.25)
    det = Detector(config, precision="fp32", progress=False)
    det.fit("widget", sorted((synthetic_mvtec / "widget" / "train" / "good").iterdir()))
    folder = tmp_path_factory.mktemp("fitted") / "model"
    det.save(folder)
    return folder


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_manifest_changed_anywhere_loads_or_gives_a_model_file_error(fitted, data):
    import copy
    import json

    from structcore import Detector

    original = json.loads((fitted / "manifest.json").read_text())
    manifest = copy.deepcopy(original)
    path = data.draw(st.sampled_from(sorted(_paths(original), key=str)))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if not path:
        manifest = data.draw(JSON)
    else:
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6))] = data.draw(JSON)
        else:
            parent[path[-1]] = data.draw(JSON)
    try:
        (fitted / "manifest.json").write_text(json.dumps(manifest))
        try:
            Detector.load(fitted)
        except ModelFileError:
            pass
    finally:
        (fitted / "manifest.json").write_text(json.dumps(original, indent=2))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.binary(max_size=200) | JSON.map(lambda v: __import__("json").dumps(v).encode()))
def test_any_manifest_bytes_give_a_model_file_error(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("bytes")
    (folder / "manifest.json").write_bytes(text)
    try:
        read_model(folder)
    except ModelFileError:
        pass
