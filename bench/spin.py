"""``python -m refitd.bench spin``: what ONNX Runtime's spinning workers cost a serving process, and what they buy.

Three `refitd serve` processes on the same champion, one per ``serving.spin`` mode: ``on`` (ONNX Runtime's
own default: its intra-op workers spin between calls), ``run`` (refitd's default: they spin while a call
runs and stop after it) and ``off`` (they never spin), measured in interleaved rounds: single-text requests paced at each ``--rates`` (open loop,
from one client thread), where the server's CPU time per second of wall clock is read from /proc (all its
threads, the spinning ones included) beside latency p50/p99; then back to back from one client
(closed loop, concurrency 1) for throughput. Medians over ``--repeats`` rounds.
The CPU a server burns at a steady trickle is CPU a refit or a drift check on the same cores lacks.
Ratios are against ``on``: the CPU each mode saves at each rate, and its c=1 throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from refitd.bench.drift import champion_home
from refitd.bench.report import save
from refitd.bench.serve import _free_port, _run_server, _stop, _texts
from refitd.core.service_sections import SPIN_MODES

TICKS = os.sysconf("SC_CLK_TCK")
MODES = SPIN_MODES  # off, run, on


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def paced(client: httpx.Client, url: str, pid: int, texts: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """One text every 1/rate s for ``seconds``; the server's CPU per wall second and the latencies."""
    lat, n = [], int(rate * seconds)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for i in range(n):
        time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        start = time.perf_counter()
        client.post(url, json={"text": texts[i % len(texts)]}).raise_for_status()
        lat.append((time.perf_counter() - start) * 1000)
    wall = time.perf_counter() - t0
    return {"cpu_per_s": (cpu_seconds(pid) - cpu0) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "requests": n}


def back_to_back(client: httpx.Client, url: str, pid: int, texts: list[str], seconds: float) -> dict[str, Any]:
    lat = []
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        start = time.perf_counter()
        client.post(url, json={"text": texts[len(lat) % len(texts)]}).raise_for_status()
        lat.append((time.perf_counter() - start) * 1000)
    wall = time.perf_counter() - t0
    return {"req_per_s": len(lat) / wall, "cpu_per_s": (cpu_seconds(pid) - cpu0) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def _median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}


def run(home: Path, *, rates: list[float], seconds: float, repeats: int, threads: int | None) -> dict[str, Any]:
    texts = _texts(2000)
    env = {**os.environ, "REFITD_HOME": str(home), "REFITD_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
           # the prediction log stays in this run's home; no scheduler, no checks: serving alone
           **({"REFITD_SERVING__THREADS": str(threads)} if threads else {})}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in MODES}
    with ExitStack() as stack:
        servers = {}
        for mode in MODES:
            port = _free_port()
            proc = _run_server([sys.executable, "-m", "refitd.cli", "serve", "--port", str(port)],
                               {**env, "REFITD_SERVING__SPIN": mode},
                               f"http://127.0.0.1:{port}/v2/health/ready")
            stack.callback(_stop, proc)
            servers[mode] = (f"http://127.0.0.1:{port}/v1/predict", proc.pid)
        client = stack.enter_context(httpx.Client(timeout=30))
        for url, _ in servers.values():
            for text in texts[:50]:  # warm-up
                client.post(url, json={"text": text}).raise_for_status()
        for r in range(repeats):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                url, pid = servers[mode]
                for rate in rates:
                    raw[mode].setdefault(f"paced_{rate:g}", []).append(paced(client, url, pid, texts, rate, seconds))
                raw[mode].setdefault("back_to_back", []).append(back_to_back(client, url, pid, texts, seconds))
    result = {m: {k: _median(v) for k, v in by.items()} for m, by in raw.items()}
    return {"rates": rates, "seconds": seconds, "repeats": repeats, "threads": threads or os.cpu_count(),
            "cpus": os.cpu_count(), **result, "rounds": raw}


def ratios(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    on = result["on"]
    rows = []
    for mode in [m for m in MODES if m != "on" and m in result]:  # results from before "run" hold off and on only
        mine = result[mode]
        rows += [(f"server CPU at {r:g} req/s, spin {mode} / on",
                  f"{mine[f'paced_{r:g}']['cpu_per_s'] / on[f'paced_{r:g}']['cpu_per_s']:.2f}", "< 1")
                 for r in result["rates"]]
        rows.append((f"c=1 req/s, spin {mode} / on",
                     f"{mine['back_to_back']['req_per_s'] / on['back_to_back']['req_per_s']:.2f}", "≥ 0.9"))
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [f"refitd serve, ORT spinning off / run (refitd's default: within a call only) / on (ORT's default); "
             f"{result['threads']} intra-op threads on {result['cpus']} CPUs; medians of {result['repeats']} interleaved "
             f"rounds of {result['seconds']:g} s", *load_table(result, "spin", tuple(m for m in MODES if m in result))]
    lines += [f"{name}: {value}" for name, value, _ in ratios(result)]
    return "\n".join(lines)


def load_table(result: dict[str, Any], column: str, modes: tuple[str, ...]) -> list[str]:
    """Lines of a table: each load (paced rates, then back to back) under each mode, CPU and latency."""
    width = max(len(column), *(len(m) for m in modes))
    lines = [f"{'load':<22} {column:<{width}} {'CPU cores':>9} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7}"]
    for key in [f"paced_{r:g}" for r in result["rates"]] + ["back_to_back"]:
        name = "c=1 back to back" if key == "back_to_back" else f"paced {key[6:]} req/s"
        for mode in modes:
            m = result[mode][key]
            rps = m.get("req_per_s", float(key[6:]) if key != "back_to_back" else 0.0)
            lines.append(f"{name:<22} {mode:<{width}} {m['cpu_per_s']:>9.2f} {m['p50_ms']:>7.2f} {m['p99_ms']:>7.2f} "
                         f"{rps:>7.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench spin", description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, help="state dir with a champion (default: train a quick one)")
    p.add_argument("--rates", type=float, nargs="+", default=[15.0, 60.0], help="paced request rates")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="serving.threads (default: all cores)")
    args = p.parse_args(argv)
    result = run(champion_home(args.home), rates=args.rates, seconds=args.seconds, repeats=args.repeats,
                 threads=args.threads)
    save("spin", result)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
