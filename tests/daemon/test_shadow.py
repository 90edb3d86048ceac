"""The shadow watch: a version in shadow is promoted or rejected on how it answered live traffic."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from refitd.core import registry
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.errors import RegistryError
from refitd.core.settings import Settings
from refitd.core.shadow import record_scores
from refitd.core.tables import Event, Feedback, Prediction, ShadowScore, new_prediction_id
from refitd.daemon import guard, shadow
from refitd.daemon.launcher import RefitLauncher
from refitd.daemon.triggers import decide
from tests.artifact_factory import publish_version


@pytest.fixture
def home(tmp_path: Path, untrained_artifact: Path, db_url: str) -> Settings:
    settings = Settings.load(home=tmp_path, database={"url": db_url}, refit={"min_new_labels": 1},
                             gate={"shadow_minutes": 0, "shadow_min_rows": 40, "shadow_min_labels": 20,
                                   "shadow_min_delta": 0.02, "shadow_min_agreement": 0.6})
    upgrade(make_engine(settings.database_url))
    publish_version(settings, untrained_artifact)  # v1, the champion
    publish_version(settings, untrained_artifact, promote=False)  # v2, a candidate that passed the offline gate
    registry.start_shadow(make_engine(settings.database_url), "v2", reason="passed the offline gate")
    return settings


def _traffic(settings: Settings, n: int, *, agree: int, both: int = 0, champion: int = 0, shadow_only: int = 0,
             neither: int = 0) -> None:
    """n requests v1 answered 'negative', v2 the same on the first ``agree`` and 'positive' on the rest; labels on
    ``both`` agreeing requests (both right), and on disagreeing ones: ``champion`` (v1 right), ``shadow_only`` (v2
    right), ``neither`` (both wrong)."""
    engine = make_engine(settings.database_url)
    ids = [new_prediction_id() for _ in range(n)]
    truth = {i: "negative" for i in range(both)}
    kinds = ["negative"] * champion + ["positive"] * shadow_only + ["neutral"] * neither
    truth |= {agree + i: t for i, t in enumerate(kinds)}
    assert both <= agree and agree + len(kinds) <= n
    with session_scope(engine) as s:
        for i, pid in enumerate(ids):
            s.add(Prediction(id=pid, model_version="v1", text=f"request {i}", label="negative", confidence=0.7,
                             latency_ms=3.0))
        s.flush()
        record_scores(s, [{"version": "v2", "prediction_id": pid, "label": "negative" if i < agree else "positive",
                           "confidence": 0.8} for i, pid in enumerate(ids)])
        s.add_all(Feedback(prediction_id=ids[i], label=t, source="test") for i, t in truth.items())


def _status(settings: Settings, version: str) -> str:
    with session_scope(make_engine(settings.database_url)) as s:
        return registry.get_version(s, version=version).status


def test_the_shadow_waits_for_its_time_and_its_rows(home: Settings) -> None:
    engine = make_engine(home.database_url)
    longer = home.updated({"gate": {"shadow_minutes": 30}})
    _traffic(home, 60, agree=60)
    assert shadow.check(longer, engine)["action"] == "shadowing"
    fewer = home.updated({"gate": {"shadow_min_rows": 100}})
    waiting = shadow.check(fewer, engine)
    assert waiting["action"] == "waiting" and "60 live requests scored in shadow, needs 100" in waiting["reason"]
    assert _status(home, "v2") == "shadow"
    # while it waits, no refit starts: its verdict comes first
    skipped = decide(home, engine, RefitLauncher(home, engine), "labels")
    assert not skipped.start and "v2 is being scored in shadow" in skipped.reason


def test_a_shadow_without_enough_traffic_ends_on_its_offline_gate_at_its_deadline(home: Settings) -> None:
    """No server scored it (or traffic is too thin): refits are held while it is in shadow, so past
    gate.shadow_max_minutes it is promoted on the offline gate it passed, and says so."""
    engine = make_engine(home.database_url)
    _traffic(home, 10, agree=10)
    assert shadow.check(home, engine)["action"] == "waiting"  # the default deadline is hours away
    outcome = shadow.check(home.updated({"gate": {"shadow_max_minutes": 0}}), engine)
    assert outcome["action"] == "promoted", outcome
    assert "10 live requests scored (< 40" in outcome["reason"] and "promoted on the offline gate" in outcome["reason"]
    assert _status(home, "v2") == "champion"


def test_better_live_accuracy_promotes_and_the_watch_follows(home: Settings) -> None:
    engine = make_engine(home.database_url)
    _traffic(home, 50, agree=30, both=18, shadow_only=9, neither=3)  # 30 labels: v1 0.60, v2 0.90
    outcome = shadow.check(home, engine)
    assert outcome["action"] == "promoted", outcome
    assert outcome["accuracy"] == pytest.approx(0.9) and outcome["champion_accuracy"] == pytest.approx(0.6)
    assert outcome["agreement"] == pytest.approx(0.6) and outcome["scored"] == 50 and outcome["labelled"] == 30
    assert _status(home, "v2") == "champion" and _status(home, "v1") == "archived"
    with session_scope(engine) as s:
        mv = registry.get_version(s, version="v2")
        promoted = s.exec(select(Event).where(Event.kind == "promoted", Event.subject == "v2")).one()
    assert mv.metrics["shadow"]["accuracy"] == pytest.approx(0.9) and "shadow passed" in mv.metrics["shadow"]["verdict"]
    assert promoted.actor == "shadow" and promoted.data["previous"] == "v1"
    assert "live accuracy 0.900 vs v1's 0.600 on the same 30 labelled requests" in promoted.reason
    assert guard.check(home, engine)["action"] == "watching"  # the post-promotion watch takes over
    assert shadow.check(home, engine) is None


def test_worse_or_not_better_enough_live_accuracy_rejects(home: Settings) -> None:
    engine = make_engine(home.database_url)
    _traffic(home, 50, agree=40, both=16, champion=2, shadow_only=2, neither=5)  # 25 labels: 0.72 vs 0.72 (Δ 0 < 0.02)
    outcome = shadow.check(home, engine)
    assert outcome["action"] == "rejected" and "needs ≥ +0.020" in outcome["reason"]
    assert _status(home, "v2") == "rejected" and _status(home, "v1") == "champion"
    with session_scope(engine) as s:
        assert "shadow failed" in s.exec(select(Event).where(Event.kind == "rejected")).one().reason


@pytest.mark.parametrize(("agree", "action"), [(45, "promoted"), (20, "rejected")])
def test_with_few_labels_agreement_decides(home: Settings, agree: int, action: str) -> None:
    engine = make_engine(home.database_url)
    _traffic(home, 50, agree=agree, both=3, shadow_only=2)
    outcome = shadow.check(home, engine)
    assert outcome["action"] == action and "5 labelled requests (< 20), so judged on agreement" in outcome["reason"]
    assert _status(home, "v2") == ("champion" if action == "promoted" else "rejected")


def test_one_version_in_shadow_at_a_time(home: Settings, untrained_artifact: Path) -> None:
    engine = make_engine(home.database_url)
    v3 = publish_version(home, untrained_artifact, promote=False)
    registry.start_shadow(engine, v3, reason="a newer candidate")
    assert _status(home, "v2") == "rejected" and _status(home, v3) == "shadow"
    with pytest.raises(RegistryError, match="only a candidate can go into shadow"):
        registry.start_shadow(engine, "v1", reason="the champion")
    # a shadow promoted by hand is no longer judged
    registry.promote(engine, v3, actor="operator")
    assert registry.end_shadow(engine, v3, promote=False, reason="late", figures={}) is None
    assert _status(home, v3) == "champion"


def test_the_shadow_counts_its_rows_whatever_the_serving_hosts_clock_says(home: Settings) -> None:
    """A version is in shadow once, so its scores are its shadow's: a serving host whose clock is a minute behind
    the database's (which stamped the shadow's start) loses none of them."""
    engine = make_engine(home.database_url)
    _traffic(home, 50, agree=10)
    with session_scope(engine) as s:
        started = s.exec(select(Event.created_at).where(Event.kind == "shadow_started")).one()
        for row in s.exec(select(ShadowScore)):
            row.created_at = started - timedelta(minutes=1)
    outcome = shadow.check(home, engine)
    assert outcome["scored"] == 50 and outcome["action"] == "rejected", outcome
