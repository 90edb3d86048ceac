"""A drift check end to end over logged predictions: insufficient, clean, shifted; rows and HTML reports."""

from __future__ import annotations

import json
import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import pandas as pd
from sqlmodel import col, delete, select

from refitd.core import registry
from refitd.core.artifacts import TRAIN_ROWS_FILE, ArtifactStore
from refitd.core.datasets import load_bundled_corpus
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.errors import ArtifactError, ConfigError
from refitd.core.registration import register_candidate
from refitd.core.settings import Settings
from refitd.core.tables import Prediction, RefitRun, new_prediction_id, utcnow
from refitd.daemon.drift.baseline import reference_rows, traffic_file
from refitd.daemon.drift.check import champion_view, run_check
from refitd.daemon.drift.performance import performance
from refitd.daemon.drift.report import workspace_project
from refitd.serving.runtime import OnnxClassifier
from tests.artifact_factory import copy_artifact
from tests.daemon.test_alerts import Receiver


def _log(settings: Settings, runtime: OnnxClassifier, texts: list[str], start) -> None:  # type: ignore[no-untyped-def]
    out = runtime.predict(texts)
    with session_scope(make_engine(settings.database_url)) as s:
        for i, (text, label, scores, emb) in enumerate(zip(texts, out.labels, out.scores, out.embeddings, strict=True)):
            s.add(Prediction(id=new_prediction_id(), created_at=start + timedelta(milliseconds=i), model_version="v1",
                             text=text, label=label, scores={}, confidence=float(scores.max()), latency_ms=1.0,
                             embedding=emb.astype(np.float16).tobytes() if i % 3 == 0 else None))  # a share kept


def test_checks_over_logged_traffic(tmp_path: Path, untrained_artifact: Path) -> None:
    corpus = load_bundled_corpus()
    airline = corpus[corpus["topic"] == "airline"].sample(1300, random_state=1)
    other = corpus[corpus["topic"] != "airline"].sample(300, random_state=1)
    receiver = Receiver()
    settings = Settings.load(home=tmp_path, drift={"window_size": 300, "min_window": 200, "reference_size": 800,
                                                   "webhook_url": receiver.url})
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = ArtifactStore(settings.models_dir)
    staged = copy_artifact(untrained_artifact, store.staging("t"))
    airline.iloc[:800][["text", "label"]].to_parquet(staged / TRAIN_ROWS_FILE)
    mv = register_candidate(engine, store, staged)
    registry.promote(engine, mv.version)
    runtime = OnnxClassifier("v1", store.path("v1"), provider="cpu")
    runtime.load()

    t0 = utcnow()
    _log(settings, runtime, airline["text"].iloc[800:900].tolist(), t0)
    tiny = run_check(settings, engine)
    assert tiny.verdict == "insufficient_data" and tiny.report_path is None

    _log(settings, runtime, airline["text"].iloc[900:1200].tolist(), t0 + timedelta(minutes=1))
    clean = run_check(settings, engine)
    assert clean.verdict == "not_drifted", clean.reason
    assert Path(clean.report_path).is_file() and Path(clean.report_path).stat().st_size <= 1_000_000
    assert {"text", "embedding", "label", "confidence", "length", "oov_share"} <= set(clean.signals)

    _log(settings, runtime, airline["text"].iloc[1200:1300].tolist() + other["text"].iloc[:200].tolist(),
         t0 + timedelta(minutes=2))
    pending = run_check(settings, engine)  # drift found once: the verdict waits for drift.consecutive (2)
    assert pending.verdict == "not_drifted" and pending.signals["_verdict"]["found"] == "drifted", pending.reason
    assert "1 of the 2 checks in a row that drift.consecutive needs said drifted" in pending.reason
    shifted = run_check(settings, engine)
    assert shifted.verdict == "drifted", shifted.reason
    for name in ("embedding", "oov_share"):
        signal = shifted.signals[name]
        assert signal["drifted"] and signal["calibrated"] and signal["score"] > signal["threshold"]
        assert signal["p_value"] <= shifted.signals["_calibration"]["cutoff"]
    assert shifted.signals["_calibration"]["false_alarm_rate"] == 0.01
    assert shifted.window_size == 300 and shifted.duration_s < 60
    assert (settings.home / "drift" / "reference-v1.parquet").is_file()  # cached for the next check
    assert (settings.home / "drift" / "reference-v1.calibration.json").is_file()  # and its calibration beside it
    workspace, project = workspace_project(settings)
    assert len(workspace.list_runs(project.id)) == 3  # the three checks that had enough data
    deadline = time.time() + 15
    while len(receiver.received) < 2 and time.time() < deadline:
        time.sleep(0.1)
    receiver.close()
    assert [m["verdict"] for m in receiver.received] == ["not_drifted", "drifted"]  # on each change of verdict only
    assert "not_drifted → drifted" in receiver.received[1]["text"]

    cache = settings.home / "drift" / "reference-v1.parquet"
    rows = len(pd.read_parquet(cache))
    cache.write_bytes(cache.read_bytes()[:100])  # torn, as a check killed mid-write once left it
    again = run_check(settings, engine)  # rebuilt, not a check that fails until someone deletes the file
    assert again.verdict == "drifted" and len(pd.read_parquet(cache)) == rows

    # An operator changes drift.reference_size: the next check draws the reference again at that size.
    resized = Settings.load(home=tmp_path, drift={"window_size": 300, "min_window": 200, "reference_size": 600})
    smaller = run_check(resized, engine)
    assert smaller.signals["_reference"]["rows"] == 600 and len(pd.read_parquet(cache)) == 600
    assert run_check(resized, engine).signals["_reference"]["rows"] == 600  # and keeps it
    # A record written before the size was kept in it: taken as drawn at the size in force, and says so from then
    # on, so a later change is seen; a cache without its record is drawn again.
    record = settings.home / "drift" / "reference-v1.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "reference_size"}))
    drawn = cache.stat().st_mtime_ns
    assert run_check(resized, engine).signals["_reference"]["rows"] == 600
    assert cache.stat().st_mtime_ns == drawn and json.loads(record.read_text())["reference_size"] == 600
    record.unlink()
    assert run_check(resized, engine).signals["_reference"]["source"] == "training rows"
    assert cache.stat().st_mtime_ns != drawn
    with pytest.raises(ConfigError, match=r"drift.reference_size must be ≥ drift.min_window \(200\); got 100"):
        Settings.load(home=tmp_path, drift={"reference_size": 100})


