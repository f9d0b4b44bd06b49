"""``structcore serve`` as a real process (tiny ViT): it reports ready once warm, requires the token from
STRUCTCORE_API_TOKEN, answers what ``structcore predict`` writes, and stops cleanly on SIGINT."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from structcore.cli import main

TESTS = Path(__file__).resolve().parent
TINY = ["--backbone", "tiny", "--resize", "64", "--crop", "56", "--blocks", "-1", "-2", "--projection-dim", "16",
        "--coreset-ratio", "0.25", "--precision", "fp32", "--quiet"]


@pytest.fixture
def model(synthetic_mvtec, tiny_backbone, tmp_path) -> Path:
    folder = tmp_path / "model"
    assert main(["fit", "--data", str(synthetic_mvtec), "--out", str(folder), *TINY]) == 0
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_what_predict_writes(model, synthetic_mvtec, tmp_path):
    image = synthetic_mvtec / "widget" / "test" / "scratch" / "000.png"
    assert main(["predict", "--model", str(model), str(image), "--out", str(tmp_path / "pred"), "--quiet",
                 "--precision", "fp32"]) == 0
    (row,) = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent / "src"), "STRUCTCORE_API_TOKEN": "let-me-in"}
    proc = subprocess.Popen([sys.executable, str(TESTS / "tiny_cli.py"), "serve", "--model", str(model), "--port",
                             str(port), "--threads", "1", "--precision", "fp32"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = []
        while "ready at" not in (line := proc.stderr.readline()):
            assert line, "the server exited before it was ready:\n" + "".join(seen)
            seen.append(line)
        assert f"ready at http://127.0.0.1:{port}" in line
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/v1/model").status_code == 401
        auth = {"Authorization": "Bearer let-me-in"}
        assert httpx.get(f"{url}/readyz", headers=auth).status_code == 200
        answer = httpx.post(f"{url}/v1/predict", headers=auth, timeout=60,
                            files={"file": (image.name, image.read_bytes(), "image/png")}).json()
        assert answer["category"] == row["category"]
        for name in ("base", "struct", "hybrid"):
            assert answer["scores"][name] == pytest.approx(float(row[f"{name}_score"]), rel=1e-6)
        assert answer["decision"] == row["decision"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
