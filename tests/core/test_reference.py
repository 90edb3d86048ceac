"""The reference dataset is state: stored at first use, read from the home after, replaced only explicitly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from refitd.core import reference
from refitd.core.errors import ConfigError
from refitd.core.settings import Settings
from tests.s3_server import models_url, s3_server  # noqa: F401 - fixtures


def _file(path: Path, n: int, *, labels=("billing", "bug", "praise", "other")) -> Path:
    pd.DataFrame({"body": [f"ticket {i} about {labels[i % len(labels)]} number {i * 7}" for i in range(n)],
                  "tag": [labels[i % len(labels)] for i in range(n)]}).to_csv(path, index=False)
    return path


def test_stored_at_first_use_then_the_file_no_longer_matters(tmp_path: Path) -> None:
    data = _file(tmp_path / "mine.csv", 400)
    settings = Settings.load(home=tmp_path / "home", training={"data": data, "text_column": "body", "label_column": "tag"})
    first = reference.load(settings)
    stored = reference.info(settings)
    assert stored is not None and stored.source == str(data) and stored.rows == len(first) == 400
    assert stored.labels == {"billing": 100, "bug": 100, "other": 100, "praise": 100}
    assert set(stored.splits) == {"train", "validation", "test"} and sum(stored.splits.values()) == 400

    _file(data, 50, labels=("x", "y"))  # the file changes on disk after init
    again = reference.load(settings)
    pd.testing.assert_frame_equal(first, again)
    # even settings that now name no file (the bundled corpus) read the stored reference
    assert reference.load(Settings.load(home=tmp_path / "home")).equals(first)


def test_other_data_is_refused_until_replaced(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path / "home", training={"data": _file(tmp_path / "a.csv", 200),
                                                               "text_column": "body", "label_column": "tag"})
    reference.load(settings)
    other = settings.updated({"training": {"data": _file(tmp_path / "b.csv", 300)}})
    frame, source = reference.from_settings(other)
    with pytest.raises(ConfigError, match="refitd data replace"):
        reference.check_same(other, frame, source)
    replaced = reference.store(other, frame, source=source, actor="ops", reason="new labelling guide")
    assert replaced.rows == 300 and reference.info(settings).digest == replaced.digest
    assert len(reference.load(settings)) == 300


def test_the_bundled_default_is_stored_without_its_stream_share(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path, training={"topics": ["apple"]})
    frame = reference.load(settings)
    stored = reference.info(settings)
    assert stored.source == "bundled corpus (topics apple)" and "stream" not in stored.splits
    assert set(frame["split"]) == {"train", "validation", "test"}


def test_rows_that_do_not_match_their_digest_are_refused(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path / "home", training={"data": _file(tmp_path / "a.csv", 200),
                                                               "text_column": "body", "label_column": "tag"})
    original = reference.load(settings)
    stored = reference.info(settings)
    path = reference.folder(settings) / stored.file
    frame = pd.read_parquet(path)
    frame.loc[0, "label"] = "praise" if frame.loc[0, "label"] != "praise" else "bug"
    frame.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(reference.load(settings), original)  # the published rows replace the home's copy
    frame.to_parquet(path, index=False)
    frame.to_parquet(settings.models_dir / "reference" / stored.file, index=False)  # and the published ones too
    with pytest.raises(ConfigError, match="do not match their digest"):
        reference.load(settings)
    replaced = reference.store(settings, frame, source="fixed", actor="ops", reason="relabelled")
    assert not path.exists() or replaced.file == stored.file  # the old rows' file is gone once replaced
    assert len(reference.load(settings)) == 200


def test_a_refit_needs_the_champions_reference_and_label_set(tmp_path: Path) -> None:
    from refitd.core.datasets import digest_frame
    from refitd.core.tables import ModelVersion

    columns = {"text_column": "body", "label_column": "tag"}
    settings = Settings.load(home=tmp_path / "home", training={"data": _file(tmp_path / "a.csv", 200), **columns})
    labels = ["billing", "bug", "other", "praise"]
    trained_on = digest_frame(reference.from_settings(settings)[0])
    champion = ModelVersion(version="v3", status="champion", params={"labels": labels, "reference_digest": trained_on})
    # a home with no stored reference (a worker's own REFITD_HOME, a lost data folder): other data configured there,
    # or none (the bundled corpus), must not stand in for what the champion was trained on
    other = settings.updated({"training": {"data": _file(tmp_path / "b.csv", 300)}})
    with pytest.raises(ConfigError, match=r"no reference dataset .* the configured data, .*b\.csv .* is not what the "
                                          r"champion v3 was trained on \(digest " + trained_on[:12]):
        reference.check_belongs(other, champion)
    with pytest.raises(ConfigError, match="the configured data, bundled corpus"):
        reference.check_belongs(Settings.load(home=tmp_path / "home"), champion)
    assert reference.info(settings) is None
    reference.check_belongs(settings, champion)  # the same data configured: stored on first use, the refit goes on
    stored = reference.info(settings)
    assert stored is not None and stored.digest == trained_on and "first use on this host" in stored.reason
    # a champion recorded before digests: its label set is what can be checked
    older = ModelVersion(version="v2", status="champion", params={"labels": ["negative", "neutral", "positive"]})
    with pytest.raises(ConfigError, match=r"\(labels \['negative', 'neutral', 'positive'\]\)"):
        reference.check_belongs(Settings.load(home=tmp_path / "elsewhere", training={"data": tmp_path / "a.csv",
                                                                                     **columns}), older)

    frame, source = reference.from_settings(settings.updated({"training": {"data": _file(tmp_path / "c.csv", 200,
                                                                                        labels=("billing", "bug"))}}))
    reference.store(settings, frame, source=source, actor="ops", reason="fewer classes")
    with pytest.raises(ConfigError, match=r"has labels \['billing', 'bug'\] but the champion v3 answers .*--new-label-set"):
        reference.check_belongs(settings, champion)
    reference.store(settings, frame, source=source, actor="ops", reason="fewer classes", new_label_set_for="v3")
    reference.check_belongs(settings, champion)  # said on purpose, while v3 served
    rolled_back = ModelVersion(version="v2", status="champion", params=champion.params)
    with pytest.raises(ConfigError, match="--new-label-set"):  # another champion of the old set asks again
        reference.check_belongs(settings, rolled_back)


def _home(tmp_path: Path, name: str, models_url: str, data: Path | None = None) -> Settings:
    training = {"data": data, "text_column": "body", "label_column": "tag"} if data else {}
    return Settings.load(home=tmp_path / name, storage={"models_url": models_url}, training=training)


def test_the_published_reference_is_the_one_every_home_refits_from(tmp_path: Path) -> None:
    """Hosts that share the models (here a shared folder) share the reference: a worker's own home takes the
    published rows whatever it has configured, and a `data replace` on any host reaches every other."""
    from refitd.core.datasets import digest_frame
    from refitd.core.tables import ModelVersion

    shared = str(tmp_path / "shared-models")
    trainer = _home(tmp_path, "trainer", shared, _file(tmp_path / "a.csv", 200))
    first = reference.load(trainer)
    published = reference.published(trainer)
    assert published is not None and published.digest == digest_frame(first)

    worker = _home(tmp_path, "worker", shared, _file(tmp_path / "b.csv", 300, labels=("x", "y")))  # other data
    champion = ModelVersion(version="v2", status="champion",
                            params={"labels": sorted(published.labels), "reference_digest": published.digest})
    reference.check_belongs(worker, champion)  # the published rows, not the configured file
    assert reference.info(worker).digest == published.digest
    pd.testing.assert_frame_equal(reference.load(worker), first)
    with pytest.raises(ConfigError, match="already stored"):  # init there with its own file is refused too
        reference.check_same(worker, *reference.from_settings(worker))

    frame, source = reference.from_settings(trainer.updated({"training": {"data": _file(tmp_path / "c.csv", 240)}}))
    replaced = reference.store(worker, frame, source=source, actor="ops", reason="relabelled on the worker")
    old_copy = reference.folder(trainer) / published.file
    assert len(reference.load(trainer)) == 240 and reference.info(trainer).digest == replaced.digest
    assert not old_copy.exists()  # the rows it replaced are gone from the home

    again = reference.store(trainer, reference.load(trainer), source=source, actor="ops", reason="new label set",
                            new_label_set_for="v2")  # the same rows: only the description changes
    assert again.file == replaced.file and len(reference.load(worker)) == 240
    assert reference.info(worker).new_label_set_for == "v2"  # and it reaches the other home too
    replaced = again

    damaged = reference.folder(trainer) / replaced.file
    damaged.write_bytes(b"not parquet")  # a home's copy is a copy: the published rows replace a damaged one
    assert len(reference.load(trainer)) == 240

    store_copy = Path(shared) / "reference" / replaced.file
    store_copy.write_bytes(damaged.read_bytes())
    trainer_rows = pd.read_parquet(damaged)
    trainer_rows.loc[0, "label"] = "praise" if trainer_rows.loc[0, "label"] != "praise" else "bug"
    trainer_rows.to_parquet(store_copy, index=False)  # the published rows no longer match their digest
    fresh = _home(tmp_path, "fresh", shared)
    with pytest.raises(ConfigError, match="do not match their digest"):
        reference.load(fresh)
    assert reference.info(fresh) is None  # nothing half-taken


def test_a_home_from_before_publishing_publishes_its_reference_on_request(tmp_path: Path) -> None:
    """Nothing is published behind an operator's back: a home stored before publishing keeps refitting from its
    own copy until `refitd data publish`, which never publishes over another host's reference."""
    import shutil

    shared = str(tmp_path / "shared-models")
    old = _home(tmp_path, "old", shared, _file(tmp_path / "a.csv", 200))
    stored = reference.store(old, reference.from_settings(old)[0], source="a.csv", actor="ops", reason="x")
    shutil.rmtree(Path(shared) / "reference")  # as a home stored before publishing left it
    assert len(reference.load(old)) == 200 and reference.published(old) is None  # its copy, not published
    assert reference.publish_home(old) == stored == reference.published(old)
    assert reference.publish_home(old) == stored  # again: nothing to do

    other = _home(tmp_path, "other", shared, _file(tmp_path / "b.csv", 120))
    reference.store(other, reference.from_settings(other)[0], source="b.csv", actor="ops", reason="y",
                    publish=False)  # a home with rows of its own (the first use of a worker)
    with pytest.raises(ConfigError, match=r"another reference dataset is published .*a\.csv.*data replace"):
        reference.publish_home(other)
    assert reference.published(other).digest == stored.digest
    with pytest.raises(ConfigError, match="no reference dataset to publish"):
        reference.publish_home(_home(tmp_path, "empty", shared))


