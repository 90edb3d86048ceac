"""Another model folder than the default: a RoBERTa-style tokenizer whose pad id is 1 tokenises for
serving exactly as for training, and goes through init → serve → predict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from refitd.core.datasets import load_bundled_corpus
from refitd.core.encoding import encode, load_tokenizer
from tests.conftest import free_port, wait_ready
from tests.model_factory import tiny_roberta


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


def test_serving_pads_with_the_models_own_pad_token_as_training_does(roberta_dir: Path) -> None:
    from transformers import AutoTokenizer

    texts = load_bundled_corpus()["text"].sample(600, random_state=1).tolist() + ["", "short", "x " * 400]
    training = AutoTokenizer.from_pretrained(str(roberta_dir))
    serving = load_tokenizer(roberta_dir / "tokenizer.json", max_length=64)
    for i in range(0, len(texts), 64):
        batch = texts[i : i + 64]
        ours = encode(serving, batch)
        theirs = training(batch, truncation=True, max_length=64, padding=True, return_tensors="np")
        np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
        np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
    assert (encode(serving, ["a", "a much longer text here"])["input_ids"][0, -1]) == 1  # <pad>, not <s>


@pytest.mark.integration
def test_init_serve_predict_with_another_model_folder(roberta_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"REFITD_HOME": str(home), "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PATH": "/usr/bin:/bin"}
    init = subprocess.run([sys.executable, "-m", "refitd.cli", "init", "--quick", "--base-model", str(roberta_dir)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert init.returncode in (0, 1), init.stdout + init.stderr  # 1: a tiny random model may not beat the baseline
    assert "v1" in init.stdout
    if init.returncode == 1:
        subprocess.run([sys.executable, "-m", "refitd.cli", "models", "promote", "v1", "--reason", "test"],
                       env=env, check=True, capture_output=True, timeout=120)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "refitd.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=120)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"texts": ["@united lost my bag", "great crew"]},
                       timeout=30)
        assert r.status_code == 200
        predictions = r.json()["predictions"]
        assert {p["label"] for p in predictions} <= {"negative", "neutral", "positive"}
        assert all(p["model_version"] == "v1" for p in predictions)
    finally:
        server.terminate()
        server.wait(30)
