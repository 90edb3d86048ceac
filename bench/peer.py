"""The real peer in ``bench serve``: MLServer's HuggingFace runtime on ONNX Runtime, adaptive batching on.

What a user would pick instead of refitd to serve the same fine-tuned classifier: MLServer 1.7 with
``mlserver-huggingface`` and ``optimum_model: true``, so the model runs in an ONNX Runtime session
(Optimum's ``ORTModelForSequenceClassification``, default session options) behind a transformers
``text-classification`` pipeline, in MLServer's default single inference worker process. It is given
the champion's own fp32 graph (``model.onnx``) and Hugging Face tokenizer, and batches adaptively
with refitd's own limits (``serving.max_batch_size`` and ``serving.max_wait_ms``).

As released it does not run with today's dependencies; the bench keeps the runtime's code and only
pins or restores around it (each reason is beside ``SPEC`` and ``RUNTIME_SOURCE``). Two of its own
limits stay, because a user has them too: the pipeline does not truncate (the bench sends texts
already cut to the artifact's ``max_length``, so every server does the same work), and it drops its
pipeline batch size to 1 for BERT-style tokenizers (pad id 0 reads as "no pad token"), so a batch
MLServer gathers runs one text at a time. A request's text goes in as the pipeline's ``inputs``
keyword (a BYTES tensor of shape [1]): sent as ``args``, a gathered batch of N texts becomes N
positional arguments and fails.

Its pins differ from refitd's (fastapi < 0.116, transformers < 4.42, and the runtime imports
tensorflow), so it lives in its own virtualenv under ``~/.cache/refitd-bench`` (``REFITD_BENCH_CACHE``
moves it): about 3.6 GB, built once (minutes) and reused while ``SPEC`` is unchanged. torch is pinned
to the CPU release the machines carry on disk; anything else would download a CUDA build. When the
virtualenv cannot be built or the runtime cannot be imported, the peer is skipped and the reason kept.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from refitd.core.artifacts import HF_DIR, ArtifactMeta

log = logging.getLogger(__name__)

NAME = "MLServer"
MODEL = "refitd-peer"
# transformers < 4.42: mlserver-huggingface 1.7.1 imports transformers.pipelines.Conversation, gone since 4.42.
# uvloop < 0.22: with newer uvloop MLServer 1.7.1's inference worker dies at start (asyncio.get_event_loop raises).
SPEC = ("mlserver==1.7.1", "mlserver-huggingface==1.7.1", "transformers<4.42", "uvloop<0.22", "torch==2.13.0")
INSTALL_TIMEOUT_S = 1800
_WEIGHTS = (".safetensors", ".bin", ".pt", ".h5", ".msgpack")  # the peer reads the ONNX graph, not these
# The runtime module written beside the model: MLServer's HuggingFace runtime itself, imported after
# putting back the private torch.onnx names that optimum 1.27 (the last release mlserver-huggingface
# 1.7 accepts) imports at load time and torch 2.13 moved. They serve optimum's TorchScript exporter
# only, never a ready ONNX graph. A subclass, so MLServer's worker process imports this module too.
RUNTIME_MODULE = "refitd_peer_runtime"
RUNTIME_SOURCE = '''"""Written by refitd's bench serve: mlserver_huggingface.HuggingFaceRuntime, unchanged."""
import importlib

import torch.onnx.symbolic_opset14 as _opset14

for _name in ("_type_utils", "jit_utils", "symbolic_helper"):
    if not hasattr(_opset14, _name):
        setattr(_opset14, _name, importlib.import_module("torch.onnx._internal.torchscript_exporter." + _name))
for _name in ("_attention_scale", "_causal_attention_mask"):
    if not hasattr(_opset14, _name):
        setattr(_opset14, _name, None)
if not hasattr(_opset14, "_onnx_symbolic"):
    _opset14._onnx_symbolic = lambda *args, **kwargs: (lambda f: f)

import mlserver_huggingface


class HuggingFaceRuntime(mlserver_huggingface.HuggingFaceRuntime):
    pass
