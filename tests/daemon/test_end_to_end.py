"""The thin slice, end to end through the real CLI: init --quick → serve → predict → row logged."""

from __future__ import annotations

import pytest

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from sqlmodel import select

from refitd.core.db import make_engine, session_scope
from refitd.core.tables import ModelVersion, Prediction, RefitRun
from tests.conftest import free_port, wait_ready

pytestmark = pytest.mark.integration

REFITD = [sys.executable, "-m", "refitd.cli"]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "REFITD_HOME": str(home), "REFITD_LOG_LEVEL": "WARNING"}


def test_init_quick_then_serve_and_predict(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = subprocess.run(REFITD + ["init", "--quick"], env=_env(home), capture_output=True, text=True, timeout=600)
    assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
    assert "promoted" in init.stdout
    again = subprocess.run(REFITD + ["init", "--quick"], env=_env(home), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already initialised: v1 is the champion" in again.stdout.replace("\n", " ")

    engine = make_engine(f"sqlite:///{home / 'refitd.db'}")
    with session_scope(engine) as s:
        champion = s.exec(select(ModelVersion).where(ModelVersion.status == "champion")).one()
        run = s.exec(select(RefitRun)).one()
    assert champion.version == "v1" and run.status == "completed" and run.verdict == "promoted"
    assert champion.frozen_scores["macro_f1"] > champion.baseline_scores["macro_f1"]
    assert (home / "models" / "v1" / "MANIFEST.json").is_file()

    port = free_port()
    server = subprocess.Popen(REFITD + ["serve", "--port", str(port)], env=_env(home),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        answer = httpx.post(f"{url}/v1/predict", json={"text": "@united my flight was cancelled again"}, timeout=30)
        assert answer.status_code == 200, answer.text
        prediction = answer.json()["predictions"][0]
        assert prediction["model_version"] == "v1"
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out[-3000:]
    with session_scope(engine) as s:
        row = s.get(Prediction, prediction["prediction_id"])
    assert row is not None and row.model_version == "v1" and row.label == prediction["label"]
