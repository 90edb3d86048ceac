"""`refitd run` sweeps the artifact store as it starts: what a crash left there is gone before it serves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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

    port = free_port()
    daemon = start_daemon(daemon_home, port)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
    finally:
        assert stop(daemon) == 0
    assert store.versions() == ["v1"] and store.verify("v1")
    assert not stale.exists() and fresh.is_dir()
    assert [p.name[: len(".orphan-v2-")] for p in store.root.glob(".orphan-*")] == [".orphan-v2-"]
    assert "artifact store swept" in Path(daemon.log_path).read_text()  # type: ignore[attr-defined]