'''
_VERSIONS = (
    "import json, importlib.metadata as m; "
    "print(json.dumps({p: m.version(p) for p in ('mlserver', 'mlserver-huggingface', 'onnxruntime', 'optimum', "
    "'transformers', 'torch', 'tensorflow')}))"
)


@dataclass(frozen=True)
class Installed:
    """A ready virtualenv: where its ``mlserver`` is, and the versions it runs."""

    venv: Path
    versions: dict[str, str]

    @property
    def mlserver(self) -> Path:
        return self.venv / "bin" / "mlserver"


def cache_dir() -> Path:
    return Path(os.environ.get("REFITD_BENCH_CACHE") or Path.home() / ".cache" / "refitd-bench")


def install(cache: Path | None = None) -> Installed | str:
    """The peer's virtualenv, built on first use; a one-line reason when it cannot be had."""
    venv = (cache or cache_dir()) / "mlserver-venv"
    stamp = venv / "refitd-bench.json"
    if stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("spec") == list(SPEC):
            return Installed(venv, saved["versions"])
    python = venv / "bin" / "python"
    steps = [] if python.exists() else [[sys.executable, "-m", "venv", "--clear", str(venv)]]
    steps.append([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *SPEC])
    for step in steps:
        log.warning("installing the peer: %s", " ".join(step))
        reason = _call(step, INSTALL_TIMEOUT_S)
        if reason:
            return f"cannot install {' '.join(SPEC)} into {venv}: {reason}"
    try:
        probe = subprocess.run([str(python), "-c", f"{RUNTIME_SOURCE}\n{_VERSIONS}"], capture_output=True, text=True,
                               timeout=300, env=env(Installed(venv, {})))
    except subprocess.TimeoutExpired:
        return f"{' '.join(SPEC)} installed into {venv} but importing its runtime took over 300 s"
    if probe.returncode != 0:
        return f"{' '.join(SPEC)} installed into {venv} but does not import: {_last_line(probe.stderr)}"
    versions = json.loads(probe.stdout.strip().splitlines()[-1])
    stamp.write_text(json.dumps({"spec": list(SPEC), "versions": versions}, indent=2))
    return Installed(venv, versions)


def _call(cmd: list[str], timeout: float) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    except OSError as exc:
        return str(exc)
    return None if done.returncode == 0 else _last_line(done.stderr or done.stdout)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("WARNING: Location")]
    return lines[-1][:300] if lines else "no output"


def repository(artifact: Path, meta: ArtifactMeta, root: Path, *, ports: tuple[int, int, int],
               max_batch_size: int, max_wait_ms: float) -> Path:
    """An MLServer model repository in ``root`` serving the artifact's fp32 graph; returns ``root``.

    The model folder links the graph as ``model.onnx`` beside the checkpoint's config and tokenizer
    files (the weights are left out: Optimum loads the ONNX file). ``ports`` are HTTP, gRPC, metrics.
    """
    folder = root / MODEL
    folder.mkdir(parents=True, exist_ok=True)
    for f in (artifact / HF_DIR).iterdir():
        if f.is_file() and not f.name.endswith(_WEIGHTS):
            (folder / f.name).symlink_to(f.resolve())
    (folder / "model.onnx").symlink_to((artifact / meta.model_file).resolve())
    (folder / f"{RUNTIME_MODULE}.py").write_text(RUNTIME_SOURCE)
    http, grpc, metrics = ports
    server = {"host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
              "metrics_dir": str(root / ".metrics"), "debug": False, "load_models_at_startup": True}
    model = {"name": MODEL, "implementation": f"{RUNTIME_MODULE}.HuggingFaceRuntime",
             "max_batch_size": max_batch_size, "max_batch_time": max_wait_ms / 1000,
             "parameters": {"uri": str(folder),
                            "extra": {"task": "text-classification", "optimum_model": True,
                                      "pretrained_model": str(folder), "pretrained_tokenizer": str(folder)}}}
    (root / "settings.json").write_text(json.dumps(server, indent=2))
    (folder / "model-settings.json").write_text(json.dumps(model, indent=2))
    return root


def command(installed: Installed, repo: Path) -> list[str]:
    return [str(installed.mlserver), "start", str(repo)]


def env(installed: Installed) -> dict[str, str]:
    """The peer's environment: offline, its virtualenv first on PATH, none of refitd's variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REFITD_", "VIRTUAL_ENV", "PYTHON"))}
    return base | {"PATH": f"{installed.venv / 'bin'}:{base.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def ready_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready"


def infer_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"


def body(text: str) -> dict:
    """One text as an Open Inference Protocol V2 request: a BYTES tensor the runtime passes as the pipeline's
    ``inputs`` keyword, which MLServer's adaptive batching joins into one list."""
    return {"inputs": [{"name": "inputs", "shape": [1], "datatype": "BYTES", "data": [text]}]}

