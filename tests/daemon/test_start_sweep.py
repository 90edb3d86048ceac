"""`refitd run` sweeps what a crash left as it starts: leftovers in the artifact store are gone before it serves,
and a refit row whose process died with the old daemon is marked failed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from refitd.core.db import make_engine, session_scope
from refitd.core.runs import process_identity, start_run
from refitd.core.tables import RefitRun

from refitd.core.artifacts import ArtifactStore
from refitd.core.settings import Settings
from tests.conftest import free_port, wait_ready
from tests.daemon.test_service import daemon_home, start_daemon, stop  # noqa: F401 - daemon_home is a fixture


def test_leftovers_are_swept_at_start(daemon_home: Path) -> None:  # noqa: F811
    store = ArtifactStore(Settings.load(home=daemon_home).models_dir)
    stale = store.staging("candidate")  # a refit killed while exporting, days ago
    (stale / "model.onnx").write_bytes(b"half written")
    os.utime(stale, (0, 0))
    fresh = store.staging("candidate")  # a refit exporting right now, in another process
    shutil.copytree(store.path("v1"), store.root / "v2")  # published, killed before its row was committed
    assert store.versions() == ["v1", "v2"]
    drift = daemon_home / "drift"  # a drift check killed while writing its reference cache, and one writing now
    drift.mkdir()
    killed, writing, other = (drift / ".reference-v1.parquet.4242", drift / ".reference-v1.parquet.4343",
                              drift / ".nfs0001")
    for p in (killed, writing, other):
        p.write_bytes(b"partial")
    os.utime(killed, (0, 0))
    os.utime(other, (0, 0))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])  # a refit killed with the daemon that ran it
    ended.wait()
    engine = make_engine(Settings.load(home=daemon_home).database_url)
    with session_scope(engine) as s:
        run_id = start_run(s, trigger="drift", params={"process": process_identity() | {"pid": ended.pid}}).id

    port = free_port()
    daemon = start_daemon(daemon_home, port)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
    finally:
        assert stop(daemon) == 0
    assert store.versions() == ["v1"] and store.verify("v1")
    assert not stale.exists() and fresh.is_dir()
    assert [p.name[: len(".orphan-v2-")] for p in store.root.glob(".orphan-*")] == [".orphan-v2-"]
    assert not killed.exists() and writing.is_file() and other.is_file()
    log = Path(daemon.log_path).read_text()  # type: ignore[attr-defined]
    assert "artifact store swept" in log and "drift reference cache swept: .reference-v1.parquet.4242" in log
    with session_scope(engine) as s:
        run = s.get(RefitRun, run_id)
        assert run.status == "failed" and "has ended without recording an outcome" in run.reason
