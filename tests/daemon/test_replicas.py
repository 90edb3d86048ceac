"""Replicas without a shared disk, rehearsed on one machine.

The multi-host layout of the README's "Run as a service": PostgreSQL; a real `prefect server start` with a
process work pool, deploy/prefect.yaml deployed to it and a worker (the training host); `refitd run` (scheduler
and serving) and a second `refitd serve` replica. Each host has its own home and shares nothing on disk with the
others: the model versions live only on an S3-compatible server (moto in server mode). Labels posted to the
replica make the scheduler on the other host start a refit, which runs on the worker and promotes; both replicas
swap to the new version while client threads hit them both, and not one request fails.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import Engine
from sqlmodel import col, select

from refitd.core import reference
from refitd.core.datasets import load_configured
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.sections import TrainingSection
from refitd.core.settings import Settings
from refitd.core.tables import Event, ModelVersion, RefitRun
from tests.artifact_factory import publish_version
from tests.conftest import free_port, wait_ready
from tests.s3_server import CREDENTIALS, S3Server, models_url, s3_server  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "refitd-refit-deployed/refitd-refit"
LABELS = 200  # scheduler.label_trigger: the labels that start the refit (and its recent test set, ~20% of them)


@dataclass
class Host:
    """One machine of the layout: its own home, its own environment (what refitd.env would hold)."""

    name: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    def start(self, *argv: str) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "process.log", "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", *argv], env=self.env, cwd=ROOT, stdout=out,
                                            stderr=subprocess.STDOUT)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.home / "process.log"
        return f"--- {self.name} ---\n" + (path.read_text(errors="replace")[-chars:] if path.is_file() else "")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Answer:
    replica: str
    sent: float
    seconds: float
    status: int | str  # the HTTP status, or the transport error's name
    version: str | None


@dataclass
class Traffic:
    """Client threads, each sending /v1/predict to every replica in turn and recording every answer."""

    urls: dict[str, str]
    texts: list[str]
    threads: int = 4
    pause_s: float = 0.5  # between one client's requests; lowered for the swap
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.threads)]

    def __enter__(self) -> Traffic:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)

    def _client(self, index: int) -> None:
        names = sorted(self.urls)
        with httpx.Client(timeout=30) as client:
            n = index
            while not self._stop.is_set():
                name, text = names[n % len(names)], self.texts[n % len(self.texts)]
                sent = time.time()
                try:
                    r = client.post(f"{self.urls[name]}/v1/predict", json={"text": text})
                    status = r.status_code
                    version = r.json()["predictions"][0]["model_version"] if status == 200 else None
                except httpx.HTTPError as exc:
                    status, version = type(exc).__name__, None
                self.answers.append(Answer(name, sent, time.time() - sent, status, version))
                n += 1
                self._stop.wait(self.pause_s)


def _hosts(tmp_path: Path, base: dict[str, str], shared: dict[str, str], prefect_api: str) -> dict[str, Host]:
    """The three refitd hosts with what each one's refitd.env / refitd.toml would say."""
    hosts = {name: Host(name, tmp_path / name, {**base, **shared, "REFITD_HOME": str(tmp_path / name),
                                                 "PREFECT_HOME": str(tmp_path / name / "prefect")})
             for name in ("scheduler", "replica", "worker")}
    hosts["scheduler"].env |= {"REFITD_PREFECT__API_URL": prefect_api, "REFITD_PREFECT__DEPLOYMENT": DEPLOYMENT}
    hosts["worker"].env |= {"PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    tuning = {  # the test's pace: fast polls, the label trigger; on the training host, a short recipe that
        # still learns (the new labels plus 4x as many replayed reference rows, 3 epochs; the quick profile's
        # 2 epochs on ~280 rows only learn the majority class and lose to the random head on macro-F1)
        "scheduler": f"[serving]\npoll_interval_s = 0.2\nthreads = 1\n[scheduler]\nlabel_trigger = {LABELS}\n"
                     "label_check_minutes = 0.05\n[prefect]\npoll_s = 1.0\n",
        "replica": "[serving]\npoll_interval_s = 0.2\nthreads = 1\n",
        "worker": "[model]\nmax_length = 32\n[training]\nreplay_ratio = 4.0\nmax_train_rows = 1000\n"
                  "max_test_rows = 300\nepochs = 3.0\nfreeze_layers = 2\nlearning_rate = 1e-4\nbatch_size = 16\n"
                  "[gate]\nint8_variants = [\"dynamic\"]\n",  # one INT8 build: the variant search has its own tests
    }
    for name, host in hosts.items():
        host.home.mkdir(parents=True)
        (host.home / "refitd.toml").write_text(tuning[name])
    return hosts


