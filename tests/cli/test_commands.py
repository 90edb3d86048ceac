"""Smoke: every `refitd` command and every `python -m refitd.bench` suite, as a user runs them, on a tiny home.

Each command runs in its own process (``python -m refitd.cli``), the way the console script does;
expected refusals must reach the terminal as one line with the error's exit code, never a traceback.
`refitd demo` has its own test (tests/demo); the refit flow itself is tested in tests/flows.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

REFITD = [sys.executable, "-m", "refitd.cli"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFITD_")}
    return env | {"REFITD_HOME": str(home), "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "BROWSER": "true", "COLUMNS": "200"} | extra


def refitd(home: Path, *args: str, code: int = 0, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*REFITD, *args], env=_env(home, **env), capture_output=True, text=True, timeout=600)
    assert result.returncode == code, f"refitd {' '.join(args)} → {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def one_line_refusal(result: subprocess.CompletedProcess, words: str) -> None:
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], result.stderr


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("cli-home")
    refitd(home, "db", "upgrade")
    result = refitd(home, "init", "--quick")
    assert "v1" in result.stdout and "promoted" in result.stdout.lower()
    return home


def _serve(home: Path, *command: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([*REFITD, *command, "--port", str(port)], env=_env(home), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise AssertionError(f"{command} did not become ready")


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def test_every_command(home: Path, tmp_path: Path) -> None:
    assert "newest" in refitd(home, "db", "current").stdout
    assert "already initialised" in refitd(home, "init", "--quick").stdout

    listed = refitd(home, "models", "list").stdout
    assert "v1" in listed and "champion" in listed
    for name in ("v1", "1", "V1"):
        shown = refitd(home, "models", "show", name).stdout
        assert shown.startswith("v1 champion"), shown
    one_line_refusal(refitd(home, "models", "show", "v9", code=2), "model version 'v9' not found")
    one_line_refusal(refitd(home, "models", "rollback", code=2), "")

    local = refitd(home, "predict", "my flight was delayed again", "--url", "http://127.0.0.1:9").stdout
    assert "champion loaded locally" in local and "v1" in local

    # serve, and predictions through it (logged), then a drift check over them
    server, url = _serve(home, "serve")
    try:
        texts = [f"flight {i} was {'great' if i % 2 else 'late and the crew was rude'}" for i in range(120)]
        r = httpx.post(f"{url}/v1/predict", json={"texts": texts}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 120
        served = refitd(home, "predict", "the seats were fine", "--url", url).stdout
        assert f"server {url}" in served
    finally:
        assert _stop(server) == 0

    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(30):
            w.writerow([f"the crew on flight {i} was lovely", "positive"])
    assert "imported 30 labelled texts" in refitd(home, "feedback", "import", str(labels)).stdout
    mislabelled = tmp_path / "mislabelled.csv"
    mislabelled.write_text("text,label\nthe crew was lovely,positive\nthe seats were awful,Negative\n")
    one_line_refusal(refitd(home, "feedback", "import", str(mislabelled), code=2), "row 3")  # named, none imported

    checked = refitd(home, "drift", "check").stdout
    assert "verdict" in checked.lower() or "drift" in checked.lower()
    assert "v1" in refitd(home, "drift", "list").stdout
    refitd(home, "drift", "show", "1")
    opened = subprocess.run([*REFITD, "drift", "open", "1"], env=_env(home), capture_output=True, text=True, timeout=120)
    assert opened.returncode in (0, 1) and "Traceback" not in opened.stderr
    one_line_refusal(refitd(home, "drift", "show", "999", code=2), "drift check 999 not found")
    assert "alerts" in refitd(home, "drift", "alerts").stdout  # none: no webhook configured

    status = json.loads(refitd(home, "status", "--json").stdout)
    assert status["champion"]["version"] == "v1" if isinstance(status.get("champion"), dict) else "v1" in json.dumps(status)
    assert "v1" in refitd(home, "status").stdout

    # an expected refusal from the training child: one line, no Prefect tracebacks on the terminal
    refused = refitd(home, "refit", "--quick", code=2, REFITD_TRAINING__MIN_ROWS="1000000")
    one_line_refusal(refused, "training.min_rows")

    # a label set other than the champion's only on purpose; a refit without the home's reference is refused
    # (copies: the module's home stays as it is)
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    two = tmp_path / "two.csv"
    two.write_text("text,label\n" + "".join(f"ticket {i} about {('billing', 'bug')[i % 2]},{('billing', 'bug')[i % 2]}\n" for i in range(80)))
    one_line_refusal(refitd(copy, "data", "replace", str(two), "--reason", "t", code=2), "add --new-label-set")
    replaced = refitd(copy, "data", "replace", str(two), "--reason", "two classes now", "--new-label-set").stdout
    assert "reference replaced" in replaced
    shutil.rmtree(copy / "data")  # the home's copy lost: the one published beside the models stands in
    assert ": 80 rows" in refitd(copy, "data", "show").stdout and (copy / "data").is_dir()
    shutil.rmtree(copy / "data")  # and nothing published: other data configured there is not v1's data
    shutil.rmtree(copy / "models" / "reference")
    one_line_refusal(refitd(copy, "refit", "--quick", code=2, REFITD_TRAINING__DATA=str(two)),
                     "is not what the champion v1 was trained on")

    # the service: ready, then a clean stop on SIGTERM
    daemon, url = _serve(home, "run")
    assert httpx.post(f"{url}/v1/predict", json={"text": "hello"}, timeout=30).status_code == 200
    assert _stop(daemon) == 0

    one_line_refusal(refitd(home, "models", "promote", "v7", code=2), "not found")
    bad_config = refitd(home, "status", code=2, REFITD_SERVING__PORT="99999")
    one_line_refusal(bad_config, "serving.port must be between 0 and 65535")


BENCH = {
    "serve": ["--requests", "40", "--repeats", "1", "--peer", "none"],  # the peer venv takes minutes to build
    "hop": ["--texts", "40"],
    "route": ["--texts", "40"],
    "spin": ["--rates", "20", "--seconds", "2", "--repeats", "1"],
    "shadow": ["--rates", "20", "--seconds", "2", "--repeats", "1"],
    "train": ["--rows", "200", "--epochs", "0.5"],
    "ensemble": ["--rows", "200", "--epochs", "0.5", "--k", "2", "--test-rows", "100", "--rounds", "1"],
    "drift": ["--windows", "2", "--repeats", "1", "--streams", "1", "--every", "200", "--texts", "400"],
    "cotenancy": ["--per-round", "20", "--alone-rounds", "1", "--concurrency", "2"],
    "store": ["--rows", "3000", "--small", "1000", "--days", "3",
              "--postgres", os.environ.get("REFITD_TEST_DATABASE_URL") or "none"],
    "recovery": ["--labels", "150", "--holdout", "150", "--oracle-labels", "300", "--quick"],  # trains its own v1
    "defaults": ["--steps", "confirm", "--rows", "150", "--epochs", "0.5", "--seeds", "42"],
    "estimate": ["--history", "200", "1000"],  # this home's checks, if any: none with labels is a result too
}


@pytest.mark.parametrize("suite", sorted(BENCH))
def test_every_bench_suite(home: Path, tmp_path: Path, suite: str) -> None:
    args = BENCH[suite] + ([] if suite in ("train", "ensemble", "recovery", "defaults") else ["--home", str(home)])
    result = subprocess.run([sys.executable, "-m", "refitd.bench", suite, *args], capture_output=True, text=True,
                            timeout=900, env=_env(home, REFITD_BENCH_RESULTS=str(tmp_path)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = json.loads((tmp_path / f"{suite}-latest.json").read_text())
    assert saved, f"bench {suite} saved an empty result"
    from refitd.bench.__main__ import SUITES
    import importlib

    rows = importlib.import_module(SUITES[suite]).ratios(saved)
    assert rows and all(len(row) == 3 for row in rows)
