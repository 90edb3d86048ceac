"""``python -m refitd.bench route``: what answering ``POST /v1/predict`` (and V2 infer) outside FastAPI's routing saves a
lone request.

One ``refitd serve``-built app (the real data plane, batcher and prediction log) with a twin of the route:
the same endpoint registered with FastAPI at ``/bench/predict-fastapi`` (first in the route table, so its
matching costs the least it can), beside ``/v1/predict``, which refitd's pure-ASGI ``FastRoute`` answers
(serving/fastpath.py). The server runs on one core with one inference thread; one client on another core
sends every text to both routes in turn, on one keep-alive connection, the order alternating, so a shared
machine's changing load falls on both alike. Reported: each route's p50, and the median of the per-text
differences (FastAPI-routed minus fast), per precision. The Open Inference Protocol's infer route is paired the
same way, in a second phase after the ``/v1`` pairs: ``/v2/models/<name>/infer`` (FastRoute) against its
FastAPI-routed twin at ``/bench/v2/models/{model}/infer`` (second in the route table), one text per request as JSON.

Beside them, the same text goes to a raw ONNX Runtime session (the served graph, one intra-op thread, the same
tokenizer; a helper process pinned to the server's core, timing its own encode and run) in the same turn, so
"what the server adds to a lone request" — served p50 at concurrency 1 minus raw single-text p50 — is read
per text too: the median of (served − raw) pairs. ``bench serve`` measures the same with raw and served in
separate rounds of hundreds of requests, minutes apart, where a shared host's speed drifts by more than the
difference (its INT8 raw single-text p50 moved 5.1 → 6.5 ms within a minute in one process).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The bench's helpers are imported where the client side runs: the server child imports what
# `refitd serve` does and no more (they pull in pandas).

TWIN = "/bench/predict-fastapi"
FAST = "/v1/predict"
V2_ROUTE = "/v2/models/{model}/infer"
V2_TWIN = "/bench" + V2_ROUTE


def serve(port: int) -> None:
    """The server side (a child process): refitd's app plus FastAPI-routed twins of /v1/predict and V2 infer."""
    from refitd.core.settings import Settings
    from refitd.serving.server import GracefulServer, build, uvicorn_config

    settings = Settings.load()
    app = build(settings).app
    for path, twin in ((V2_ROUTE, V2_TWIN), (FAST, TWIN)):  # the /v1 twin first in the table, the V2 twin second:
        route = next(r for r in app.routes if getattr(r, "path", None) == path)  # the least matching cost each
        app.add_api_route(twin, route.endpoint, methods=["POST"], include_in_schema=False)  # type: ignore[attr-defined]
        app.router.routes.insert(0, app.router.routes.pop())
    GracefulServer(uvicorn_config(settings, app, host="127.0.0.1", port=port)).run()


def raw(artifact: Path, model_file: str) -> None:
    """The raw side (a child process on the server's core): for each text read from stdin (a JSON line), the
    milliseconds of one encode and session run, as ``bench serve``'s raw single-text figure takes them."""
    import onnxruntime as ort

    from refitd.core.artifacts import ArtifactMeta
    from refitd.core.encoding import encode, load_tokenizer

    meta = ArtifactMeta.read(artifact)
    tokenizer = load_tokenizer(artifact / meta.tokenizer_file, max_length=meta.max_length)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(artifact / model_file), options, providers=["CPUExecutionProvider"])
    for line in sys.stdin:
        start = time.perf_counter()
        session.run(["logits", "embedding"], encode(tokenizer, [json.loads(line)]))
        print(f"{(time.perf_counter() - start) * 1000:.6f}", flush=True)


def _paired(port: int, bodies: list[bytes], texts: list[str], helper: Any, *, model: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    lat: dict[str, list[float]] = {TWIN: [], FAST: [], "raw": []}
    v2_fast, v2_twin = V2_ROUTE.format(model=model), V2_TWIN.format(model=model)
    v2: dict[str, list[float]] = {v2_fast: [], v2_twin: []}

    def alone(text: str) -> float:
        helper.stdin.write(json.dumps(text) + "\n")
        helper.stdin.flush()
        return float(helper.stdout.readline())

    def one(path: str, body: bytes) -> float:
        start = time.perf_counter()
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")
        return (time.perf_counter() - start) * 1000

    for body, text in zip(bodies[:50], texts[:50], strict=False):  # warm-up
        one(TWIN, body)
        one(FAST, body)
        alone(text)
    for i, (body, text) in enumerate(zip(bodies, texts, strict=True)):
        for turn in ((TWIN, FAST, "raw"), (FAST, "raw", TWIN), ("raw", TWIN, FAST))[i % 3]:
            lat[turn].append(alone(text) if turn == "raw" else one(turn, body))
    v2_bodies = [json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}]}).encode()
                 for t in texts]
    for body in v2_bodies[:50]:  # warm-up
        one(v2_twin, body)
        one(v2_fast, body)
    for i, body in enumerate(v2_bodies):
        for path in ((v2_twin, v2_fast), (v2_fast, v2_twin))[i % 2]:
            v2[path].append(one(path, body))
    conn.close()
    return {"fastapi_p50_ms": statistics.median(lat[TWIN]), "fast_p50_ms": statistics.median(lat[FAST]),
            "saved_ms": statistics.median(a - b for a, b in zip(lat[TWIN], lat[FAST], strict=True)),
            "raw_p50_ms": statistics.median(lat["raw"]),
            "added_ms": statistics.median(a - b for a, b in zip(lat[FAST], lat["raw"], strict=True)),
            "v2_fastapi_p50_ms": statistics.median(v2[v2_twin]), "v2_fast_p50_ms": statistics.median(v2[v2_fast]),
            "v2_saved_ms": statistics.median(a - b for a, b in zip(v2[v2_twin], v2[v2_fast], strict=True))}


