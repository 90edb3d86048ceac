"""Versions in an object store, against a real S3-compatible server (moto, its own process): published
files first and manifest last, downloads checked against the manifest into a local cache."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from refitd.core.artifacts import MANIFEST, MODEL_FILE, TOKENIZER_FILE, ArtifactMeta, ArtifactStore
from refitd.core.db import make_engine, upgrade
from refitd.core.errors import ArtifactError, ConfigError
from refitd.core.objectstore import ObjectStoreArtifacts
from refitd.core.registration import register_candidate, sweep
from refitd.core.settings import Settings
from tests.conftest import free_port
from tests.s3_server import models_url, s3_server  # noqa: F401 - fixtures

MODEL_BYTES = bytes(range(256)) * 4096  # 1 MiB


def _fill(folder: Path, tag: str = "one") -> Path:
    ArtifactMeta(labels=["a", "b"], max_length=16, embedding_dim=4).write(folder)
    (folder / MODEL_FILE).write_bytes(MODEL_BYTES)
    (folder / TOKENIZER_FILE).write_text("{}")
    (folder / "hf").mkdir()
    (folder / "hf" / "config.json").write_text(json.dumps({"tag": tag}))
    return folder


def _store(url: str, home: Path) -> ObjectStoreArtifacts:
    """The store of a host whose home is ``home`` (its cache: ``home/cache/models``)."""
    store = ArtifactStore.from_settings(Settings.load(home=home, storage={"models_url": url}))
    assert isinstance(store, ObjectStoreArtifacts) and store.root == home / "cache" / "models"
    return store


def _bucket_and_prefix(url: str) -> tuple[str, str]:
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    return bucket, prefix


def _publish(url: str, tmp_path: Path, version: str = "v1", tag: str = "one") -> ObjectStoreArtifacts:
    publisher = _store(url, tmp_path / "publisher")
    with publisher.writer(version) as folder:
        _fill(folder, tag)
    return publisher


def test_a_published_version_is_read_back_by_a_fresh_store_through_a_verified_download(models_url, s3_server,
                                                                                     tmp_path) -> None:
    publisher = _publish(models_url, tmp_path)
    bucket, prefix = _bucket_and_prefix(models_url)
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"{prefix}/v1/{n}" for n in (MANIFEST, MODEL_FILE, TOKENIZER_FILE, "refitd.json", "hf/config.json")}
    assert publisher.uri("v1") == f"{models_url}/v1" and (publisher.root / "v1" / MANIFEST).is_file()

    reader = _store(models_url, tmp_path / "reader")
    assert not reader.root.exists() and reader.versions() == ["v1"] and reader.exists("v1")
    folder = reader.verify("v1")
    assert folder == reader.root / "v1" and (folder / MODEL_FILE).read_bytes() == MODEL_BYTES
    assert json.loads((folder / "hf" / "config.json").read_text()) == {"tag": "one"}
    assert reader.meta("v1").labels == ("a", "b") and reader.verify("v1") == folder  # cached: no second download
    assert sorted(p.name for p in reader.root.iterdir()) == ["v1"]  # no scratch left behind


def test_a_shared_file_added_by_two_hosts_keeps_the_first(models_url, tmp_path) -> None:
    one, other = _store(models_url, tmp_path / "one"), _store(models_url, tmp_path / "other")
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    assert other.shared_read("drift-traffic-v1-x.parquet") is None
    assert one.shared_add(first, "drift-traffic-v1-x.parquet")
    assert not other.shared_add(second, "drift-traffic-v1-x.parquet")
    assert other.shared_read("drift-traffic-v1-x.parquet") == b"first"
    one.shared_put(second, "reference-0a1b.parquet")
    listed = other.shared_files("drift-traffic-")
    assert list(listed) == ["drift-traffic-v1-x.parquet"] and abs(listed["drift-traffic-v1-x.parquet"] - time.time()) < 600
    other.shared_remove("drift-traffic-v1-x.parquet")
    other.shared_remove("drift-traffic-v1-x.parquet")  # gone already: fine
    assert one.shared_files("drift-traffic-") == {} and one.shared_read("reference-0a1b.parquet") == b"second"
    # A listing without a time (some S3-compatible servers, other fsspec backends) never reads as old.
    other.remote.objects = lambda folder="": {"reference/drift-traffic-v2-0123456789ab.parquet": None,  # type: ignore[method-assign]
                                             "reference/drift-traffic-v3-0123456789ab.parquet": "yesterday"}
    assert all(abs(t - time.time()) < 60 for t in other.shared_files("drift-traffic-").values())


def test_a_version_without_its_manifest_is_invisible(models_url, s3_server, tmp_path) -> None:
    _publish(models_url, tmp_path)
    bucket, prefix = _bucket_and_prefix(models_url)
    s3_server.client().delete_object(Bucket=bucket, Key=f"{prefix}/v1/{MANIFEST}")
    reader = _store(models_url, tmp_path / "reader")
    assert reader.versions() == [] and not reader.exists("v1")
    with pytest.raises(ArtifactError, match=f"no sealed artifact at {models_url}/v1"):
        reader.verify("v1")


def test_a_partial_upload_is_never_served_and_the_next_publish_replaces_it(models_url, s3_server, tmp_path) -> None:
    bucket, prefix = _bucket_and_prefix(models_url)
    client = s3_server.client()
    for name, body in {MODEL_FILE: b"half", "junk.bin": b"left by a killed upload"}.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/v1/{name}", Body=body)  # files, no manifest yet
    reader = _store(models_url, tmp_path / "reader")
    assert reader.versions() == []
    with pytest.raises(ArtifactError, match="no sealed artifact"):
        reader.path("v1")
    assert not (reader.root / "v1").exists()

    _publish(models_url, tmp_path)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"{prefix}/v1/junk.bin" not in keys
    assert (reader.verify("v1") / MODEL_FILE).read_bytes() == MODEL_BYTES


def test_a_tampered_object_is_refused_naming_the_file_and_nothing_is_cached(models_url, s3_server, tmp_path) -> None:
    _publish(models_url, tmp_path)
    bucket, prefix = _bucket_and_prefix(models_url)
    client = s3_server.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=f"{prefix}/v1/{MODEL_FILE}")["Body"].read())
    data[len(data) // 2] ^= 0x01  # one byte, same size
    client.put_object(Bucket=bucket, Key=f"{prefix}/v1/{MODEL_FILE}", Body=bytes(data))

    reader = _store(models_url, tmp_path / "reader")
    for attempt in (reader.verify, reader.path):
        with pytest.raises(ArtifactError, match=f"{MODEL_FILE} does not match its manifest checksum"):
            attempt("v1")
    assert list(reader.root.iterdir()) == []  # neither a version folder nor a scratch folder


def test_a_damaged_cached_copy_is_downloaded_again(models_url, tmp_path) -> None:
    _publish(models_url, tmp_path)
    reader = _store(models_url, tmp_path / "reader")
    cached = reader.verify("v1") / MODEL_FILE
    cached.write_bytes(b"\x00" * len(MODEL_BYTES))  # the local disk went bad, or someone edited it
    assert (reader.verify("v1") / MODEL_FILE).read_bytes() == MODEL_BYTES


def test_a_cached_version_still_loads_while_the_store_is_unreachable(models_url, tmp_path, monkeypatch) -> None:
    _publish(models_url, tmp_path)
    home = tmp_path / "reader"
    _store(models_url, home).verify("v1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    offline = _store(models_url, home)
    assert (offline.verify("v1") / MODEL_FILE).read_bytes() == MODEL_BYTES  # checked against the cached manifest
    with pytest.raises(ArtifactError, match="cannot read"):
        offline.verify("v2")


def test_concurrent_readers_on_one_cache_all_get_the_verified_folder(models_url, tmp_path) -> None:
    _publish(models_url, tmp_path)
    home, cache = tmp_path / "reader", tmp_path / "reader" / "cache" / "models"
    start, results, errors = threading.Barrier(6), [], []

    def read() -> None:
        store = _store(models_url, home)  # each its own client, like separate processes
        start.wait()
        try:
            results.append(store.verify("v1"))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and results == [cache / "v1"] * 6
    assert sorted(p.name for p in cache.iterdir()) == ["v1"]
    assert (cache / "v1" / MODEL_FILE).read_bytes() == MODEL_BYTES


def test_registration_publishes_to_the_store_and_a_start_sets_aside_what_no_row_names(models_url, s3_server,
                                                                                    tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'refitd.db'}")
    upgrade(engine)
    store = _store(models_url, tmp_path / "worker")
    mv = register_candidate(engine, store, _fill(store.staging("t")))
    assert mv.version == "v1" and mv.artifact_uri == f"{models_url}/v1"
    with store.writer("v2") as folder:  # published, then the process died before its row was committed
        _fill(folder, "dead")
    assert store.versions() == ["v1", "v2"]
    server = _store(models_url, tmp_path / "server")
    assert json.loads((server.verify("v2") / "hf" / "config.json").read_text()) == {"tag": "dead"}  # cached there

    swept = sweep(engine, _store(models_url, tmp_path / "daemon"))
    assert [p.name[: len(".orphan-v2-")] for p in swept] == [".orphan-v2-"]
    assert store.versions() == ["v1"] and not store.exists("v2")
    bucket, prefix = _bucket_and_prefix(models_url)
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"{prefix}/{swept[0].name}/{MODEL_FILE}" in keys  # kept for a day, out of the version namespace

    second = register_candidate(engine, store, _fill(store.staging("t"), "two"))  # takes the name v2 again
    assert second.version == "v2"
    for host in (store, server):  # a cached copy of the set-aside v2 is never served for the new one
        assert json.loads((host.verify("v2") / "hf" / "config.json").read_text()) == {"tag": "two"}

    assert [p.name[:11] for p in store.sweep(older_than_s=0)] == [".orphan-v2-"]
    assert store.versions() == ["v1", "v2"]


def test_a_failed_registration_unpublishes(models_url, tmp_path, monkeypatch) -> None:
    from refitd.core import registry

    engine = make_engine(f"sqlite:///{tmp_path / 'refitd.db'}")
    upgrade(engine)
    store = _store(models_url, tmp_path / "worker")
    staged = _fill(store.staging("t"))

    def crash(session, *, version, **fields):
        assert store.exists(version)
        raise RuntimeError("crash between publish and insert")

    monkeypatch.setattr(registry, "add_candidate", crash)
    with pytest.raises(RuntimeError, match="between publish and insert"):
        register_candidate(engine, store, staged)
    assert store.versions() == [] and (staged / MANIFEST).is_file()


@pytest.mark.parametrize(("given", "problem"), [
    ("gs://bucket/models", "gs:// is not supported"),
    ("models", "must be an absolute folder"),
    ("s3://key:secret@bucket/models", "no credentials"),
    ("s3:///models", "with a bucket name"),
])
def test_models_url_is_checked_at_load(given: str, problem: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match=problem):
        Settings.load(home=tmp_path, storage={"models_url": given})


def test_models_url_defaults_to_the_home_models_folder_and_may_name_another(tmp_path) -> None:
    assert Settings.load(home=tmp_path).models_dir == tmp_path / "models"
    local = Settings.load(home=tmp_path, storage={"models_url": f"file://{tmp_path / 'shared'}"})
    assert local.models_dir == tmp_path / "shared" and ArtifactStore.from_settings(local).root == tmp_path / "shared"
    remote = Settings.load(home=tmp_path, storage={"models_url": "s3://bucket/models/"})
    assert remote.storage.models_url == "s3://bucket/models"
    with pytest.raises(ConfigError, match="ArtifactStore.from_settings"):
        _ = remote.models_dir
