"""``refitd demo``: the whole loop on the embedded default, with no network and no configuration.

1. fine-tune v1 on the airline tweets of the bundled corpus; print before / after on the frozen test set;
2. start the daemon (`refitd run`) as a child process on a free port;
3. replay a stream through the HTTP API: phase 1 airline tweets, phase 2 mostly other topics
   (Apple, self-driving cars, Coachella, …); a fraction of answers get their true label posted late;
4. leave the daemon alone: drift checks flag the shift, a refit starts once enough labels arrived,
   the gate decides, the server hot-swaps;
5. print the summary per phase and served version, write the plots and list the HTML reports.

Stream tweets come from the corpus's ``stream`` split, which no training or test split shares.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table
from sqlmodel import col, select

from refitd.core import children
from refitd.core.errors import DemoError
from refitd.core.datasets import load_configured
from refitd.core.db import engine_for, session_scope
from refitd.core.settings import Settings
from refitd.core.tables import DriftCheck, RefitRun, utcnow
from refitd.core.topics import SHIFT_TOPICS
from refitd.demo.replay import Replay
from refitd.demo.summary import estimate_error, report

OTHER_TOPICS = SHIFT_TOPICS


@dataclass(frozen=True)
class Plan:
    quick: bool
    rate: float = 15.0              # requests per second
    phase1: int = 900               # airline requests before the shift
    other_share: float = 0.7        # other-topic share of phase 2
    after: int = 900                # requests served by a new champion before the demo ends
    settle_checks: int = 3          # and checks of the new champion: until one is not drifted, or this many
    max_phase2_s: float = 900.0
    label_fraction: float = 0.6
    label_delay_s: float = 5.0
    drift_every_s: float = 20.0
    consecutive: int = 2            # drift.consecutive: the quick rehearsal acts on the first drifted check
    # refit.threads: one. Two torch threads on two cores that also serve and check stall at every barrier
    # (a quick refit trained at 2-12 examples/s with two threads, 31 with one).
    refit_threads: int = 1
    min_new_labels: int = 1400
    max_train_rows: int = 2000
    # drift.reference_size. A refit's champion is checked against the newest rows logged before its refit;
    # the quick loop refits ~20-40 s after the shift (400-800 rows at 20/s), so its reference must not reach
    # back into phase 1, or the new champion's checks see the topic mix move and stay drifted
    reference_size: int = 1000
    seed: int = 7

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        if quick:
            # phase 1 long enough for a check to start and finish in it (a check is a child process now)
            return cls(quick=True, rate=20.0, phase1=700, after=300, max_phase2_s=720.0, drift_every_s=20.0,
                       label_fraction=0.5, min_new_labels=400, max_train_rows=400, consecutive=1,
                       reference_size=400)
        return cls(quick=False)


def write_config(home: Path, plan: Plan, port: int) -> Path:
    """The demo's refitd.toml: quicker checks and a small window, so the loop fits in minutes."""
    path = home / "refitd.toml"
    path.write_text(f"""# written by `refitd demo`
log_level = "INFO"

[training]
max_train_rows = {plan.max_train_rows}

[serving]
port = {port}
poll_interval_s = 2.0

[drift]
window_size = 300
min_window = 200
reference_size = {plan.reference_size}
consecutive = {plan.consecutive}

[scheduler]
drift_interval_minutes = {plan.drift_every_s / 60:.4f}
watch_interval_minutes = 0.25
watch_min_labels = 30

[refit]
min_new_labels = {plan.min_new_labels}
cooldown_minutes = 60
threads = {plan.refit_threads}
nice = 10
quick = {str(plan.quick).lower()}
""")
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    def __init__(self, home: Path, plan: Plan, console: Console) -> None:
        self.home, self.plan, self.console = home, plan, console
        self.out = home / "demo"
        self.out.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        write_config(home, plan, self.port)
        self.engine = engine_for(Settings.load(home=home))
        self.daemon: subprocess.Popen | None = None
        self.replay: Replay | None = None
        self.phase = 0
        self._stop = threading.Event()

    # 1 -----------------------------------------------------------------------------------

    def train_v1(self) -> dict[str, Any]:
        self.console.rule("1. fine-tune v1 on airline tweets")
        start = time.perf_counter()
        code, result = children.run(Settings.load(home=self.home), ["init"] + (["--quick"] if self.plan.quick else []),
                                    log_file=self.home / "init.log")
        (self.out / "init.json").write_text(json.dumps(result, default=str))
        if code != 0 or not result.get("promoted"):
            raise DemoError(f"training v1 failed ({result.get('error') or result.get('reason')}); "
                               f"see {self.home / 'init.log'}")
        before, after = result["metrics"]["before"], result["metrics"]["candidate"]["frozen"]
        table = Table(title=f"frozen airline test set (n = {after['n']}), {time.perf_counter() - start:.0f} s")
        for c in ("model", "accuracy", "macro precision", "macro recall", "macro F1"):
            table.add_column(c)
        for name, m in (("base encoder + fresh head", before), ("v1 fine-tuned", after)):
            table.add_row(name, *(f"{m[k]:.3f}" for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")))
        self.console.print(table)
        return result

    # 2 -----------------------------------------------------------------------------------

    def start_daemon(self) -> None:
        self.console.rule(f"2. start the daemon on {self.url}")
        log = open(self.home / "daemon.log", "ab")  # noqa: SIM115 - the child's stdout for its life
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "refitd.cli", "--home", str(self.home), "run"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.daemon.poll() is not None:
                raise DemoError(f"the daemon exited with {self.daemon.returncode}; see {self.home / 'daemon.log'}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    self.console.print(f"daemon up (pid {self.daemon.pid}); log: {self.home / 'daemon.log'}")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise DemoError("the daemon did not become ready in 180 s")

    def stop_daemon(self) -> int | None:
        if self.daemon is None or self.daemon.poll() is not None:
            return None if self.daemon is None else self.daemon.returncode
        self.daemon.send_signal(signal.SIGTERM)
        try:
            return self.daemon.wait(90)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            return self.daemon.wait()

    # 3-4 ---------------------------------------------------------------------------------

    def stream(self) -> tuple[pd.DataFrame, float]:
        p = self.plan
        corpus = load_configured(data=None, text_column="text", label_column="label", topics=[],
                                 validation_fraction=0.1, test_fraction=0.15)
        stream = corpus[corpus["split"] == "stream"].sample(frac=1.0, random_state=p.seed)
        airline = stream[stream["topic"] == "airline"]
        other = stream[stream["topic"].isin(OTHER_TOPICS)]
        phase1 = airline.iloc[: p.phase1]
        rest_airline = airline.iloc[p.phase1:]
        n2 = int(p.rate * p.max_phase2_s)
        n_other = min(len(other), int(n2 * p.other_share))
        mixed = pd.concat([other.iloc[:n_other], rest_airline.iloc[: n2 - n_other]]).sample(frac=1.0, random_state=p.seed)
        self.replay = Replay(self.url, rate=p.rate, label_fraction=p.label_fraction, delay_s=p.label_delay_s,
                             seed=p.seed)
        self.t0_wall = utcnow()
        progress = threading.Thread(target=self._progress, daemon=True)
        progress.start()
        self.console.rule(f"3. phase 1: {len(phase1)} airline tweets at {p.rate:g}/s")
        self.phase = 1
        self.replay.play(phase1[["text", "label", "topic"]], 1)
        phase2_at = self.replay.now()
        self.console.rule(f"4. phase 2: {p.other_share:.0%} other topics ({', '.join(OTHER_TOPICS)}); "
                          "the daemon is on its own")
        self.phase = 2
        started = time.monotonic()

        def over() -> bool:
            return self._done() or time.monotonic() - started > p.max_phase2_s

        rows = mixed[["text", "label", "topic"]]
        sent_before = len(self.replay.answers)
        while self.replay.play(rows, 2, until=over) and not over():
            # The corpus ran out first (about 670 s at the default rate; a refit on a slow machine takes
            # longer): play again the rows sent since the refit started. Their labels came after its data was
            # read, so none is a row the candidate trained on, and none is in its drift reference.
            first = self._sent_before_refit(sent_before)
            if first is None or first >= len(mixed):
                break
            self.console.print(f"[dim]the phase-2 rows ran out; playing again the {len(mixed) - first} sent since "
                               "the refit started[/]")
            rows = mixed.iloc[first:][["text", "label", "topic"]]
        time.sleep(p.label_delay_s + 1)  # the last labels go out
        self._stop.set()
        self.replay.close()
        return self.replay.frame(), phase2_at

    def _refit(self) -> RefitRun | None:
        with session_scope(self.engine) as s:
            return s.exec(select(RefitRun).where(RefitRun.trigger != "init").order_by(col(RefitRun.id))).first()

    def _done(self) -> bool:
        """The refit finished and, if it promoted, the new champion has served enough requests and
        its drift checks have settled (one not drifted) or had ``settle_checks`` tries."""
        run = self._refit()
        if run is None or run.status == "running":
            return False
        served_new = sum(a.version != "v1" for a in self.replay.answers) if self.replay else 0
        if run.verdict == "promoted":
            return served_new >= self.plan.after and self._settled(run.candidate_version)
        finished = run.finished_at or utcnow()
        return (utcnow() - finished).total_seconds() * self.plan.rate >= self.plan.after

    def _sent_before_refit(self, sent_before: int) -> int | None:
        """How many phase-2 rows had been answered when the refit started (None: no refit started)."""
        run = self._refit()
        if run is None or self.replay is None:
            return None
        at = (run.created_at - self.t0_wall).total_seconds()
        return sum(1 for a in self.replay.answers[sent_before:] if a.at < at)

    def _settled(self, version: str | None) -> bool:
        with session_scope(self.engine) as s:
            verdicts = s.exec(select(DriftCheck.verdict).where(DriftCheck.model_version == version,
                                                               DriftCheck.verdict != "insufficient_data")).all()
        return "not_drifted" in verdicts or len(verdicts) >= self.plan.settle_checks

    def _progress(self) -> None:
        while not self._stop.wait(5):
            try:
                with session_scope(self.engine) as s:
                    check = s.exec(select(DriftCheck).order_by(col(DriftCheck.id).desc())).first()
                run = self._refit()
            except Exception:  # noqa: BLE001 - progress is best effort
                continue
            r = self.replay
            versions = sorted({a.version for a in r.answers[-50:]}) if r else []
            refit = "not started"
            if run is not None:
                stage = (run.metrics or {}).get("progress", {}).get("stage", "data")
                refit = f"running ({stage})" if run.status == "running" else f"{run.status}: {run.verdict or run.reason}"
            verdict = f"{check.verdict} ({check.window_size})" if check else "none yet"
            self.console.print(f"[dim]{r.now() if r else 0:6.0f}s[/] phase {self.phase} | sent {r.sent if r else 0} "
                               f"| labels {r.labels_posted if r else 0} | serving {','.join(versions)} | last drift "
                               f"check: {verdict} | refit: {refit}")

    # 5 -----------------------------------------------------------------------------------

    def checks(self) -> list[dict[str, Any]]:
        with session_scope(self.engine) as s:
            rows = list(s.exec(select(DriftCheck).order_by(col(DriftCheck.id))))
        return [{"id": c.id, "at": (c.created_at - self.t0_wall).total_seconds(), "verdict": c.verdict,
                 "reason": c.reason, "signals": c.signals, "report": c.report_path, "champion": c.model_version}
                for c in rows]

    def summarise(self, answers: pd.DataFrame, phase2_at: float, v1: dict[str, Any]) -> dict[str, Any]:
        checks = self.checks()
        run = self._refit()
        groups = []
        for (phase, version), part in answers.groupby(["phase", "version"]):
            labelled = part[part["labelled"]]
            groups.append({"phase": int(phase), "version": version, "requests": len(part), "labelled": len(labelled),
                           "accuracy": float((labelled["predicted"] == labelled["truth"]).mean()) if len(labelled) else None})
        promoted = answers[answers["version"] != "v1"]
        promotions = [(float(promoted["at"].min()), str(promoted["version"].iloc[0]))] if len(promoted) else []
        verdicts = {ph: [c for c in checks if c["verdict"] != "insufficient_data" and
                         ((c["at"] < phase2_at) == (ph == 1))] for ph in (1, 2)}
        refit = None
        if run is not None:
            refit = {"trigger": run.trigger, "status": run.status, "verdict": run.verdict, "reason": run.reason,
                     "version": run.candidate_version,
                     "started_at_s": (run.created_at - self.t0_wall).total_seconds(),
                     "duration_s": (run.finished_at - run.created_at).total_seconds()
                     if run.finished_at else None,
                     "timings": (run.metrics or {}).get("timings")}
        return {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "quick": self.plan.quick,
                "plan": asdict(self.plan), "home": str(self.home), "v1": {"before": v1["metrics"]["before"],
                                                                       "after": v1["metrics"]["candidate"]["frozen"]},
                "phase2_at_s": phase2_at, "groups": groups, "promotions": promotions,
                "drift": {str(ph): [{k: c[k] for k in ("id", "at", "verdict", "reason", "report")} for c in cs]
                          for ph, cs in verdicts.items()},
                "after_promotion": [c["verdict"] for c in checks if promotions and c["champion"] == promotions[0][1]
                                    and c["verdict"] != "insufficient_data"],
                "estimate": estimate_error(checks),
                "refit": refit, "errors": len(self.replay.errors) if self.replay else 0,
                "labels_posted": self.replay.labels_posted if self.replay else 0, "checks": checks}


def run_demo(*, home: Path | None, quick: bool, keep: bool, console: Console) -> dict[str, Any]:
    """Run the demo end to end; return its summary."""
    temporary = home is None
    home = Path(tempfile.mkdtemp(prefix="refitd-demo-")) if home is None else home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    if (home / "refitd.db").exists():
        raise DemoError(f"{home} already holds a refitd database; give the demo a fresh --home")
    demo = Demo(home, Plan.for_run(quick), console)
    started = time.perf_counter()
    console.print(f"refitd demo ({'quick' if quick else 'default'}) in {home}")
    try:
        v1 = demo.train_v1()
        demo.start_daemon()
        answers, phase2_at = demo.stream()
        summary = demo.summarise(answers, phase2_at, v1)
        summary["wall_s"] = round(time.perf_counter() - started, 1)
        report(summary, answers, out=demo.out, console=console)
    finally:
        demo._stop.set()
        if demo.replay is not None:
            demo.replay.close()
        code = demo.stop_daemon()
        if code not in (None, 0):
            console.print(f"[red]the daemon exited with {code}; see {home / 'daemon.log'}[/]")
    console.print(f"wall time {summary['wall_s']:.0f} s")
    if temporary and not keep:
        for name in ("models", "prefect", "spool", "workspace", "drift", "refitd.db", "refitd.db-wal", "refitd.db-shm"):
            target = home / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        console.print(f"kept the results in {home / 'demo'} and {home / 'reports'} (--keep keeps the whole state dir)")
    else:
        console.print(f"state kept in {home}: try `refitd --home {home} status`")
    return summary
