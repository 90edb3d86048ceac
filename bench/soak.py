"""``python -m refitd.bench.soak``: `refitd run` under steady traffic with a drift check every minute.

The daemon serves an open-loop load (``--rps`` requests a second, one tweet each, paced, so a slow
answer does not slow the sender) while its scheduler runs a drift check every ``--check-minutes`` in a
child process. Once a second the daemon's resident memory is read from /proc, and so is each check
process's CPU time: a second in which one used the CPU is a check's. Prints the daemon's RSS at the
start, middle and end, and serving p50/p99 for requests in flight in a check's seconds vs the rest, with
the ratios the issue sets targets for (RSS end / start within ±10%, p99 during / outside ≤ 1.2). The
daemon runs on a copy of the home.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from refitd.bench.drift import champion_home
from refitd.bench.report import save
from refitd.bench.serve import _free_port, _run_server, _stop, _texts
from refitd.core.db import engine_for, session_scope
from refitd.daemon.drift.verdict import list_checks
from refitd.core.settings import Settings

CHECK_MODULE = "refitd.daemon.drift"


@dataclass
class Watch:
    """What the sampler saw: (seconds, daemon RSS MB) once a second, the check processes, and the seconds
    in which one of them used the CPU (a kept check process idles between checks)."""

    pid: int
    started: float = field(default_factory=time.perf_counter)
    rss: list[tuple[float, float]] = field(default_factory=list)
    checks: dict[int, list[float]] = field(default_factory=dict)  # check pid -> [first seen, last seen, peak MB]
    busy_spans: list[tuple[float, float]] = field(default_factory=list)  # (from, to) s in which a check used CPU
    stop: threading.Event = field(default_factory=threading.Event)
    _seconds: set[int] = field(default_factory=set)
    _spans_seen: int = 0

    def run(self) -> None:
        ticks: dict[int, int] = {}
        last = 0.0
        while not self.stop.wait(1.0):
            now = time.perf_counter() - self.started
            self.rss.append((now, _rss_mb(self.pid)))
            for child in _children(self.pid):
                seen = self.checks.setdefault(child, [now, now, 0.0])
                seen[1] = now
                seen[2] = max(seen[2], _rss_mb(child))
                used = _cpu_ticks(child)
                if used - ticks.get(child, 0) > BUSY_TICKS:
                    self.busy_spans.append((last, now))
                ticks[child] = used
            last = now

    def busy(self, t0: float, t1: float) -> bool:
        """Whether a check used the CPU during [t0, t1] (seconds since start; sampled once a second, so
        to the whole seconds around it)."""
        if self._spans_seen != len(self.busy_spans):
            self._seconds = {s for first, to in self.busy_spans for s in range(int(first), int(to) + 1)}
            self._spans_seen = len(self.busy_spans)
        return any(s in self._seconds for s in range(int(t0), int(t1) + 1))


BUSY_TICKS = 2  # CPU ticks (1/100 s) a check process may use in a second and still count as idle


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and CHECK_MODULE in (proc / "cmdline").read_bytes().decode(errors="replace"):
                out.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


async def _load(url: str, texts: list[str], rps: float, seconds: float, started: float) -> list[tuple[float, float, bool]]:
    """Open loop: a request every 1/rps s for ``seconds``; (start s since ``started``, latency ms, ok) each."""
    out: list[tuple[float, float, bool]] = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:

        async def one(text: str) -> None:
            t0 = time.perf_counter()
            try:
                ok = (await client.post(url, json={"text": text})).status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append((t0 - started, (time.perf_counter() - t0) * 1000, ok))

        tasks, begin, i = [], time.perf_counter(), 0
        while (due := begin + i / rps) < begin + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(texts[i % len(texts)])))
            i += 1
        await asyncio.gather(*tasks)
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def run(home: Path, *, minutes: float, rps: float, check_minutes: float, drift: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
    """``drift``: drift settings to override for the daemon (e.g. ``nice``), else the home's."""
    work = Path(tempfile.mkdtemp(prefix="refitd-bench-soak-"))
    shutil.copytree(home, work, dirs_exist_ok=True)
    for stale in ("daemon.json", "reports", "workspace"):
        path = work / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    settings = Settings.load(home=work, drift=drift or {})
    with session_scope(engine_for(settings)) as session:
        before = max((r.id for r in list_checks(session, limit=1)), default=0)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "REFITD_HOME": str(work), "REFITD_SCHEDULER__DRIFT_INTERVAL_MINUTES": str(check_minutes),
           **{f"REFITD_DRIFT__{key.upper()}": str(value).lower() for key, value in (drift or {}).items()}}
    daemon = _run_server([sys.executable, "-m", "refitd.cli", "run", "--port", str(port)], env,
                         f"{url}/v2/health/ready", log=work / "daemon.log")
    watch = Watch(daemon.pid)
    sampler = threading.Thread(target=watch.run, name="soak-sampler", daemon=True)
    try:
        texts = _texts(5000)
        httpx.post(f"{url}/v1/predict", json={"text": texts[0]}, timeout=30)  # warm-up
        sampler.start()
        requests = asyncio.run(_load(f"{url}/v1/predict", texts, rps, minutes * 60, watch.started))
    finally:
        watch.stop.set()
        _stop(daemon)
    with session_scope(engine_for(settings)) as session:
        rows = [(r.verdict, r.duration_s) for r in list_checks(session, limit=100_000) if r.id > before]
    during = [lat for t0, lat, ok in requests if ok and watch.busy(t0, t0 + lat / 1000)]
    outside = [lat for t0, lat, ok in requests if ok and not watch.busy(t0, t0 + lat / 1000)]
    rss = [mb for _, mb in watch.rss]
    marks = {"start": rss[min(5, len(rss) - 1)], "middle": rss[len(rss) // 2], "end": rss[-1], "max": max(rss)}
    return {"minutes": minutes, "rps_target": rps, "check_minutes": check_minutes,
            "drift": {"nice": settings.drift.nice, "threads": settings.drift.threads,
                      "process_checks": settings.drift.process_checks},
            "requests": len(requests), "errors": sum(not ok for _, _, ok in requests),
            "rps": len(requests) / (minutes * 60),
            "checks": {"children": len(watch.checks), "rows": len(rows),
                       "verdicts": {v: sum(1 for r, _ in rows if r == v) for v in {r for r, _ in rows}},
                       "seconds_median": _pct([d for _, d in rows if d is not None], 0.5),
                       "child_peak_rss_mb": max((p for _, _, p in watch.checks.values()), default=0.0)},
            "daemon_rss_mb": marks, "rss_end_over_start": marks["end"] / marks["start"],
            "rss_series": [(round(t), round(mb, 1)) for t, mb in watch.rss[::30]],
            "during_check": {"requests": len(during), "p50_ms": _pct(during, 0.5), "p99_ms": _pct(during, 0.99)},
            "outside_check": {"requests": len(outside), "p50_ms": _pct(outside, 0.5), "p99_ms": _pct(outside, 0.99)},
            "p99_during_over_outside": _pct(during, 0.99) / _pct(outside, 0.99), "home": str(work)}


def render(r: dict[str, Any]) -> str:
    m, c = r["daemon_rss_mb"], r["checks"]
    return "\n".join([
        f"`refitd run` {r['minutes']:g} min at {r['rps']:.1f} req/s (open loop), a drift check every "
        f"{r['check_minutes']:g} min (nice {r['drift']['nice']}, {r['drift']['threads']} thread(s), "
        f"{r['drift']['process_checks']} checks a process): "
        f"{r['requests']} requests, {r['errors']} errors; {c['rows']} checks "
        f"({c['verdicts']}), median {c['seconds_median']} s each, check process peak {c['child_peak_rss_mb']:.0f} MB",
        f"daemon RSS MB: start {m['start']:.0f}, middle {m['middle']:.0f}, end {m['end']:.0f}, max {m['max']:.0f} "
        f"(end / start {r['rss_end_over_start']:.2f}; target 0.90–1.10)",
        f"{'':<15} {'requests':>8} {'p50 ms':>7} {'p99 ms':>7}",
        *(f"{name:<15} {r[key]['requests']:>8} {r[key]['p50_ms']:>7.1f} {r[key]['p99_ms']:>7.1f}"
          for name, key in (("during a check", "during_check"), ("outside checks", "outside_check"))),
        f"p99 during / outside: {r['p99_during_over_outside']:.2f}× (target ≤ 1.2)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refitd.bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="state dir with a champion (default: train a quick one)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rps", type=float, default=60.0)
    parser.add_argument("--check-minutes", type=float, default=1.0)
    parser.add_argument("--drift-nice", type=int, default=None, help="the check process's niceness (drift.nice)")
    parser.add_argument("--drift-threads", type=int, default=None, help="the check process's threads (drift.threads)")
    parser.add_argument("--drift-process-checks", type=int, default=None,
                        help="checks a kept check process runs (drift.process_checks; 0: a process per check)")
    args = parser.parse_args(argv)
    drift = {key: value for key, value in (("nice", args.drift_nice), ("threads", args.drift_threads),
                                                   ("process_checks", args.drift_process_checks)) if value is not None}
    result = run(champion_home(args.home), minutes=args.minutes, rps=args.rps, check_minutes=args.check_minutes,
                 drift=drift)
    save("soak", result)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