def test_time_window_keeps_only_recent_predictions(tmp_path: Path) -> None:
    from refitd.daemon.drift.check import load_window

    settings = Settings.load(home=tmp_path)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    now = utcnow()
    with session_scope(engine) as s:
        for minutes_ago in (120, 90, 30, 10, 1):
            s.add(Prediction(id=new_prediction_id(), created_at=now - timedelta(minutes=minutes_ago), model_version="v1",
                             text=f"{minutes_ago} minutes ago", label="neutral", scores={}, confidence=0.5,
                             latency_ms=1.0, embedding=b""))
    with session_scope(engine) as s:
        assert load_window(s, size=10, minutes=60)["text"].tolist() == ["1 minutes ago", "10 minutes ago",
                                                                         "30 minutes ago"]
        assert len(load_window(s, size=10)) == 5  # a count window reaches back as far as it must
        assert len(load_window(s, size=2, minutes=60)) == 2  # still capped by window_size


def test_live_accuracy_is_held_to_the_recent_test_score_once_the_champion_has_one() -> None:
    from refitd.core.tables import ModelVersion
    from refitd.daemon.drift.performance import held_out_accuracy, performance

    first = ModelVersion(version="v1", metrics={"candidate": {"frozen": {"accuracy": 0.82, "n": 2000},
                                                              "recent": {"n": 0}}})
    refit = ModelVersion(version="v2", metrics={"candidate": {"frozen": {"accuracy": 0.81},
                                                              "recent": {"n": 300, "accuracy": 0.70}}})
    older = ModelVersion(version="v0", metrics={"test": {"accuracy": 0.79}})  # the layout before 0.2
    assert held_out_accuracy(first, default=0.5) == (0.82, "frozen", 2000)
    assert held_out_accuracy(refit, default=0.5) == (0.70, "recent", 300)
    assert held_out_accuracy(older, default=0.5) == (0.79, "frozen", None)
    window = pd.DataFrame({"label": ["a"] * 40, "true_label": ["a"] * 24 + ["b"] * 16, "confidence": [0.7] * 40})
    _, on_frozen = performance(window, first, min_labels=30, max_drop=0.05)
    _, on_recent = performance(window, refit, min_labels=30, max_drop=0.05)
    assert on_frozen.drifted and on_frozen.score == pytest.approx(0.82 - 24 / 40) and on_frozen.p_value < 0.01
    assert not on_recent.drifted and "recent" in on_recent.method


