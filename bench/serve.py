"""``python -m refitd.bench serve``: refitd serve vs a real peer and a straw man, in one run.

All serve the same fine-tuned weights: refitd (fp32 and INT8), MLServer's HuggingFace runtime on
ONNX Runtime with adaptive batching (the peer a user would pick instead; ``bench/peer.py``), and
FastAPI + PyTorch eager, unbatched (the baseline). A closed-loop client (``bench/load.py``: one
kept-alive ``http.client`` connection per concurrent request, bodies encoded beforehand) drives one server at
a time (the others idle) at concurrency 1, 8 and 32 with real corpus texts (the stream split, never
trained on, cut to the model's max_length). The raw ONNX Runtime session, with the server's thread
count, is the ceiling. ``--repeats`` rounds interleave every server and the raw sessions, so a
change in a shared machine's load falls on all of them alike; each cell is the median round.
Everything is measured twice: unpinned (client and server share every core) and pinned (the client
on one core, the servers on the others; ``bench/cores.py``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from refitd.bench import peer as mlserver
from refitd.bench.cores import Layout, layouts, pinned
from refitd.bench.load import LoadResult, drive, median_of
from refitd.bench.report import save
from refitd.core import registry
from refitd.core.artifacts import ArtifactMeta, ArtifactStore
from refitd.core.datasets import load_configured
from refitd.core.db import engine_for, session_scope
from refitd.core.encoding import encode, load_tokenizer
from refitd.core.settings import Settings

CONCURRENCY = (1, 8, 32)
SERVERS = {"refitd_fp32": "refitd fp32", "refitd_int8": "refitd INT8", "peer": f"{mlserver.NAME} (HF runtime, ORT)",
           "baseline": "FastAPI + torch eager"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before {url} answered")
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


def _fitted(texts: list[str], tokenizer_file: Path, max_length: int) -> list[str]:
    """Each text cut to at most ``max_length`` tokens, the way refitd truncates, so that every server does the same
    work: refitd, the baseline and the raw session truncate, MLServer's pipeline does not."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_truncation()
    tok.no_padding()
    out = []
    for text in texts:
        keep = max_length - 2  # [CLS] and [SEP]
        enc = tok.encode(text)
        while len(enc.ids) > max_length and keep > 0:
            text = text[: enc.offsets[keep][1]] if keep < len(enc.offsets) else text
            enc, keep = tok.encode(text), keep - 1
        out.append(text)
    return out


def _champion(home: Path) -> tuple[str, Path, Settings]:
    settings = Settings.load(home=home)
    with session_scope(engine_for(settings)) as s:
        champ = registry.get_champion(s)
    if champ is None:
        raise SystemExit(f"no champion in {home}: run `refitd --home {home} init` first")
    return champ.version, ArtifactStore.from_settings(settings).path(champ.version), settings


def raw_ort(artifact: Path, texts: list[str], model_file: str, threads: int | None = None,
            n: int = 256) -> dict[str, Any]:
    """Raw session throughput at several batch sizes (about ``n`` texts each, at least 2 batches), and
    single-text latency over ``n`` texts, on ``threads`` intra-op threads."""
    import onnxruntime as ort

    meta = ArtifactMeta.read(artifact)
    tok = load_tokenizer(artifact / meta.tokenizer_file, max_length=meta.max_length)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)  # what refitd's runtime does
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifact / model_file), options, providers=["CPUExecutionProvider"])
    out: dict[str, Any] = {"threads": options.intra_op_num_threads, "seq_per_s": {}}
    for bs in (1, 8, 32, 64):
        sample = texts[: max(n, bs * 2)]
        start = time.perf_counter()
        for i in range(0, len(sample), bs):
            session.run(["logits", "embedding"], encode(tok, sample[i : i + bs]))
        out["seq_per_s"][str(bs)] = len(sample) / (time.perf_counter() - start)
    lat = []
    for t in texts[:n]:
        start = time.perf_counter()
        session.run(["logits", "embedding"], encode(tok, [t]))
        lat.append((time.perf_counter() - start) * 1000)
    out["single_p50_ms"] = float(np.median(lat))
    out["best_batch"] = max(out["seq_per_s"], key=out["seq_per_s"].get)
    out["best_seq_per_s"] = out["seq_per_s"][out["best_batch"]]
    return out