def _deploy(tmp_path: Path, env: dict[str, str], worker: Host) -> None:
    """deploy/prefect.yaml as shipped, with this checkout as the code and the worker host's refitd.toml."""
    def prefect(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    prefect("work-pool", "create", "refitd", "--type", "process")
    spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] = str(ROOT)
    spec["deployments"][0]["work_pool"]["job_variables"]["env"]["REFITD_CONFIG"] = str(worker.home / "refitd.toml")
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec))
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))


def _wait_http(url: str, process: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.time() < deadline and process.poll() is None, f"{what} did not start"
        time.sleep(0.5)


def _stream_texts() -> tuple[list[str], list[str]]:
    """Airline tweets from the corpus's stream split (production traffic, never reference data)."""
    t = TrainingSection()
    frame = load_configured(data=None, text_column="text", label_column="label", topics=t.topics,
                            validation_fraction=t.validation_fraction, test_fraction=t.test_fraction)
    stream = frame[frame["split"] == "stream"].sample(frac=1.0, random_state=7)
    return list(stream["text"][:LABELS]), list(stream["label"][:LABELS])


def _post_labels(url: str, texts: list[str], labels: list[str]) -> None:
    with httpx.Client(timeout=30) as client:
        for text, label in zip(texts, labels, strict=True):
            while (r := client.post(f"{url}/v1/feedback", json={"text": text, "label": label,
                                                                "source": "review"})).status_code == 429:
                time.sleep(float(r.headers.get("retry-after", "1")))
            assert r.status_code == 200, r.text


def _newest_run(engine: Engine) -> RefitRun | None:
    """The refit the worker is running (or ran); fails the test when the daemon saw a refit fail."""
    with session_scope(engine) as s:
        failed = s.exec(select(Event).where(Event.kind == "refit_failed")).first()
        assert failed is None, failed.reason
        return s.exec(select(RefitRun).order_by(col(RefitRun.id).desc())).first()


def _until_both_swapped(engine: Engine, urls: dict[str, str], traffic: Traffic, everyone: list[Host], *,
                        timeout_s: float) -> RefitRun:
    """Follow the refit (from its row) until every replica serves its candidate; clients speed up once it is
    evaluated, as registration and promotion are then seconds away."""
    deadline, run, serving = time.time() + timeout_s, None, {}
    while True:
        run = _newest_run(engine)
        if run is not None and run.status != "running":
            assert run.status == "completed" and run.verdict == "promoted", (run.status, run.reason)
        if run is not None and (run.status != "running" or
                                (run.metrics.get("progress") or {}).get("stage") in ("gate", "done")):
            traffic.pause_s = 0.005
        serving = {n: httpx.get(f"{u}/v1/status", timeout=10).json()["serving"] for n, u in urls.items()}
        if run is not None and run.candidate_version and set(serving.values()) == {run.candidate_version}:
            return run
        assert time.time() < deadline, (run and run.status, serving)
        assert all(h.process.poll() is None for h in everyone), "a host exited"  # type: ignore[union-attr]
        time.sleep(0.25)


def _figures(answers: list[Answer], promoted: float, new: str) -> dict[str, object]:
    """When each replica first answered with the new version (s after promotion); the requests in the window."""
    swapped = {name: min(a.sent + a.seconds for a in answers if a.replica == name and a.version == new) - promoted
               for name in sorted({a.replica for a in answers})}
    end = promoted + max(swapped.values())
    window = [a for a in answers if a.sent <= end and a.sent + a.seconds >= promoted]
    return {"requests": len(answers), "failed": sum(a.status != 200 for a in answers),
            "window_s": round(max(swapped.values()), 2), "window_requests": len(window),
            "window_per_replica": {n: sum(a.replica == n for a in window) for n in swapped},
            "swapped_after_promotion_s": {n: round(s, 2) for n, s in swapped.items()},
            "latency_max_ms": round(1000 * max(a.seconds for a in answers)),
            "window_latency_max_ms": round(1000 * max((a.seconds for a in window), default=0)),
            "window_latency_median_ms": round(1000 * statistics.median([a.seconds for a in window] or [0]))}


@pytest.mark.timeout(1200)
def test_two_replicas_without_a_shared_disk_swap_to_a_refit_promoted_on_a_prefect_worker(
        tmp_path: Path, postgres_url: str, models_url: str, s3_server: S3Server, untrained_artifact: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    started = time.time()
    texts, labels = _stream_texts()
    # v1: what an earlier `refitd init` on the training host published (here: an untrained head, quick to build).
    first = Settings.load(home=tmp_path / "init", database={"url": postgres_url}, storage={"models_url": models_url})
    engine = make_engine(postgres_url)
    upgrade(engine)
    v1 = publish_version(first, untrained_artifact)
    published = reference.load_with_info(first)[1]  # and the reference data it stored, published beside the models

    base = {k: v for k, v in os.environ.items() if not k.startswith(("REFITD_", "PREFECT_", "AWS_"))}
    base |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "REFITD_PROGRESS": "0"}
    shared = {"REFITD_DATABASE__URL": postgres_url, "REFITD_STORAGE__MODELS_URL": models_url,
              "AWS_ENDPOINT_URL": s3_server.endpoint, **CREDENTIALS}
    prefect_port = free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    hosts = _hosts(tmp_path, base, shared, api)
    prefect_host = Host("prefect", tmp_path / "prefect", {**base, "PREFECT_HOME": str(tmp_path / "prefect"),
                                                          "PREFECT_API_URL": api, "PREFECT_UI_ENABLED": "false"})
    ports = {"scheduler": free_port(), "replica": free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    everyone = [prefect_host, *hosts.values()]
    try:
        prefect_host.start("prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port))
        hosts["scheduler"].start("refitd.cli", "run", "--port", str(ports["scheduler"]))
        hosts["replica"].start("refitd.cli", "serve", "--port", str(ports["replica"]))
        _wait_http(f"{api}/health", prefect_host.process, "the Prefect server")  # type: ignore[arg-type]
        _deploy(tmp_path, prefect_host.env, hosts["worker"])
        hosts["worker"].start("prefect", "worker", "start", "--pool", "refitd")
        for name, url in urls.items():
            wait_ready(url, timeout=120)
            assert httpx.get(f"{url}/v1/status", timeout=10).json()["serving"] == v1, name
        ready = time.time()

        with Traffic(urls, texts) as traffic:
            _post_labels(urls["replica"], texts, labels)  # a review team labels production texts, on the replica
            labelled = time.time()
            run = _until_both_swapped(engine, urls, traffic, everyone, timeout_s=900)
            time.sleep(1.0)  # and a little traffic after both swapped
    except BaseException:
        print("\n".join(h.log_tail() for h in everyone))
        raise
    finally:
        for host in reversed(everyone):
            host.stop()

    v2 = run.candidate_version
    with session_scope(engine) as s:
        promoted = s.exec(select(ModelVersion).where(ModelVersion.version == v2)).one()
        launched = s.exec(select(Event).where(Event.kind == "refit_started")).one()
    # Started by the scheduler's label trigger, run by the worker through the deployment, never in a local process.
    assert run.trigger == "labels" and run.flow_run_id and DEPLOYMENT in launched.reason, launched.reason
    assert promoted.status == "champion" and promoted.promoted_at is not None
    # No shared disk: each host read the versions it served or evaluated from the store into its own cache.
    for name, version in (("scheduler", v2), ("replica", v2), ("worker", v1)):
        assert (hosts[name].home / "cache" / "models" / version / "MANIFEST.json").is_file(), name
        assert not (hosts[name].home / "models").exists(), name
    # The worker refit from the reference the init host published (not a first use of its own configured data).
    assert reference.info(Settings.load(home=hosts["worker"].home)) == published, "the worker's reference"

    promoted_at = promoted.promoted_at.timestamp()
    figures = _figures(traffic.answers, promoted_at, v2)
    with capsys.disabled():  # into CI's log, passed or not
        print(f"\nreplica rehearsal, {v1} -> {v2}: hosts up {ready - started:.0f} s; {LABELS} labels posted in "
              f"{labelled - ready:.0f} s; refit started {launched.created_at.timestamp() - labelled:.0f} s later, "
              f"promoted {promoted_at - launched.created_at.timestamp():.0f} s after that (stages "
              f"{run.metrics.get('timings')}); total {time.time() - started:.0f} s\nswap: {figures}")
    failed = [a for a in traffic.answers if a.status != 200]
    assert not failed, failed[:10]
    assert all(n > 0 for n in figures["window_per_replica"].values()), figures  # type: ignore[union-attr]
    last = {n: max((a for a in traffic.answers if a.replica == n), key=lambda a: a.sent).version for n in urls}
    assert set(last.values()) == {v2}, last
