"""The reference dataset is state: stored at first use, read from the home after, replaced only explicitly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from refitd.core import reference
from refitd.core.errors import ConfigError
from refitd.core.settings import Settings


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
    reference.load(settings)
    stored = reference.info(settings)
    path = reference.folder(settings) / stored.file
    frame = pd.read_parquet(path)
    frame.loc[0, "label"] = "praise" if frame.loc[0, "label"] != "praise" else "bug"
    frame.to_parquet(path, index=False)
    with pytest.raises(ConfigError, match="does not match its digest"):
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