def test_a_fall_within_the_noise_of_a_few_labels_is_not_drift() -> None:
    """Live accuracy 8 points under the held-out score on 80 labels happens by chance: large enough, not
    real enough. The same fall on 2,000 labels is drift; so is a 30-point fall on 80."""
    from refitd.core.tables import ModelVersion
    from refitd.daemon.drift.performance import accuracy_fall_p, performance

    champion = ModelVersion(version="v2", metrics={"candidate": {"recent": {"n": 330, "accuracy": 0.70}}})

    def window(n: int, right: int) -> pd.DataFrame:
        return pd.DataFrame({"label": ["a"] * n, "true_label": ["a"] * right + ["b"] * (n - right),
                             "confidence": [0.7] * n})

    _, few = performance(window(80, 50), champion, max_drop=0.05, alpha=0.01)  # 0.625: 7.5 points under
    assert few.score == pytest.approx(0.075) and not few.drifted and 0.01 < few.p_value < 0.2
    _, many = performance(window(2000, 1250), champion, max_drop=0.05, alpha=0.01)
    assert many.drifted and many.p_value < 0.01
    _, large = performance(window(80, 32), champion, max_drop=0.05, alpha=0.01)
    assert large.drifted
    # Under no change, a one-sided p-value at or below 1% comes about once in a hundred windows.
    rng = np.random.default_rng(0)
    hits = [accuracy_fall_p(int(rng.binomial(100, 0.7)), 100, float(rng.binomial(330, 0.7)) / 330, 330) <= 0.01
            for _ in range(4000)]
    assert np.mean(hits) <= 0.02


def test_the_label_free_estimate_counts_confidences_above_the_champions_atc_threshold() -> None:
    from refitd.core.tables import ModelVersion
    from refitd.daemon.drift.performance import performance

    window = pd.DataFrame({"label": ["a"] * 40, "true_label": ["a"] * 20 + ["b"] * 20,
                           "confidence": [0.9] * 10 + [0.7] * 30})
    with_threshold = ModelVersion(version="v2", metrics={"calibration": {"temperature": 1.3, "atc_threshold": 0.8}})
    older = ModelVersion(version="v1", metrics={"calibration": {"temperature": 1.3}})  # stored before the threshold
    perf, _ = performance(window, with_threshold, min_labels=30)
    assert perf["estimated_accuracy"] == pytest.approx(0.25) and "ATC" in perf["estimate_method"]
    assert perf["estimate_error"] == pytest.approx(0.25 - 0.5)
    perf, _ = performance(window, older, min_labels=30)
    assert perf["estimated_accuracy"] == pytest.approx(0.75) and perf["estimate_method"] == "mean confidence"


def test_the_label_free_estimate_is_set_again_on_the_champions_labelled_answers_before_the_window() -> None:
    """After a shift the stored threshold counts the new traffic's confident mistakes as right; set on the
    champion's own labelled answers to that traffic (before the window, never the window's own labels), the
    estimate follows. Too few answers: the stored threshold stands."""
    from refitd.core.tables import ModelVersion
    from refitd.daemon.drift.performance import performance

    rng = np.random.default_rng(7)

    def traffic(n: int) -> pd.DataFrame:  # sure of everything, right only above 0.8: accuracy 0.4
        confidence = rng.uniform(0.5, 1.0, n)
        return pd.DataFrame({"label": ["a"] * n, "confidence": confidence,
                             "true_label": np.where(confidence > 0.8, "a", "b")})

    champion = ModelVersion(version="v1", metrics={"calibration": {"temperature": 1.0, "atc_threshold": 0.6}})
    window = traffic(200)
    stored, _ = performance(window, champion, min_labels=30)
    assert stored["estimate_error"] > 0.3 and "set on the" not in stored["estimate_method"]
    again, _ = performance(window, champion, min_labels=30, history=traffic(300))
    assert abs(again["estimate_error"]) < 0.06, again
    assert "set on the 300 latest labelled answers before the window" in again["estimate_method"]
    assert again["measured_accuracy"] == stored["measured_accuracy"]  # the window's labels are only measured
    few, _ = performance(window, champion, min_labels=30, history=traffic(199))
    assert few["estimate_error"] == stored["estimate_error"]


