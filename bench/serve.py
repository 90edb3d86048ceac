"""``python -m refitd.bench serve``: refitd serve vs a FastAPI + PyTorch eager baseline, in one run.

Both serve the same fine-tuned weights. Each server runs alone (2 cores: no
contention between them), driven by a closed-loop async client at concurrency
1, 8 and 32 with real corpus texts (the stream split, never trained on). The
raw ONNX Runtime session is measured in the same run as the ceiling. Each cell
is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from refitd.bench.report import save
from refitd.bench.load import LoadResult, drive, median_of
from refitd.core import registry
from refitd.core.artifacts import ArtifactMeta, ArtifactStore
from refitd.core.datasets import load_configured
from refitd.core.db import engine_for, session_scope
from refitd.core.settings import Settings
from refitd.core.encoding import encode, load_tokenizer



def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


def _texts(n: int) -> list[str]:
    frame = load_configured(data=None, text_column="text", label_column="label", topics=["airline"],
                            validation_fraction=0.1, test_fraction=0.15)
    stream = frame[frame["split"] == "stream"]["text"].tolist()
    return (stream * (n // len(stream) + 1))[:n]


def _champion(home: Path) -> tuple[str, Path]:
    settings = Settings.load(home=home)
    with session_scope(engine_for(settings)) as s:
        champ = registry.get_champion(s)
    if champ is None:
        raise SystemExit(f"no champion in {home}: run `refitd --home {home} init` first")
    return champ.version, ArtifactStore.from_settings(settings).path(champ.version)


def raw_ort(artifact: Path, texts: list[str], model_file: str) -> dict[str, Any]:
    """Raw session throughput at several batch sizes, and single-text latency."""
    import onnxruntime as ort

    meta = ArtifactMeta.read(artifact)
    tok = load_tokenizer(artifact / meta.tokenizer_file, max_length=meta.max_length)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(artifact / model_file), options, providers=["CPUExecutionProvider"])
    out: dict[str, Any] = {"seq_per_s": {}}
    for bs in (1, 8, 32, 64):
        sample = texts[: max(256, bs * 8)]
        start = time.perf_counter()
        for i in range(0, len(sample), bs):
            session.run(["logits", "embedding"], encode(tok, sample[i : i + bs]))
        out["seq_per_s"][bs] = len(sample) / (time.perf_counter() - start)
    lat = []
    for t in texts[:300]:
        start = time.perf_counter()
        session.run(["logits", "embedding"], encode(tok, [t]))
        lat.append((time.perf_counter() - start) * 1000)
    out["single_p50_ms"] = float(np.median(lat))
    out["best_batch"] = max(out["seq_per_s"], key=out["seq_per_s"].get)
    out["best_seq_per_s"] = out["seq_per_s"][out["best_batch"]]
    return out


def _run_server(cmd: list[str], env: dict[str, str], health: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(health)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def _measure(url: str, texts: list[str], body, concurrencies: list[int], repeats: int, n: int) -> dict[int, LoadResult]:
    drive(url, texts[:50], 4, body)  # warm-up
    return {c: median_of([drive(url, texts[:n], c, body) for _ in range(repeats)]) for c in concurrencies}


def run(home: Path, *, requests: int, repeats: int) -> dict[str, Any]:
    version, artifact = _champion(home)
    meta = ArtifactMeta.read(artifact, version=version)
    texts = _texts(max(requests, 1000))
    conc = [1, 8, 32]
    results: dict[str, Any] = {"version": version, "max_length": meta.max_length, "requests": requests}
    results["raw_fp32"] = raw_ort(artifact, texts, meta.model_file)
    results["raw_int8"] = raw_ort(artifact, texts, meta.int8_file) if meta.int8_file else None
    env = {**os.environ, "REFITD_HOME": str(home), "REFITD_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    refitd = [sys.executable, "-m", "refitd.cli", "serve"]
    for precision in ("fp32", "int8") if results["raw_int8"] else ("fp32",):
        port = _free_port()
        proc = _run_server(refitd + ["--port", str(port)], {**env, "REFITD_SERVING__PRECISION": precision},
                           f"http://127.0.0.1:{port}/v2/health/ready")
        try:
            results[f"refitd_{precision}"] = _measure(f"http://127.0.0.1:{port}/v1/predict", texts,
                                                      lambda t: {"text": t}, conc, repeats, requests)
        finally:
            _stop(proc)
    port = _free_port()
    proc = _run_server([sys.executable, "-m", "refitd.bench.baseline_server", str(artifact), str(port)], env,
                       f"http://127.0.0.1:{port}/health")
    try:
        results["baseline"] = _measure(f"http://127.0.0.1:{port}/predict", texts, lambda t: {"text": t},
                                       conc, repeats, max(100, requests // 4))
    finally:
        _stop(proc)
    return results


def render(r: dict[str, Any]) -> str:
    lines = [f"serve: {r['version']} (max_length {r['max_length']}), closed-loop clients, one text per request, median of runs",
             "", "| server | conc | req/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name in ("refitd_fp32", "refitd_int8", "baseline"):
        for c, res in (r.get(name) or {}).items():
            lines.append(f"| {name} | {c} | {res.rps:.0f} | {res.pct(0.5):.1f} | {res.pct(0.99):.1f} | {res.errors} |")
    raw = r["raw_fp32"]
    lines += ["", f"raw ORT fp32: {', '.join(f'batch {b}: {v:.0f}/s' for b, v in raw['seq_per_s'].items())}; "
              f"single-text p50 {raw['single_p50_ms']:.2f} ms"]
    if r.get("raw_int8"):
        ri = r["raw_int8"]
        lines.append(f"raw ORT int8: {', '.join(f'batch {b}: {v:.0f}/s' for b, v in ri['seq_per_s'].items())}; "
                     f"single-text p50 {ri['single_p50_ms']:.2f} ms")
    f32, base = r["refitd_fp32"], r["baseline"]
    lines += ["", "| ratio | value | target |", "|---|---:|---:|",
              f"| refitd fp32 / baseline req/s at 32 | {f32[32].rps / base[32].rps:.2f}× | ≥ 5× |",
              f"| refitd fp32 at 32 / raw ORT fp32 best batch | {f32[32].rps / raw['best_seq_per_s']:.0%} | ≥ 60% |",
              f"| refitd fp32 p50 at 1 / raw single-text p50 | {f32[1].pct(0.5) / raw['single_p50_ms']:.2f}× | ≤ 1.5× |"]
    if r.get("refitd_int8"):
        lines.append(f"| refitd int8 / fp32 req/s at 32 | {r['refitd_int8'][32].rps / f32[32].rps:.2f}× | — |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench serve")
    p.add_argument("--home", type=Path, default=None, help="a state dir with a champion (default: train one with `refitd init`)")
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    home = args.home
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="refitd-bench-"))
        subprocess.run([sys.executable, "-m", "refitd.cli", "--home", str(home), "init"], check=True)
    results = run(home, requests=args.requests, repeats=args.repeats)
    print(render(results))
    save("serve", results, default=_jsonable)
    return 0


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """From a saved result (JSON: concurrency keys are strings)."""
    f32, base, raw = r["refitd_fp32"], r["baseline"], r["raw_fp32"]
    rows = [("refitd fp32 / baseline req/s at concurrency 32", f"{f32['32']['rps'] / base['32']['rps']:.2f}×", "≥ 5×"),
            ("refitd fp32 at 32 / raw ORT best batch", f"{f32['32']['rps'] / raw['best_seq_per_s']:.0%}", "≥ 60%"),
            ("refitd p50 at 1 / raw single-text p50", f"{f32['1']['p50_ms'] / raw['single_p50_ms']:.2f}×", "≤ 1.5×")]
    if r.get("refitd_int8"):
        rows.append(("refitd INT8 / fp32 req/s at 32", f"{r['refitd_int8']['32']['rps'] / f32['32']['rps']:.2f}×", "—"))
    return rows


def _jsonable(o: Any) -> Any:
    if isinstance(o, LoadResult):
        return {"concurrency": o.concurrency, "rps": o.rps, "p50_ms": o.pct(0.5), "p99_ms": o.pct(0.99), "errors": o.errors}
    return str(o)
