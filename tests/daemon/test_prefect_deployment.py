"""The deployment path: a real Prefect server, deploy/prefect.yaml deployed to a process work pool, a
process worker, and the daemon's launcher calling run_deployment and following the flow run to its verdict."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from sqlmodel import select

from refitd.core import leases
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.settings import Settings
from refitd.core.tables import Event, RefitRun
from refitd.daemon.launcher import LEASE, RefitLauncher
from tests.artifact_factory import publish_version
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _prefect(*args: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_refit_runs_on_a_prefect_worker(tmp_path: Path, untrained_artifact: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = home / "refitd.toml"
    config.write_text(f'home = "{home}"\n')
    settings = Settings.load(config, refit={"quick": True})
    upgrade(make_engine(settings.database_url))
    publish_version(settings, untrained_artifact)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REFITD_", "PREFECT_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.time() + 240
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline and server.poll() is None, "the Prefect server did not start"
            time.sleep(1)
        created = _prefect("work-pool", "create", "refitd", "--type", "process", env=env)
        assert created.returncode == 0, created.stdout + created.stderr

        # deploy/prefect.yaml as shipped, with this checkout as the code and this test's config.
        spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
        spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] = str(ROOT)
        spec["deployments"][0]["work_pool"]["job_variables"]["env"]["REFITD_CONFIG"] = str(config)
        prefect_file = tmp_path / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(spec))
        deployed = _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), env=env)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

        deployed_settings = settings.model_copy(update={"prefect": settings.prefect.model_copy(update={
            "api_url": api, "deployment": "refitd-refit-deployed/refitd-refit", "poll_s": 2.0})})
        engine = make_engine(settings.database_url)

        # No worker yet: a launched run waits on the pool without a refit run row. Its daemon "restarts" (the
        # lease lapses): the next daemon still waits for it, and cancels it once it is past refit.timeout_minutes.
        early = RefitLauncher(deployed_settings, engine)
        started, where = early.start("deployment-test", "test: a run no worker has taken yet")
        assert started, where
        waiting_id = early.launch.flow_run_id
        early.stop()  # a daemon stopping leaves a deployment run to its pool
        leases.release(engine, LEASE, holder=early.holder)  # what its expiry does
        restarted = RefitLauncher(deployed_settings, engine)
        assert f"deployment flow run {waiting_id} (no refit run row yet) is still" in (restarted.busy() or "")
        with session_scope(engine) as s:
            s.exec(select(Event).where(Event.kind == "refit_started")).one().created_at -= \
                timedelta(minutes=deployed_settings.refit.timeout_minutes + 1)
        assert restarted.busy() is None
        assert restarted._flow_run_state(waiting_id)[0] in {"CANCELLING", "CANCELLED"}
        with session_scope(engine) as s:
            assert "cancelled on its work pool" in s.exec(select(Event).where(Event.kind == "refit_failed")).one().reason

        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "refitd"], env=env,
                                  cwd=ROOT, stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT)
        launcher = RefitLauncher(deployed_settings, engine)
        started, where = launcher.start("deployment-test", "test: refit on a worker")
        assert started and "flow run" in where
        deadline = time.time() + 480
        while launcher.launch is not None and time.time() < deadline:
            launcher.poll()
            time.sleep(2)
        assert launcher.launch is None, (tmp_path / "worker.log").read_text()[-3000:]
        outcome = launcher.finished[-1]
        assert outcome["status"] == "completed", (outcome, (tmp_path / "worker.log").read_text()[-3000:])
        assert outcome["verdict"] in {"promoted", "rejected"} and outcome["version"] == "v2"
        with session_scope(make_engine(settings.database_url)) as s:
            run = s.exec(select(RefitRun).where(RefitRun.candidate_version == "v2")).one()
            assert run.trigger == "deployment-test" and run.flow_run_id
            assert s.exec(select(Event).where(Event.kind == "refit_finished")).one().subject == "v2"

        # A second run, then this daemon "restarts" while it runs: its lease lapses, and the new daemon's
        # launcher still sees the flow run on the pool and starts nothing beside it.
        started, where = launcher.start("deployment-test", "test: a run that outlives its daemon")
        flow_run_id = launcher.launch.flow_run_id

        def row() -> RefitRun | None:
            with session_scope(engine) as s:
                return s.exec(select(RefitRun).where(RefitRun.flow_run_id == flow_run_id)).first()

        deadline = time.time() + 240
        while row() is None and time.time() < deadline:
            time.sleep(1)
        assert row() is not None, (tmp_path / "worker.log").read_text()[-3000:]
        leases.release(engine, LEASE, holder=launcher.holder)  # what its expiry does
        restarted = RefitLauncher(launcher.settings, engine)
        assert f"deployment flow run {flow_run_id} (refit run {row().id}) is still running" in restarted.busy()
        # Past refit.timeout_minutes: the run is cancelled on the pool, not left to finish (and maybe promote)
        launcher.launch.started -= launcher.settings.refit.timeout_minutes * 60 + 1
        assert launcher.poll()["reason"] == "timed out"
        assert row().status == "failed" and row().reason == "timed out"
        deadline = time.time() + 120
        while restarted._flow_run_state(flow_run_id)[0] != "CANCELLED" and time.time() < deadline:
            time.sleep(2)
        assert restarted._flow_run_state(flow_run_id)[0] == "CANCELLED" and restarted.busy() is None
    finally:
        for process in (worker, server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
