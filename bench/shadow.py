"""``python -m refitd.bench shadow``: what scoring a candidate in shadow costs the requests the champion answers.

One `refitd serve` on a copy of the given home (the registry there gets benchmark versions; yours does not),
measured in interleaved rounds with no version in shadow and with one: a copy of the champion registered as a
candidate and put in shadow (``gate.shadow_share`` of requests scored by it, one ONNX Runtime thread at lower
priority, off the request path). Each round sends single-text requests paced at ``--rates`` (open loop) and then
back to back (concurrency 1); the server's CPU from /proc. Medians over ``--repeats`` rounds; the ratios are
shadow / none (p99 and CPU) and none / shadow (throughput); the shadow's scored and dropped counts come from
the server's status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from refitd.bench.drift import champion_home
from refitd.bench.report import save
from refitd.bench.serve import _free_port, _run_server, _stop, _texts
from refitd.bench.spin import _median, back_to_back, load_table, paced
from refitd.core import registry
from refitd.core.artifacts import MANIFEST, ArtifactStore
from refitd.core.db import engine_for, session_scope
from refitd.core.registration import register_candidate
from refitd.core.settings import Settings


def _copies(settings: Settings, n: int) -> list[str]:
    """Register ``n`` copies of the champion's files as candidates (each shadow round uses one up)."""
    engine, store = engine_for(settings), ArtifactStore.from_settings(settings)
    with session_scope(engine) as session:
        champion = registry.get_champion(session)
    if champion is None:
        raise SystemExit(f"{settings.home} has no champion")
    source = store.verify(champion.version)
    versions = []
    for _ in range(n):
        staged = store.staging("bench-shadow")
        shutil.copytree(source, staged, dirs_exist_ok=True)
        (staged / MANIFEST).unlink(missing_ok=True)
        versions.append(register_candidate(engine, store, staged).version)
    return versions


def _shadow_here(client: httpx.Client, base: str, want: str | None, timeout: float = 60) -> dict[str, Any] | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        shadow = client.get(f"{base}/v1/status").json()["shadow"]
        if (shadow or {}).get("version") == want:
            return shadow
        time.sleep(0.2)
    raise RuntimeError(f"the server did not {'load ' + want if want else 'stop its shadow'} within {timeout:g} s")


def run(home: Path, *, rates: list[float], seconds: float, repeats: int, share: float) -> dict[str, Any]:
    texts = _texts(2000)
    work = Path(tempfile.mkdtemp(prefix="refitd-bench-shadow-"))
    try:
        shutil.copytree(home, work / "home", ignore=shutil.ignore_patterns("*.log", "reports", "spool"))
        settings = Settings.load(home=work / "home", gate={"shadow_share": share})
        engine = engine_for(settings)
        candidates = _copies(settings, repeats)
        env = {**os.environ, "REFITD_HOME": str(settings.home), "REFITD_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
               "REFITD_SERVING__POLL_INTERVAL_S": "0.5", "REFITD_GATE__SHADOW_SHARE": str(share)}
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in ("none", "shadow")}
        counts = []
        with ExitStack() as stack:
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            proc = _run_server([sys.executable, "-m", "refitd.cli", "serve", "--port", str(port)], env,
                               f"{base}/v2/health/ready")
            stack.callback(_stop, proc)
            client = stack.enter_context(httpx.Client(timeout=30))
            url = f"{base}/v1/predict"
            for text in texts[:50]:  # warm-up
                client.post(url, json={"text": text}).raise_for_status()
            for r, candidate in enumerate(candidates):
                for mode in (("none", "shadow") if r % 2 == 0 else ("shadow", "none")):
                    if mode == "shadow":
                        registry.start_shadow(engine, candidate, actor="bench", reason="bench shadow round")
                        _shadow_here(client, base, candidate)
                    for rate in rates:
                        raw[mode].setdefault(f"paced_{rate:g}", []).append(
                            paced(client, url, proc.pid, texts, rate, seconds))
                    raw[mode].setdefault("back_to_back", []).append(back_to_back(client, url, proc.pid, texts, seconds))
                    if mode == "shadow":
                        counts.append(client.get(f"{base}/v1/status").json()["shadow"])
                        registry.end_shadow(engine, candidate, promote=False, reason="bench round over", figures={})
                        _shadow_here(client, base, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {m: {k: _median(v) for k, v in by.items()} for m, by in raw.items()}
    return {"rates": rates, "seconds": seconds, "repeats": repeats, "share": share, "cpus": os.cpu_count(),
            **result, "shadow_counts": counts, "rounds": raw}


def ratios(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    none, shadow = result["none"], result["shadow"]
    rows = []
    for r in result["rates"]:
        k = f"paced_{r:g}"
        rows.append((f"p99 at {r:g} req/s, shadow / none", f"{shadow[k]['p99_ms'] / none[k]['p99_ms']:.2f}", "≤ 1.2"))
        rows.append((f"server CPU at {r:g} req/s, shadow / none", f"{shadow[k]['cpu_per_s'] / none[k]['cpu_per_s']:.2f}",
                     f"≈ 1 + {result['share']:g}"))
    rows.append(("c=1 req/s, shadow / none", f"{shadow['back_to_back']['req_per_s'] / none['back_to_back']['req_per_s']:.2f}",
                 "≥ 0.8"))
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [f"refitd serve with no version in shadow vs one (share {result['share']:g} of requests); {result['cpus']} "
             f"CPUs; medians of {result['repeats']} interleaved rounds of {result['seconds']:g} s",
             *load_table(result, "shadow", ("none", "shadow"))]
    lines.append("shadow per round: " + "; ".join(f"{c['scored']} scored, {c['dropped']} dropped"
                                                 for c in result["shadow_counts"] if c))
    lines += [f"{name}: {value}" for name, value, _ in ratios(result)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench shadow", description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, help="state dir with a champion (default: train a quick one); it is copied")
    p.add_argument("--rates", type=float, nargs="+", default=[15.0, 60.0], help="paced request rates")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--share", type=float, default=0.25, help="gate.shadow_share")
    args = p.parse_args(argv)
    result = run(champion_home(args.home), rates=args.rates, seconds=args.seconds, repeats=args.repeats,
                 share=args.share)
    save("shadow", result)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