def run(home: Path, *, texts: int) -> dict[str, Any]:
    from refitd.bench.cores import pinned
    from refitd.bench.serve import _champion, _fitted, _free_port, _run_server, _stop, _texts
    from refitd.core.artifacts import ArtifactMeta

    version, artifact, settings = _champion(home)
    meta = ArtifactMeta.read(artifact, version=version)
    sample = _fitted(_texts(max(texts, 100)), artifact / meta.tokenizer_file, meta.max_length)[:texts]
    bodies = [json.dumps({"text": t}).encode() for t in sample]
    cpus = sorted(os.sched_getaffinity(0))
    client, server = frozenset(cpus[:1]), frozenset(cpus[-1:])
    out: dict[str, Any] = {"version": version, "texts": len(bodies), "client_cpu": cpus[0], "server_cpu": cpus[-1],
                           "precisions": {}}
    env = {**os.environ, "REFITD_HOME": str(settings.home), "REFITD_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
           "REFITD_SERVING__THREADS": "1"}
    for precision in ("fp32", "int8") if meta.int8_file else ("fp32",):
        port = _free_port()
        proc = _run_server([sys.executable, "-m", "refitd.bench.route", "--serve", str(port)],
                           {**env, "REFITD_SERVING__PRECISION": precision}, f"http://127.0.0.1:{port}/v2/health/ready",
                           cores=server)
        helper = subprocess.Popen([sys.executable, "-m", "refitd.bench.route", "--raw", str(artifact),
                                   meta.model_for(precision)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env, preexec_fn=lambda: os.sched_setaffinity(0, server))
        try:
            with pinned(client):
                out["precisions"][precision] = _paired(port, bodies, sample, helper, model=settings.model.name)
        finally:
            helper.stdin.close()  # type: ignore[union-attr]
            helper.wait(timeout=30)
            _stop(proc)
    return out


def render(r: dict[str, Any]) -> str:
    lines = [f"bench route: {r['version']}, {r['texts']} texts, each to both routes in turn; server on CPU "
             f"{r['server_cpu']} (1 inference thread), client on CPU {r['client_cpu']}",
             "| precision | raw ORT p50 ms | FastRoute p50 ms | FastAPI-routed p50 ms | served − raw (median of pairs) "
             "| saved by FastRoute (median of pairs) |",
             "|---|---:|---:|---:|---:|---:|"]
    for precision, p in r["precisions"].items():
        lines.append(f"| {precision} | {p['raw_p50_ms']:.3f} | {p['fast_p50_ms']:.3f} | {p['fastapi_p50_ms']:.3f} | "
                     f"{p['added_ms']:+.3f} ms | {p['saved_ms']:+.3f} ms |")
    lines += ["", "| precision | V2 infer FastRoute p50 ms | V2 infer FastAPI-routed p50 ms | saved (median of pairs) |",
              "|---|---:|---:|---:|"]
    for precision, p in r["precisions"].items():
        lines.append(f"| {precision} | {p['v2_fast_p50_ms']:.3f} | {p['v2_fastapi_p50_ms']:.3f} | "
                     f"{p['v2_saved_ms']:+.3f} ms |")
    return "\n".join(lines)


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for precision, p in r["precisions"].items():
        out.append((f"{precision}: FastRoute p50 / FastAPI-routed p50 (saved per request)",
                    f"{p['fast_p50_ms'] / p['fastapi_p50_ms']:.3f}× ({p['saved_ms']:+.3f} ms)", "< 1×"))
        out.append((f"{precision}: served − raw single text, median of per-text pairs (client and server on own cores)",
                    f"{p['added_ms']:+.3f} ms", "≤ 1.0 ms"))
        out.append((f"{precision}: V2 infer FastRoute p50 / FastAPI-routed p50 (saved per request)",
                    f"{p['v2_fast_p50_ms'] / p['v2_fastapi_p50_ms']:.3f}× ({p['v2_saved_ms']:+.3f} ms)", "< 1×"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench route", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, default=None, help="a state dir with a champion (default: train a quick one)")
    p.add_argument("--texts", type=int, default=800, help="texts, each sent to both routes")
    p.add_argument("--serve", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--raw", nargs=2, default=None, metavar=("ARTIFACT", "MODEL_FILE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.raw is not None:
        raw(Path(args.raw[0]), args.raw[1])
        return 0
    from refitd.bench.drift import champion_home
    from refitd.bench.report import save

    result = run(champion_home(args.home), texts=args.texts)
    save("route", result)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
