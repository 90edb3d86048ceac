"""The whole loop on a user's own data, not the embedded default.

Binary sentiment on Apple and Coachella tweets (the user's file, with its own column names) for
v1; then traffic about self-driving cars, DeflateGate and the weather, labelled late; a drift
check; a refit. The refit must train on the stored reference (not the bundled airline corpus),
keep the same frozen set, state that in the gate's reason, and serve a model that does better on
the new traffic. A second test runs a six-class topic classifier through init, serve, feedback
(an unknown label is a 422 naming the allowed ones) and a refit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from refitd.core.datasets import load_configured
from refitd.core.db import make_engine, session_scope
from refitd.core.tables import ModelVersion
from tests.conftest import free_port, wait_ready

pytestmark = pytest.mark.integration

REFITD = [sys.executable, "-m", "refitd.cli"]


def _corpus() -> pd.DataFrame:
    return load_configured(data=None, text_column="text", label_column="label", topics=[],
                           validation_fraction=0.1, test_fraction=0.15)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFITD_")}
    return env | {"REFITD_HOME": str(home), "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "REFITD_SERVING__POLL_INTERVAL_S": "1", "REFITD_DRIFT__MIN_WINDOW": "100"} | extra


def _cli(env: dict[str, str], *args: str, code: int = 0) -> str:
    r = subprocess.run([*REFITD, *args], env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == code, f"refitd {' '.join(args)} → {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _versions(home: Path) -> dict[str, ModelVersion]:
    with session_scope(make_engine(f"sqlite:///{home / 'refitd.db'}")) as s:
        from sqlmodel import select

        return {mv.version: mv for mv in s.exec(select(ModelVersion)).all()}


def _accuracy(url: str, rows: pd.DataFrame, text_col: str, label_col: str) -> tuple[float, set[str]]:
    answers = []
    for i in range(0, len(rows), 50):
        r = httpx.post(f"{url}/v1/predict", json={"texts": rows[text_col].iloc[i : i + 50].tolist()}, timeout=60)
        assert r.status_code == 200, r.text
        answers += r.json()["predictions"]
    hits = [p["label"] == truth for p, truth in zip(answers, rows[label_col], strict=True)]
    return sum(hits) / len(hits), {p["model_version"] for p in answers}


def _serve(env: dict[str, str], command: str = "serve", log: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the child's output for its life
    proc = subprocess.Popen([*REFITD, command, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout=120)
    return proc, url


@pytest.mark.timeout(1800)
def test_the_loop_on_a_users_binary_dataset(tmp_path: Path) -> None:
    corpus = _corpus()
    polar = corpus[corpus["label"].isin(["negative", "positive"])]
    mine = polar[polar["topic"].isin(["apple", "coachella"]) & (polar["split"] != "stream")]
    path = tmp_path / "my-tickets.csv"
    mine.rename(columns={"text": "body", "label": "sentiment"})[["body", "sentiment"]].to_csv(path, index=False)
    new = polar[polar["topic"].isin(["self_driving", "deflategate", "weather"]) & (polar["split"] == "stream")]
    new = new.sample(frac=1.0, random_state=0).reset_index(drop=True)
    traffic, held_out = new.iloc[:900], new.iloc[900:1200]

    home = tmp_path / "home"
    env = _env(home, REFITD_TRAINING__TEXT_COLUMN="body", REFITD_TRAINING__LABEL_COLUMN="sentiment",
               REFITD_SCHEDULER__DRIFT_INTERVAL_MINUTES="0.25", REFITD_REFIT__MIN_NEW_LABELS="600",
               REFITD_REFIT__QUICK="true", REFITD_REFIT__THREADS="2", REFITD_REFIT__NICE="0",
               REFITD_DRIFT__WINDOW_SIZE="600")
    _cli(env, "init", "--quick", "--data", str(path))
    shown = _cli(env, "data", "show")
    assert str(path) in shown and "negative" in shown and "positive" in shown and "neutral" not in shown

    path.write_text("body,sentiment\nchanged on disk,positive\n")  # the file changes after init: nothing follows it
    server, url = _serve(env, "run", log=tmp_path / "daemon.log")  # the service: drift checks and refits by policy
    try:
        before, served = _accuracy(url, held_out, "text", "label")
        assert served == {"v1"}
        for start in range(0, len(traffic), 50):  # traffic, and its labels arriving late
            chunk = traffic.iloc[start : start + 50]
            r = httpx.post(f"{url}/v1/predict", json={"texts": chunk["text"].tolist()}, timeout=60)
            for p, label in zip(r.json()["predictions"], chunk["label"], strict=True):
                f = httpx.post(f"{url}/v1/feedback", json={"prediction_id": p["prediction_id"], "label": label},
                               timeout=30)
                assert f.status_code == 200, f.text
        bad = httpx.post(f"{url}/v1/feedback", json={"text": "x", "label": "neutral"}, timeout=30)
        assert bad.status_code == 422 and "negative" in bad.text and "positive" in bad.text
        deadline = time.time() + 900  # the daemon's drift check sees the shift, and starts a refit on it
        while time.time() < deadline and ((versions := _versions(home)).get("v2") is None
                                          or versions["v2"].status == "candidate"):
            assert server.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(3)
        assert "v2" in versions, (tmp_path / "daemon.log").read_text()[-3000:]
        with session_scope(make_engine(f"sqlite:///{home / 'refitd.db'}")) as s:
            from sqlmodel import select

            from refitd.core.tables import DriftCheck, RefitRun

            assert any(c.verdict == "drifted" for c in s.exec(select(DriftCheck)).all())
            assert [r.trigger for r in s.exec(select(RefitRun)).all() if r.trigger != "init"] == ["drift"]
        refit = (tmp_path / "daemon.log").read_text()[-3000:]
        v1, v2 = versions["v1"], versions["v2"]
        assert v2.status == "champion", refit
        assert v1.metrics["frozen_set"]["digest"] == v2.metrics["frozen_set"]["digest"]
        assert v1.frozen_scores["n"] == v2.frozen_scores["n"] == v1.metrics["frozen_set"]["n"]
        assert "same frozen set as v1" in v2.gate_reason
        sources = v2.data_counts["train"]["sources"]
        assert sources.get("reference", 0) >= 0.3 * v2.data_counts["train"]["rows"] - 1
        assert sources.get("feedback_new", 0) > 0
        trained_labels = set(v2.data_counts["train"]["labels"])
        assert trained_labels == {"negative", "positive"}  # the user's label set, not the bundled three

        deadline = time.time() + 60
        while time.time() < deadline:
            after, served = _accuracy(url, held_out, "text", "label")
            if served == {"v2"}:
                break
            time.sleep(1)
        assert served == {"v2"}
        print(json.dumps({"live accuracy on new traffic": {"v1": before, "v2": after},
                          "gate": v2.gate_reason}, indent=2))
        for version in ("v1", "v2"):
            print(_cli(env, "models", "show", version))
        assert after > before
    finally:
        server.terminate()
        server.wait(30)


def test_a_six_class_topic_classifier(tmp_path: Path) -> None:
    corpus = _corpus()
    topics = ["airline", "apple", "self_driving", "coachella", "deflategate", "weather"]
    rows = corpus[corpus["topic"].isin(topics) & (corpus["split"] != "stream")]
    rows = pd.concat(g.sample(min(len(g), 300), random_state=0) for _, g in rows.groupby("topic"))
    path = tmp_path / "topics.jsonl"
    rows.assign(label=rows["topic"])[["text", "label"]].to_json(path, orient="records", lines=True)

    home = tmp_path / "home"
    env = _env(home)
    _cli(env, "init", "--quick", "--data", str(path))
    server, url = _serve(env)
    try:
        r = httpx.post(f"{url}/v1/predict", json={"texts": ["@united my bag is lost", "coachella lineup is out"]},
                       timeout=60)
        assert r.status_code == 200
        assert all(set(p["scores"]) == set(topics) for p in r.json()["predictions"])
        bad = httpx.post(f"{url}/v1/feedback", json={"text": "x", "label": "positive"}, timeout=30)
        assert bad.status_code == 422 and all(t in bad.text for t in topics)
        stream = corpus[corpus["topic"].isin(topics) & (corpus["split"] == "stream")].sample(300, random_state=1)
        for text, topic in zip(stream["text"], stream["topic"], strict=True):
            assert httpx.post(f"{url}/v1/feedback", json={"text": text, "label": topic}, timeout=30).status_code == 200
    finally:
        server.terminate()
        server.wait(30)
    out = subprocess.run([*REFITD, "refit", "--quick"], env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode in (0, 1), out.stdout + out.stderr  # 1: the gate rejected; both are a completed refit
    v2 = _versions(home)["v2"]
    assert set(v2.data_counts["train"]["labels"]) == set(topics)
    assert v2.metrics["frozen_set"]["digest"] == _versions(home)["v1"].metrics["frozen_set"]["digest"]