def _run_server(cmd: list[str], env: dict[str, str], health: str, *, cores: frozenset[int] | None = None,
                log: Path | None = None, timeout: float = 120) -> subprocess.Popen:
    """Start a server on ``cores`` (its threads and children inherit them) and wait until ``health`` answers."""
    with pinned(cores), open(log or os.devnull, "wb") as out:  # the child keeps its own copy of the file
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(health, timeout, proc)
    except RuntimeError:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass(frozen=True)
class Target:
    """A started server: where to send, the request body for a text, and how many requests a run sends."""

    url: str
    body: Callable[[str], dict]
    requests: int


def _json_text(text: str) -> dict:
    return {"text": text}


def _start_servers(layout: Layout, stack: ExitStack, *, artifact: Path, meta: ArtifactMeta, settings: Settings,
                   peer: mlserver.Installed | str | None, requests: int) -> tuple[dict[str, Target], dict[str, Any]]:
    """Start every server on the layout's server cores (each stopped when ``stack`` closes); the peer's skip reason."""
    targets: dict[str, Target] = {}
    env = {**os.environ, "REFITD_HOME": str(settings.home), "REFITD_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
           "REFITD_SERVING__THREADS": str(layout.threads)}
    for precision in ("fp32", "int8") if meta.int8_file else ("fp32",):
        port = _free_port()
        stack.callback(_stop, _run_server([sys.executable, "-m", "refitd.cli", "serve", "--port", str(port)],
                                          {**env, "REFITD_SERVING__PRECISION": precision},
                                          f"http://127.0.0.1:{port}/v2/health/ready", cores=layout.server))
        targets[f"refitd_{precision}"] = Target(f"http://127.0.0.1:{port}/v1/predict", _json_text, requests)
    skipped: dict[str, Any] = {}
    if isinstance(peer, mlserver.Installed):
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="refitd-bench-peer-")))
        ports = (_free_port(), _free_port(), _free_port())
        repo = mlserver.repository(artifact, meta, tmp / "repo", ports=ports,
                                   max_batch_size=settings.serving.max_batch_size,
                                   max_wait_ms=settings.serving.max_wait_ms)
        try:
            stack.callback(_stop, _run_server(mlserver.command(peer, repo), mlserver.env(peer),
                                              mlserver.ready_url(ports[0]), cores=layout.server,
                                              log=tmp / "mlserver.log", timeout=300))
            targets["peer"] = Target(mlserver.infer_url(ports[0]), mlserver.body, requests)
        except RuntimeError as exc:
            tail = [line for line in (tmp / "mlserver.log").read_text(errors="replace").splitlines() if line.strip()]
            skipped["peer"] = {"skipped": f"{mlserver.NAME} did not start: {exc}; {' '.join(tail[-1:])[:300]}"}
    else:
        skipped["peer"] = {"skipped": peer or "--peer none"}
    port = _free_port()
    stack.callback(_stop, _run_server([sys.executable, "-m", "refitd.bench.baseline_server", str(artifact), str(port),
                                       str(layout.threads)], env, f"http://127.0.0.1:{port}/health",
                                      cores=layout.server))
    targets["baseline"] = Target(f"http://127.0.0.1:{port}/predict", _json_text, max(100, requests // 4))
    return targets, skipped


def _rounds(layout: Layout, targets: dict[str, Target], raw: dict[str, Callable[[], dict[str, Any]]],
            texts: list[str], repeats: int) -> dict[str, Any]:
    """``repeats`` rounds; in each the raw sessions, then every concurrency with each server in turn (the others
    idle), so that a change in the machine's load falls on all alike. Per server and concurrency the median run."""
    runs: dict[str, dict[int, list[LoadResult]]] = {name: {c: [] for c in CONCURRENCY} for name in targets}
    raws: dict[str, list[dict[str, Any]]] = {key: [] for key in raw}
    with pinned(layout.client):
        for t in targets.values():
            drive(t.url, texts[:50], 4, t.body)  # warm-up
    for _ in range(repeats):
        with pinned(layout.server):
            for key, measure in raw.items():
                raws[key].append(measure())
        with pinned(layout.client):
            for c in CONCURRENCY:
                for name, t in targets.items():
                    runs[name][c].append(drive(t.url, texts[: t.requests], c, t.body))
    out: dict[str, Any] = {key: sorted(rs, key=lambda r: r["best_seq_per_s"])[len(rs) // 2] for key, rs in raws.items()}
    for name, per in runs.items():
        out[name] = {str(c): _figures(median_of(rs)) for c, rs in per.items()}
    return out


def _figures(r: LoadResult) -> dict[str, Any]:
    return {"rps": r.rps, "p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99), "errors": r.errors}


def _one_layout(layout: Layout, *, artifact: Path, meta: ArtifactMeta, settings: Settings, texts: list[str],
                peer: mlserver.Installed | str | None, requests: int, repeats: int) -> dict[str, Any]:
    """Every server started on this layout's cores, then measured in interleaved rounds beside the raw sessions."""
    n = min(256, requests)
    raw = {"raw_fp32": lambda: raw_ort(artifact, texts, meta.model_file, layout.threads, n)}
    if meta.int8_file:
        raw["raw_int8"] = lambda: raw_ort(artifact, texts, meta.int8_file, layout.threads, n)
    with ExitStack() as stack:
        targets, skipped = _start_servers(layout, stack, artifact=artifact, meta=meta, settings=settings, peer=peer,
                                          requests=requests)
        figures = _rounds(layout, targets, raw, texts, repeats)
    return {"describe": layout.describe(), "threads": layout.threads, "raw_int8": None, **figures, **skipped}


def run(home: Path, *, requests: int, repeats: int, peer: str = "mlserver", pin: str = "both") -> dict[str, Any]:
    version, artifact, settings = _champion(home)
    meta = ArtifactMeta.read(artifact, version=version)
    texts = _fitted(_texts(max(requests, 1000)), artifact / meta.tokenizer_file, meta.max_length)
    chosen, pin_skipped = layouts(pin)
    installed = mlserver.install() if peer == "mlserver" else None
    results: dict[str, Any] = {"version": version, "max_length": meta.max_length, "requests": requests,
                               "repeats": repeats, "cpus": sorted(os.sched_getaffinity(0)), "pin_skipped": pin_skipped,
                               "peer": _peer_info(installed, settings), "layouts": {}}
    for layout in chosen:
        results["layouts"][layout.name] = _one_layout(layout, artifact=artifact, meta=meta, settings=settings,
                                                      texts=texts, peer=installed, requests=requests, repeats=repeats)
    return results


def _peer_info(installed: mlserver.Installed | str | None, settings: Settings) -> dict[str, Any]:
    if not isinstance(installed, mlserver.Installed):
        return {"name": mlserver.NAME, "skipped": installed or "--peer none"}
    return {"name": mlserver.NAME, "runtime": "mlserver_huggingface.HuggingFaceRuntime, optimum_model (ONNX Runtime)",
            "versions": installed.versions, "max_batch_size": settings.serving.max_batch_size,
            "max_batch_time_ms": settings.serving.max_wait_ms, "graph": "the champion's fp32 model.onnx"}


def render(r: dict[str, Any]) -> str:
    lines = [f"serve: {r['version']} (max_length {r['max_length']}), closed-loop clients, one text per request, "
             f"median of {r.get('repeats', '?')} runs", _describe_peer(r.get("peer") or {})]
    if r.get("pin_skipped"):
        lines.append(f"pinned layout skipped: {r['pin_skipped']}")
    head = " | ".join(f"c={c} req/s | p50 ms" for c in CONCURRENCY)
    lines += ["", f"| layout | server | {head} | p99 ms at 32 | errors |", "|---|---|" + "---:|" * (2 * len(CONCURRENCY) + 2)]
    for name, lay in _layouts(r).items():
        for key, label in SERVERS.items():
            cells = lay.get(key) or {"skipped": "not measured"}
            if "skipped" in cells:
                lines.append(f"| {name} | {label} | skipped: {cells['skipped']} |" + " |" * (2 * len(CONCURRENCY) + 1))
                continue
            figures = " | ".join(f"{cells[str(c)]['rps']:.0f} | {cells[str(c)]['p50_ms']:.1f}" for c in CONCURRENCY)
            errors = sum(res["errors"] for res in cells.values())
            lines.append(f"| {name} | {label} | {figures} | {cells['32']['p99_ms']:.1f} | {errors} |")
    lines.append("")
    for name, lay in _layouts(r).items():
        lines.append(lay.get("describe", name))
        for key in ("raw_fp32", "raw_int8"):
            if raw := lay.get(key):
                lines.append(f"  raw ORT {key[4:]} (intra-op threads {raw.get('threads', '?')}): "
                             f"{', '.join(f'batch {b}: {v:.0f}/s' for b, v in raw['seq_per_s'].items())}; "
                             f"single-text p50 {raw['single_p50_ms']:.2f} ms")
    lines += ["", "| ratio | value | target |", "|---|---:|---:|"]
    lines += [f"| {name} | {value} | {target} |" for name, value, target in ratios(r)]
    return "\n".join(lines)


def _describe_peer(p: dict[str, Any]) -> str:
    if "skipped" in p:
        return f"peer {p.get('name', mlserver.NAME)} skipped: {p['skipped']}"
    v = p.get("versions", {})
    return (f"peer: {p['name']} {v.get('mlserver')}, mlserver-huggingface {v.get('mlserver-huggingface')} "
            f"(optimum {v.get('optimum')}, onnxruntime {v.get('onnxruntime')}, transformers {v.get('transformers')}), "
            f"{p.get('graph')}, adaptive batching up to {p.get('max_batch_size')} texts / {p.get('max_batch_time_ms')} ms")


def _layouts(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return r["layouts"] if "layouts" in r else {"unpinned": r}  # results saved before layouts were one layout


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """From a result (as saved: concurrency keys are strings), per layout."""
    rows: list[tuple[str, str, str]] = []
    for name, lay in _layouts(r).items():
        f32, base, raw = lay["refitd_fp32"], lay["baseline"], lay["raw_fp32"]
        threads = raw.get("threads") or lay.get("threads") or "?"
        rows += [(f"{name}: refitd fp32 / baseline req/s at concurrency 32", f"{f32['32']['rps'] / base['32']['rps']:.2f}×",
                  "≥ 5×"),
                 (f"{name}: refitd fp32 at 32 / raw ORT best batch, same threads ({threads})",
                  f"{f32['32']['rps'] / raw['best_seq_per_s']:.0%}", "≥ 80%" if name == "pinned" else "≥ 60%"),
                 (f"{name}: refitd p50 at 1 / raw single-text p50", f"{f32['1']['p50_ms'] / raw['single_p50_ms']:.2f}×",
                  "≤ 1.5×")]
        for precision in ("fp32", "int8"):  # what the server adds to a lone text: HTTP, validation, hand-off, log
            served, alone = lay.get(f"refitd_{precision}"), lay.get(f"raw_{precision}")
            if served and alone:
                rows.append((f"{name}: refitd {precision.replace('int8', 'INT8')} p50 at 1 − raw single-text p50",
                              f"{served['1']['p50_ms'] - alone['single_p50_ms']:+.2f} ms", "≤ 1.0 ms"))
        if lay.get("refitd_int8"):
            rows.append((f"{name}: refitd INT8 / fp32 req/s at 32", f"{lay['refitd_int8']['32']['rps'] / f32['32']['rps']:.2f}×",
                         "—"))
        rows += _peer_ratios(name, f32, lay.get("peer") or {"skipped": "not measured"})
    return rows


def _peer_ratios(name: str, f32: dict[str, Any], peer: dict[str, Any]) -> list[tuple[str, str, str]]:
    if "skipped" in peer:
        return [(f"{name}: refitd fp32 / {mlserver.NAME}", f"skipped: {peer['skipped'][:120]}", "—")]
    conc = [str(c) for c in CONCURRENCY]
    rps = " · ".join(f"{f32[c]['rps'] / peer[c]['rps']:.2f}×" if peer[c]["rps"] else "∞" for c in conc)
    p50 = " · ".join(f"{f32[c]['p50_ms'] / peer[c]['p50_ms']:.2f}×" for c in conc)
    return [(f"{name}: refitd fp32 / {mlserver.NAME} req/s at c = 1 · 8 · 32", rps, "≥ 1×"),
            (f"{name}: refitd fp32 / {mlserver.NAME} p50 at c = 1 · 8 · 32", p50, "≤ 1×")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench serve")
    p.add_argument("--home", type=Path, default=None, help="a state dir with a champion (default: train one with `refitd init`)")
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peer", choices=("mlserver", "none"), default="mlserver",
                   help="the real peer: MLServer's HuggingFace runtime on ONNX Runtime, installed on first use into "
                        "its own virtualenv under ~/.cache/refitd-bench (REFITD_BENCH_CACHE); none skips it")
    p.add_argument("--pin", choices=("both", "on", "off"), default="both",
                   help="on: the client on the first CPU, the server and its inference threads on the others; "
                        "off: all share every CPU; both: each in turn")
    args = p.parse_args(argv)
    home = args.home
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="refitd-bench-"))
        subprocess.run([sys.executable, "-m", "refitd.cli", "--home", str(home), "init"], check=True)
    results = run(home, requests=args.requests, repeats=args.repeats, peer=args.peer, pin=args.pin)
    print(render(results))
    save("serve", results)
    return 0