def test_the_window_is_seen_as_the_champion_sees_it(tmp_path: Path, untrained_artifact: Path) -> None:
    """Embeddings stored or computed in the champion's space; another version's answers replaced by the
    champion's (prediction and confidence drift compare one model with itself); measured accuracy only
    over the champion's own answers."""
    settings = Settings.load(home=tmp_path)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = ArtifactStore.from_settings(settings)
    mv = register_candidate(engine, store, copy_artifact(untrained_artifact, store.staging("t")))
    registry.promote(engine, mv.version)
    runtime = OnnxClassifier(mv.version, store.path(mv.version), provider="cpu")
    runtime.load()
    texts = ["my bag never arrived", "great crew today", "the new phone is slow", "delayed again"]
    truth = runtime.predict(texts).embeddings.astype(np.float16).astype(np.float32)
    junk = np.full(truth.shape[1], 7.0, dtype=np.float16).tobytes()
    window = pd.DataFrame({"text": texts, "model_version": [mv.version, mv.version, "v0", mv.version],
                           # kept by the champion / not kept / kept by an older version (another space) / kept
                           "embedding": [truth[0].astype(np.float16).tobytes(), None, junk,
                                         truth[3].astype(np.float16).tobytes()],
                           "label": ["logged"] * 2 + ["v0's answer", "logged"], "confidence": [0.99] * 4,
                           "true_label": ["logged", "logged", "v0's answer", None]})
    from refitd.core.registry import get_champion

    with session_scope(engine) as s:
        champion = get_champion(s)
    seen, got = champion_view(settings, champion, window)
    assert got.shape == truth.shape and np.allclose(got, truth, atol=2e-3)
    answers = runtime.predict(texts[2:3])
    assert seen["label"].tolist() == ["logged", "logged", answers.labels[0], "logged"]  # its own answers stay
    assert seen["confidence"].tolist()[:2] == [0.99, 0.99]
    assert seen["confidence"].iloc[2] == pytest.approx(float(answers.scores.max()), abs=1e-4)
    assert window["label"].iloc[2] == "v0's answer"  # the logged frame is left as it was
    perf, _ = performance(seen, champion, min_labels=1)
    assert perf["labelled"] == 2 and perf["measured_accuracy"] == 1.0  # v0's labelled answer is not the champion's


def _serving_v1(settings: Settings, artifact: Path, trained: pd.DataFrame):  # type: ignore[no-untyped-def]
    """v1, trained on ``trained`` (its reference rows), registered, promoted and loaded: (engine, store, v1, runtime)."""
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = ArtifactStore.from_settings(settings)
    staged = copy_artifact(artifact, store.staging("v1"))
    trained[["text", "label"]].assign(source="reference").to_parquet(staged / TRAIN_ROWS_FILE)
    v1 = register_candidate(engine, store, staged)
    registry.promote(engine, v1.version)
    runtime = OnnxClassifier(v1.version, store.path(v1.version), provider="cpu")
    runtime.load()
    return engine, store, v1, runtime


