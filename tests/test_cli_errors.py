"""Every expected failure of the command line is one ``structcore: error: ...`` line naming the file or
option (exit status 2), a traceback only with --debug; arguments are checked when they are parsed."""

import errno
import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from structcore.cli import build_parser, main
from structcore.cli import predict as predict_command
from structcore.cli.options import config_from_args, runtime_from_args
from structcore.detector import Detector
from structcore.errors import ConfigError

TINY = ["--backbone", "tiny", "--resize", "64", "--crop", "56", "--blocks", "-1", "-2", "--projection-dim", "16",
        "--coreset-ratio", "0.25", "--precision", "fp32", "--quiet"]


@pytest.fixture(scope="module")
def model(synthetic_mvtec, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-errors") / "model"
    assert main(["fit", "--data", str(synthetic_mvtec), "--categories", "widget", "--out", str(folder), *TINY]) == 0
    return folder


def _edited(model, tmp_path, edit):
    """A copy of ``model`` whose manifest ``edit(manifest)`` changed (or replaced, if it returns a value)."""
    copy = tmp_path / "edited"
    shutil.copytree(model, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    result = edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest if result is None else result))
    return copy


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("structcore: error: "), err
    for n in needles:
        assert n in last, (n, last)
    return last


CASES = {  # name: (argv after the model/out are filled in, what the one line must contain)
    "out is a file": (["predict", "--model", "{model}", "{image}", "--out", "{file}"], ["is a file"]),
    "out under a file": (["predict", "--model", "{model}", "{image}", "--out", "{file}/sub"], ["--out", "cannot write there"]),
    "fit out under a file": (["fit", "--good", "{train}", "--out", "{file}/m", *TINY], ["--out", "is a file"]),
    "no model": (["predict", "--model", "{tmp}", "{image}", "--out", "{tmp}/p"], ["manifest.json is missing"]),
    "unknown category": (["predict", "--model", "{model}", "{image}", "--category", "nope", "--out", "{tmp}/p"],
                         ["unknown category 'nope'", "widget"]),
    "missing input": (["predict", "--model", "{model}", "{tmp}/nothing.png", "--out", "{tmp}/p"], ["no such file"]),
    "crop > resize": (["fit", "--good", "{train}", "--out", "{tmp}/m", *TINY, "--crop", "98"], ["crop"]),
    "device": (["predict", "--model", "{model}", "{image}", "--out", "{tmp}/p", "--device", "tpu"], ["device 'tpu'"]),
    "add without model": (["fit", "--add", "--good", "{train}", "--out", "{tmp}/none", "--quiet"], ["holds no model", "drop --add"]),
}
if not torch.cuda.is_available():
    CASES["cuda without gpu"] = (["predict", "--model", "{model}", "{image}", "--out", "{tmp}/p", "--device", "cuda"], ["no CUDA GPU"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_expected_failures_are_one_line(case, model, synthetic_mvtec, tmp_path, capsys):
    argv, needles = CASES[case]
    (tmp_path / "file").write_text("x")
    fill = {"model": model, "image": synthetic_mvtec / "widget" / "test" / "good" / "000.png", "tmp": tmp_path,
            "file": tmp_path / "file", "train": synthetic_mvtec / "widget" / "train" / "good"}
    assert main([a.format(**fill) for a in argv]) == 2
    _one_error_line(capsys, *needles)


MANIFEST_EDITS = {
    "a list": (lambda m: [1, 2], "not an object"),
    "lambda a string": (lambda m: m["categories"]["widget"].__setitem__("lambda", "big"), "categories.widget.lambda"),
    "thresholds missing": (lambda m: m["categories"]["widget"].pop("thresholds") and None, "categories.widget.thresholds"),
    "unknown config key": (lambda m: m["config"].__setitem__("colour", 1), "field 'config'"),
    "bad config value": (lambda m: m["config"].__setitem__("k", "five"), "field 'config'"),
    "weights null": (lambda m: m.__setitem__("weights", None), "'weights'"),
    "categories a list": (lambda m: m.__setitem__("categories", ["widget"]), "'categories'"),
    "file outside": (lambda m: m["categories"]["widget"].__setitem__("file", "../x"), "names file '../x'"),
    "files not an object": (lambda m: m.__setitem__("files", "all"), "'files'"),
    "other weights": (lambda m: m["weights"].__setitem__("sha256", "1" * 64), "sha256"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_a_malformed_manifest_is_one_line(case, model, synthetic_mvtec, tmp_path, capsys):
    edit, needle = MANIFEST_EDITS[case]
    copy = _edited(model, tmp_path, edit)
    image = synthetic_mvtec / "widget" / "test" / "good" / "000.png"
    assert main(["predict", "--model", str(copy), str(image), "--out", str(tmp_path / "p"), "--quiet"]) == 2
    _one_error_line(capsys, needle)


@pytest.mark.parametrize("bad", [["--batch-size", "0"], ["--workers", "-1"], ["--false-reject-rate", "1"], ["--sigma", "nan"],
                                 ["--coreset-ratio", "0"], ["--k", "two"], ["--lock-timeout", "-1"], ["--resize", "0"]])
def test_bad_values_are_refused_when_parsed(bad, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["fit", "--good", "x", "--out", "y", *bad])
    assert e.value.code == 2 and bad[0] in capsys.readouterr().err


@pytest.mark.parametrize("error, needle", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/predictions.csv"), "/data/out/predictions.csv: the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), "/data/out: permission denied"),
    (MemoryError(), "out of memory: lower --batch-size"),
    (TypeError("unsupported operand"), "unexpected TypeError: unsupported operand"),
    (AttributeError("'NoneType' object has no attribute 'x'"), "unexpected AttributeError"),
    (RuntimeError("faiss: bad alloc\nline two"), "unexpected RuntimeError: faiss: bad alloc line two"),
])
def test_any_other_failure_is_one_line_and_debug_shows_the_traceback(error, needle, model, tmp_path, monkeypatch, capsys):
    def fail(*a, **k):
        raise error

    monkeypatch.setattr(predict_command, "predict_files", fail)
    argv = ["predict", "--model", str(model), str(tmp_path), "--out", str(tmp_path / "p"), "--quiet"]
    assert main(argv) == 2
    _one_error_line(capsys, needle)
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("structcore: error: ")
    monkeypatch.setattr(predict_command, "predict_files", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(argv) == 130 and "interrupted" in capsys.readouterr().err


# -- the argument parser, fuzzed: what it accepts, the detector accepts ----------------------------
_VALUES = st.sampled_from(["0", "1", "-1", "2", "0.5", "1.5", "nan", "inf", "-0", "1e9", "x", "", "56", "64", "-2"])
_OPTIONS = st.sampled_from(["--resize", "--crop", "--projection-dim", "--coreset-ratio", "--coreset-size", "--k",
                            "--sigma", "--top-ratio", "--lam", "--heldout-fraction", "--false-reject-rate", "--routing-prototypes",
                            "--seed", "--batch-size", "--workers", "--blocks", "--lock-timeout"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_OPTIONS, _VALUES), max_size=5))
def test_parsed_options_make_a_valid_detector_or_a_config_error(options):
    argv = ["fit", "--good", "g", "--out", "o", "--backbone", "tiny", "--resize", "64", "--crop", "56",
            "--blocks", "-1", "-2", "--device", "cpu"]
    for name, value in options:
        argv += [name, value]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        assert e.code == 2
        return
    try:
        args.validate(args)  # what main() runs before the command
    except ConfigError:
        return
    Detector(config_from_args(args), **runtime_from_args(args))  # must not raise
