"""The ONNX Runtime model runtime: load a version's artifact, predict, unload.

onnxruntime + tokenizers + numpy only: the serving process never imports
torch or transformers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from refitd.core.artifacts import META, OUTPUTS, ArtifactMeta
from refitd.core.encoding import encode, load_tokenizer, softmax
from refitd.core.errors import ArtifactError, ModelLoadError, NotReadyError
from refitd.core.service_sections import ort_spin_entries

log = logging.getLogger(__name__)

SMOKE_TEXTS = ["the flight was great", "my bag is lost again", "ok"]


@dataclass
class Batch:
    """What the runtime answers for a batch of texts, row by row."""

    labels: list[str]
    scores: np.ndarray  # [N, C] calibrated class probabilities
    embeddings: np.ndarray  # [N, D] float32 pooled sentence embeddings


def providers_for(choice: str) -> list[str]:
    """ONNX Runtime providers for 'auto' | 'cpu' | 'cuda' given what this onnxruntime build offers."""
    available = ort.get_available_providers()
    if choice == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelLoadError("-", "serving.provider = 'cuda' but onnxruntime has no CUDAExecutionProvider "
                                      "(install the `gpu` extra: onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if choice == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxClassifier:
    """One loaded model version."""

    def __init__(
        self, version: str, folder: Path, *, provider: str = "auto", threads: int | None = None, precision: str = "auto",
        spin: str = "off",
    ) -> None:
        self.version, self.folder = version, Path(folder)
        self.provider, self.threads, self.precision, self.spin = provider, threads, precision, spin
        self.ready = False
        self.labels: list[str] = []
        self.temperature = 1.0
        self._session: ort.InferenceSession | None = None

    def load(self) -> None:
        """Create the session and tokenizer, then answer a smoke query; ModelLoadError if either fails."""
        try:
            meta = ArtifactMeta.read(self.folder, version=self.version)
            self.labels = list(meta.labels)
            self.temperature = meta.calibration.temperature
            model_file = self.folder / meta.model_for(self.precision)
            self._tokenizer = load_tokenizer(self.folder / meta.tokenizer_file, max_length=meta.max_length)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
            options.inter_op_num_threads = 1
            # ONNX Runtime's workers spin between calls by default: at 15 requests/s on two cores that held one
            # core busy, beside the refit and the drift checks that need it. serving.spin = run (the default)
            # lets them spin within a call, where a sleeping worker costs a wake-up per operator, and stops them after.
            for key, value in ort_spin_entries(self.spin).items():
                options.add_session_config_entry(key, value)
            self._session = ort.InferenceSession(str(model_file), options, providers=providers_for(self.provider))
            out = self.predict(SMOKE_TEXTS, _loading=True)
        except ModelLoadError:
            raise
        except ArtifactError as exc:
            self._session = None
            raise ModelLoadError(self.version, exc.problem) from exc
        except Exception as exc:  # noqa: BLE001 - any failure here means "cannot serve this version"
            self._session = None
            raise ModelLoadError(self.version, f"{type(exc).__name__}: {exc}") from exc
        if out.scores.shape != (len(SMOKE_TEXTS), len(self.labels)) or not np.all(np.isfinite(out.scores)):
            self._session = None
            raise ModelLoadError(self.version, f"smoke query returned scores of shape {out.scores.shape} or non-finite values")
        if out.embeddings.shape[1:] != (meta.embedding_dim,):
            self._session = None
            raise ModelLoadError(self.version, f"smoke query returned embeddings of shape {out.embeddings.shape}; "
                                               f"{META} says {meta.embedding_dim} dimensions")
        self.ready = True
        log.info("loaded %s from %s on %s", self.version, self.folder, self._session.get_providers()[0])

    def predict(self, texts: list[str], *, _loading: bool = False) -> Batch:
        """Labels, calibrated scores and embeddings for ``texts`` (one session call)."""
        session = self._session
        if session is None or (not self.ready and not _loading):
            raise NotReadyError(f"model {self.version} is not loaded")
        logits, embeddings = session.run(list(OUTPUTS), encode(self._tokenizer, texts))
        scores = softmax(logits, self.temperature)
        return Batch([self.labels[i] for i in scores.argmax(axis=1)], scores, embeddings.astype(np.float32))

    def unload(self) -> None:
        self.ready = False
        self._session = None

    @property
    def device(self) -> str:
        return self._session.get_providers()[0] if self._session is not None else "none"