def test_a_champion_trained_on_new_labels_is_checked_against_the_traffic_it_learned(tmp_path: Path,
                                                                                     untrained_artifact: Path) -> None:
    """The reference follows adaptation: after a refit on production labels, the new mix is the baseline —
    traffic that stays on it is not drift, a further shift still is."""
    corpus = load_bundled_corpus()
    airline = corpus[corpus["topic"] == "airline"].sample(900, random_state=2)
    new_mix = corpus[corpus["topic"].isin(["apple", "coachella"])].sample(1200, random_state=2)
    further = corpus[corpus["topic"].isin(["deflategate", "weather"])].sample(200, random_state=2)
    settings = Settings.load(home=tmp_path, drift={"window_size": 300, "min_window": 200, "reference_size": 600,
                                                   "consecutive": 1})
    engine, store, v1, runtime = _serving_v1(settings, untrained_artifact, airline.iloc[:600])
    _log(settings, runtime, new_mix["text"].iloc[:600].tolist(), utcnow())  # v1 serves the shifted traffic
    with session_scope(engine) as s:  # the refit starts; what is served while it runs was not trained on
        s.add(RefitRun(trigger="drift", candidate_version="v2"))
    time.sleep(0.01)
    _log(settings, runtime, new_mix["text"].iloc[1000:1150].tolist(), utcnow())

    staged = copy_artifact(untrained_artifact, store.staging("v2"))  # the refit: trained on its labels
    labelled = new_mix.iloc[:200][["text", "label"]].assign(source="feedback_new")
    pd.concat([airline.iloc[:300][["text", "label"]].assign(source="reference"), labelled]).to_parquet(
        staged / TRAIN_ROWS_FILE)
    v2 = register_candidate(engine, store, staged, parent=v1.version)
    registry.promote(engine, v2.version)

    _log(settings, runtime, new_mix["text"].iloc[600:900].tolist(), utcnow())  # traffic stays on the new mix
    settled = run_check(settings, engine)
    assert settled.signals["_reference"]["source"] == "production traffic before the refit"
    assert settled.signals["_reference"]["rows"] == 600 and settled.signals["_reference"]["trained_on_new_labels"] == 200
    with session_scope(engine) as s:
        started = s.exec(select(RefitRun)).one().created_at
    assert pd.Timestamp(settled.signals["_reference"]["to"]).tz_localize(None) < pd.Timestamp(started).tz_localize(None)
    assert settled.signals["_verdict"]["found"] == "not_drifted", settled.reason

    # Retention prunes the unlabelled traffic the reference came from, and the scored copy is lost (a new host,
    # a wiped disk): the rebuilt reference is the same published rows, not the training rows it would fall to.
    reference, _ = reference_rows(settings, v2, store.path(v2.version), engine)
    with session_scope(engine) as s:
        s.execute(delete(Prediction).where(col(Prediction.created_at) < started))
    shutil.rmtree(settings.home / "drift")
    rebuilt, meta = reference_rows(settings, v2, store.path(v2.version), engine)
    assert meta["source"] == "production traffic before the refit"
    assert rebuilt["text"].tolist() == reference["text"].tolist() and len(rebuilt) == 600
    smaller = settings.model_copy(update={"drift": settings.drift.model_copy(update={"reference_size": 400})})
    newest, _ = reference_rows(smaller, v2, store.path(v2.version), engine)  # a smaller size: the newest published
    assert newest["text"].tolist() == reference["text"].tolist()[:400]
    published = store.root / "reference" / traffic_file(v2.version, store.path(v2.version))
    assert published.is_file() and meta["published"] == published.name
    assert not store.shared_add(published, published.name)  # the first writer wins: another host reads that one
    published.write_bytes(b"damaged")  # a check fails, naming the file, rather than rebuild from a pruned log
    with pytest.raises(ArtifactError, match="is not a drift reference .* delete it to have it built again"):
        reference_rows(settings, v2, store.path(v2.version), engine)
    published.unlink()

    _log(settings, runtime, new_mix["text"].iloc[900:1000].tolist() + further["text"].tolist(), utcnow())
    shifted = run_check(settings, engine)
    assert shifted.signals["_verdict"]["found"] == "drifted", shifted.reason


