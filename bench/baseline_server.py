"""The serving baseline: FastAPI + PyTorch eager, one request at a time, no batching.

``python -m refitd.bench.baseline_server ARTIFACT_DIR PORT [THREADS]`` — the same fine-tuned weights
(the artifact's Hugging Face checkpoint) and the same max_length as refitd serves; THREADS sets
torch's intra-op threads (default: torch's own choice).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from refitd.core.artifacts import HF_DIR, ArtifactMeta


class Body(BaseModel):
    text: str


def build(artifact: Path) -> FastAPI:
    meta = ArtifactMeta.read(artifact)
    tokenizer = AutoTokenizer.from_pretrained(artifact / HF_DIR)
    model = AutoModelForSequenceClassification.from_pretrained(artifact / HF_DIR).eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/predict")
    def predict(body: Body) -> dict:  # sync endpoint: FastAPI runs it in a thread; the lock serialises
        with lock, torch.no_grad():
            enc = tokenizer([body.text], truncation=True, max_length=meta.max_length, return_tensors="pt")
            probs = model(**enc).logits.softmax(-1)[0]
        i = int(probs.argmax())
        return {"label": meta.labels[i], "scores": probs.tolist()}

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    return app


if __name__ == "__main__":
    if len(sys.argv) > 3:
        torch.set_num_threads(int(sys.argv[3]))
    uvicorn.run(build(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
