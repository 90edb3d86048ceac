"""The refit flow end to end under Prefect's test harness, on tiny data."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import select

from refitd.core import registry
from refitd.core.artifacts import INT8_FILE, LINEAGE_FILE, MODEL_FILE, ArtifactStore
from refitd.core.datasets import load_bundled_corpus
from refitd.core.db import make_engine, session_scope
from refitd.core.tables import Feedback, ModelVersion, RefitRun, utcnow
from tests.flows.conftest import tiny_settings


def _add_labels(settings, n: int, topics: list[str], seed: int = 0) -> None:
    """Labelled production data from other topics (the drift the refit must learn)."""
    corpus = load_bundled_corpus()
    rows = corpus[corpus["topic"].isin(topics)].sample(n=n, random_state=seed)
    now = utcnow()
    with session_scope(make_engine(settings.database_url)) as s:
        for i, (text, label) in enumerate(zip(rows["text"], rows["label"], strict=True)):
            s.add(Feedback(text=text, label=label, source="test", created_at=now + timedelta(milliseconds=i)))


def _versions(settings) -> dict[str, ModelVersion]:
    with session_scope(make_engine(settings.database_url)) as s:
        return {mv.version: mv for mv in s.exec(select(ModelVersion))}


def test_refit_produces_a_complete_gated_candidate(home, prefect_harness) -> None:
    from refitd.flows.refit import refit

    settings = tiny_settings(home, gate={"shadow_minutes": 5})
    _add_labels(settings, 500, ["apple", "self_driving", "coachella"])
    result = refit(settings, trigger="manual", quick=True)
    print(f"refit: {result['verdict']}: {result['reason']}")
    version = result["version"]
    assert version == "v2" and result["parent"] == "v1"
    # it passed the offline gate, and with gate.shadow_minutes it goes into shadow, not straight to champion
    assert result["verdict"] == "shadow" and result["reason"].startswith("offline gate passed: macro_f1 on recent")
    assert result["reason"].endswith("scoring live traffic in shadow for 5 min beside v1 before promotion")
    mv = _versions(settings)[version]
    assert mv.parent == "v1" and mv.data_digest and mv.flow_run_id and mv.gate_reason == result["reason"]
    assert mv.params["base_model"] is None and mv.params["labels_until"]  # the bundled base; the newest label read
    from refitd.core import reference

    published = reference.published(settings)  # the rows it read, published beside the models for every host
    assert published is not None and mv.params["reference_digest"] == published.digest == reference.info(settings).digest
    assert mv.data_counts["train"]["sources"]["feedback_new"] > 0 and mv.data_counts["recent_test"]["rows"] > 0
    m = mv.metrics
    for set_name in ("frozen", "recent", "frozen_int8", "recent_int8"):
        assert m["candidate"][set_name]["n"] > 0
    assert m["champion"]["frozen"]["n"] == m["candidate"]["frozen"]["n"]
    # the same frozen set as v1's own run: v1's logits stored then are read, not recomputed, and give v1's record
    v1 = _versions(settings)["v1"].metrics
    assert m["frozen_set"] == v1["frozen_set"] and m["champion_reused"] == ["frozen"]
    assert m["champion"]["frozen"] == v1["candidate"]["frozen"]
    assert "v1's stored logits on it reused" in result["reason"]
    assert m["trial_load"]["ok"] and m["parity_max_abs_diff"] < 1e-3
    assert 0.05 < m["calibration"]["temperature"] < 20
    # the ATC threshold is set on the recent test set (new traffic held out) when it is large enough
    recent_rows = mv.data_counts["recent_test"]["rows"]
    assert (m["calibration"]["atc_set"], m["calibration"]["atc_rows"]) == (
        ("the recent test set", recent_rows) if recent_rows >= 200 else ("validation", mv.data_counts["validation"]["rows"]))
    store = ArtifactStore(settings.models_dir)
    store.verify(version)
    meta = store.meta(version)
    assert meta.calibration.temperature == m["calibration"]["temperature"]
    assert meta.serve_file in {MODEL_FILE, INT8_FILE} and meta.labels == tuple(mv.params["labels"])
    lineage = json.loads((store.path(version) / LINEAGE_FILE).read_text())
    assert lineage["parent"] == "v1" and lineage["params"]["warm_start"] == "champion"
    with session_scope(make_engine(settings.database_url)) as s:
        run = s.exec(select(RefitRun).where(RefitRun.candidate_version == version)).one()
    assert run.status == "completed" and run.verdict == result["verdict"]
    assert mv.status == "shadow"
    with session_scope(make_engine(settings.database_url)) as s:
        assert registry.get_champion(s).version == "v1" and registry.get_shadow(s).version == "v2"


def test_sabotaged_candidate_is_rejected_and_champion_untouched(home, prefect_harness) -> None:
    from refitd.flows.refit import refit

    settings = tiny_settings(home)
    _add_labels(settings, 300, ["apple", "deflategate"], seed=1)
    result = refit(settings, trigger="drill", quick=True, shuffle_labels=True)
    assert result["verdict"] == "rejected" and "rejected:" in result["reason"]
    versions = _versions(settings)
    assert versions["v1"].status == "champion" and versions[result["version"]].status == "rejected"


def test_bad_data_fails_the_run_with_a_reason(home, prefect_harness) -> None:
    from refitd.flows.refit import refit

    settings = tiny_settings(home, training={"min_rows": 100_000})
    with pytest.raises(Exception, match="need at least 100000"):
        refit(settings, trigger="manual", quick=True)
    with session_scope(make_engine(settings.database_url)) as s:
        run = s.exec(select(RefitRun).order_by(RefitRun.id.desc())).first()
        champion = registry.get_champion(s)
    assert run.status == "failed" and "need at least 100000 (training.min_rows)" in run.reason
    assert champion.version == "v1"


def test_stored_frozen_logits_are_used_only_for_the_same_set_and_labels(tmp_path) -> None:
    import numpy as np
    import pandas as pd

    from refitd.flows import snapshot as snap
    from refitd.flows.tasks import load_frozen_logits, save_frozen_logits

    def snapshot(texts: list[str]) -> snap.Snapshot:
        frame = pd.DataFrame({"text": texts, "label": ["a", "b", "c"][: len(texts)]})
        return snap.Snapshot(train=frame, validation=frame, test=frame, recent_test=frame.head(0),
                             labels=["a", "b", "c"]).seal()

    first = snapshot(["one", "two", "three"])
    logits = np.arange(9, dtype=np.float32).reshape(3, 3)
    save_frozen_logits(tmp_path, first, logits)
    assert np.array_equal(load_frozen_logits(tmp_path, first, ["a", "b", "c"]), logits)
    assert load_frozen_logits(tmp_path, snapshot(["one", "two", "four"]), ["a", "b", "c"]) is None  # other rows
    assert load_frozen_logits(tmp_path, first, ["a", "c", "b"]) is None  # other label order
    assert load_frozen_logits(tmp_path / "nothing", first, ["a", "b", "c"]) is None
    # The same rows in another order (another training.seed): same digest, logits read back row by row.
    shuffled = snap.Snapshot(train=first.train, validation=first.validation, test=first.test.iloc[[2, 0, 1]],
                             recent_test=first.recent_test, labels=["a", "b", "c"]).seal()
    assert shuffled.frozen_digest == first.frozen_digest
    assert np.array_equal(load_frozen_logits(tmp_path, shuffled, ["a", "b", "c"]), logits[[2, 0, 1]])