def test_the_reference_in_an_object_store(models_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On S3 as in a folder: published once, taken by another home, never swept or listed as a version, and a
    home's copy stands while the store cannot be reached."""
    import time

    from refitd.core.artifacts import ArtifactStore
    from refitd.core.objectstore import ObjectStoreArtifacts
    from tests.conftest import free_port

    trainer = _home(tmp_path, "trainer", models_url, _file(tmp_path / "a.csv", 200))
    first = reference.load(trainer)
    worker = _home(tmp_path, "worker", models_url)  # the bundled corpus configured: not what is published
    pd.testing.assert_frame_equal(reference.load(worker), first)
    store = ArtifactStore.from_settings(worker)
    assert isinstance(store, ObjectStoreArtifacts)
    assert store._sweep_remote(store.remote, time.time() + 60) == []  # older than any cutoff, and kept
    assert reference.published(worker).digest == reference.info(worker).digest

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    pd.testing.assert_frame_equal(reference.load(worker), first)
    with pytest.raises(ConfigError, match="cannot publish the reference dataset beside the models"):
        reference.store(worker, first.head(100), source="smaller", actor="ops", reason="store down")
    assert reference.info(worker).rows == 200  # nothing changed


def test_a_reference_stored_before_files_were_hashed(tmp_path: Path) -> None:
    """A home whose reference.json has no file hash (its rows file named by the text/label digest) refits as
    before, is published on request with its file's hash, and another home takes it checked by that hash."""
    import json

    from refitd.core.datasets import digest_frame

    shared = str(tmp_path / "shared-models")
    old = _home(tmp_path, "old", shared, _file(tmp_path / "a.csv", 200))
    frame = reference.from_settings(old)[0]
    digest = digest_frame(frame)
    out = reference.folder(old)
    out.mkdir(parents=True)
    frame.to_parquet(out / f"reference-{digest[:16]}.parquet", index=False)
    (out / "reference.json").write_text(json.dumps({
        "source": "a.csv", "file": f"reference-{digest[:16]}.parquet", "digest": digest, "rows": 200,
        "labels": {}, "splits": {}, "stored_at": "2026-01-02T03:04:05Z", "actor": "ops", "reason": "refitd init"}))
    assert reference.info(old).sha256 is None
    pd.testing.assert_frame_equal(reference.load(old), frame)  # nothing published: its own copy, checked by digest
    upgraded = reference.publish_home(old)
    assert upgraded.sha256 is not None and reference.info(old) == upgraded == reference.published(old)
    fresh = _home(tmp_path, "fresh", shared)
    pd.testing.assert_frame_equal(reference.load(fresh), frame)


def test_what_cannot_be_read_is_named_and_nothing_is_guessed(tmp_path: Path) -> None:
    from refitd.core.errors import ArtifactError

    shared = tmp_path / "shared-models"
    trainer = _home(tmp_path, "trainer", str(shared), _file(tmp_path / "a.csv", 200))
    first = reference.load(trainer)
    worker = _home(tmp_path, "worker", str(shared))

    (reference.folder(trainer) / "reference.json").write_text("{not json")  # a home's description damaged:
    pd.testing.assert_frame_equal(reference.load(trainer), first)  # the published one replaces it

    described = shared / "reference" / "reference.json"
    good = described.read_bytes()
    described.write_text('{"source": "x"}')  # the published description damaged
    with pytest.raises(ArtifactError, match="is not a reference description"):
        reference.published(trainer)
    pd.testing.assert_frame_equal(reference.load(trainer), first)  # this home's copy stands
    with pytest.raises(ConfigError, match="cannot read the reference dataset published .* and this home has none"):
        reference.load(worker)  # no copy: a first use would store the bundled corpus over what it cannot see
    assert reference.info(worker) is None
    described.write_bytes(good)

    worker_rows = _home(tmp_path, "w2", str(tmp_path / "its-own-models"), _file(tmp_path / "b.csv", 150))
    reference.store(worker_rows, reference.from_settings(worker_rows)[0], source="b.csv", actor="refitd",
                    reason=f"{reference.FIRST_USE_HERE}: the data v1 was trained on", publish=False)
    with pytest.raises(ConfigError, match="taken from its own configured data"):
        reference.publish_home(worker_rows)  # a worker's home-only copy is never everyone's