def test_the_new_champions_reference_starts_where_the_drift_began(tmp_path: Path, untrained_artifact: Path) -> None:
    """A refit soon after a shift: the reference is the traffic since the drift began, not the newest
    ``reference_size`` rows, which would reach back into the traffic before the shift."""
    from refitd.core.tables import DriftCheck
    from refitd.daemon.drift.baseline import drift_onset

    corpus = load_bundled_corpus()
    airline = corpus[corpus["topic"] == "airline"].sample(700, random_state=3)
    new_mix = corpus[corpus["topic"].isin(["apple", "coachella"])].sample(300, random_state=3)
    settings = Settings.load(home=tmp_path, drift={"window_size": 200, "min_window": 100, "reference_size": 1000})
    engine, store, v1, runtime = _serving_v1(settings, untrained_artifact, airline.iloc[:300])
    before = utcnow()
    _log(settings, runtime, airline["text"].iloc[300:700].tolist(), before)  # 400 rows before the shift
    shift = before + timedelta(seconds=1)
    _log(settings, runtime, new_mix["text"].tolist(), shift)  # 300 after it
    while utcnow() < shift + timedelta(seconds=0.5):  # the refit starts after all of it, however fast this ran
        time.sleep(0.05)

    def check(start, found: str, verdict: str) -> DriftCheck:
        return DriftCheck(model_version=v1.version, window_start=start, window_end=start + timedelta(seconds=1),
                          verdict=verdict, signals={"_verdict": {"found": found}})

    with session_scope(engine) as s:
        s.add(check(before, "not_drifted", "not_drifted"))  # the last clean window ends at the shift
        # the first window to find it is mostly the traffic before the shift (held by hysteresis)
        s.add(check(before + timedelta(milliseconds=300), "drifted", "not_drifted"))
        s.add(check(shift + timedelta(milliseconds=150), "drifted", "drifted"))
        s.add(DriftCheck(model_version=v1.version, verdict="insufficient_data", signals={}))  # a quiet moment
    time.sleep(0.01)
    with session_scope(engine) as s:
        s.add(RefitRun(trigger="drift", candidate_version="v2"))
        started = utcnow()
        assert drift_onset(s, v1.version, before=started) == shift
    time.sleep(0.01)
    staged = copy_artifact(untrained_artifact, store.staging("v2"))
    pd.concat([airline.iloc[:100][["text", "label"]].assign(source="reference"),
               new_mix.iloc[:200][["text", "label"]].assign(source="feedback_new")]).to_parquet(staged / TRAIN_ROWS_FILE)
    v2 = register_candidate(engine, store, staged, parent=v1.version)
    rows, meta = reference_rows(settings, v2, store.path(v2.version), engine)
    assert meta["source"] == "production traffic before the refit since the drift began"
    assert len(rows) == 300 and set(rows["text"]) == set(new_mix["text"])  # none of the 400 airline rows
    assert meta["drift_onset"] == shift

    with session_scope(engine) as s:  # a check that finds no drift ends the run: no onset after it
        s.add(check(started - timedelta(milliseconds=1), "not_drifted", "not_drifted"))
    time.sleep(0.01)
    with session_scope(engine) as s:
        assert drift_onset(s, v1.version, before=utcnow()) is None


def test_only_labels_that_measure_count_in_the_checks_performance(tmp_path: Path, untrained_artifact: Path) -> None:
    """Corrections of wrong answers (a source outside ``serving.feedback_measure_sources``) would read as a fall in
    live accuracy: with the setting the check measures on the audit's labels alone, and the estimate's history too."""
    from refitd.core.tables import Feedback

    corpus = load_bundled_corpus()
    airline = corpus[corpus["topic"] == "airline"].sample(700, random_state=5)
    settings = Settings.load(home=tmp_path, drift={"window_size": 300, "min_window": 200, "reference_size": 400,
                                                   "min_labels": 30})
    engine, _, v1, runtime = _serving_v1(settings, untrained_artifact, airline.iloc[:400])
    _log(settings, runtime, airline["text"].iloc[400:700].tolist(), utcnow())
    with session_scope(engine) as s:
        rows = s.exec(select(Prediction).order_by(col(Prediction.created_at))).all()
        labels = sorted(set(airline["label"]))
        for row in rows[:60]:  # an audit: it happens to agree with every answer it saw
            s.add(Feedback(prediction_id=row.id, label=row.label, source="review"))
        for row in rows[60:120]:  # users corrected answers they found wrong
            s.add(Feedback(prediction_id=row.id, label=next(lbl for lbl in labels if lbl != row.label), source="api"))
    every = run_check(settings, engine).signals["_performance"]
    assert every["labelled"] == 120 and every["measured_accuracy"] == 0.5
    audited = Settings.load(home=tmp_path, drift={"window_size": 300, "min_window": 200, "reference_size": 400,
                                                  "min_labels": 30}, serving={"feedback_measure_sources": ["review"]})
    measured = run_check(audited, engine).signals["_performance"]
    assert measured["labelled"] == 60 and measured["measured_accuracy"] == 1.0
