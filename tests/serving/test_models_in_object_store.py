"""A server whose models live only in an object store (a real S3-compatible server): it downloads the champion,
verified, into its own cache, and swaps to a version another host publishes there."""

from __future__ import annotations

import time

import httpx

from refitd.core import registry
from refitd.core.artifacts import MANIFEST
from refitd.core.db import make_engine, upgrade
from refitd.core.settings import Settings
from refitd.serving.server import build
from tests.artifact_factory import publish_version
from tests.s3_server import models_url, s3_server  # noqa: F401 - fixtures
from tests.serving.conftest import _start, _stop


def test_a_server_serves_and_swaps_versions_that_live_only_in_the_object_store(models_url, tmp_path,
                                                                              untrained_artifact) -> None:
    shared = {"storage": {"models_url": models_url}, "database": {"url": f"sqlite:///{tmp_path / 'refitd.db'}"}}
    worker = Settings.load(home=tmp_path / "worker", **shared)  # the host that trains and publishes
    upgrade(make_engine(worker.database_url))
    v1 = publish_version(worker, untrained_artifact)

    replica = Settings.load(home=tmp_path / "replica", serving={"poll_interval_s": 0.2}, **shared)
    assert not (tmp_path / "replica").exists()  # no shared folder: everything it serves comes from the store
    running = _start(replica, build(replica))
    try:
        answer = httpx.post(f"{running.url}/v1/predict", json={"text": "on time for once"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["model_version"] == v1
        assert (replica.models_cache_dir / v1 / MANIFEST).is_file()

        v2 = publish_version(worker, untrained_artifact, promote=False)
        registry.promote(make_engine(worker.database_url), v2, actor="test")
        deadline = time.time() + 60
        while httpx.get(f"{running.url}/v1/status", timeout=10).json()["serving"] != v2:
            assert time.time() < deadline, "the replica never swapped to the new champion"
            time.sleep(0.2)
        answer = httpx.post(f"{running.url}/v1/predict", json={"text": "lost my bag"}, timeout=30)
        assert answer.json()["predictions"][0]["model_version"] == v2
        assert (replica.models_cache_dir / v2 / MANIFEST).is_file()
    finally:
        _stop(running)
