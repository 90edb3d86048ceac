"""Hysteresis: a verdict changes only after drift.consecutive checks in a row say so; a drift-triggered
refit waits for it, and every decision it skips meanwhile is an event with why."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlmodel import select

from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.settings import Settings
from refitd.core.tables import DriftCheck, Event, Feedback
from refitd.daemon.drift.verdict import held_verdict, pending_drift, settle
from refitd.daemon.launcher import RefitLauncher
from refitd.daemon.triggers import consider, decide
from tests.artifact_factory import publish_version

D, C = "drifted", "not_drifted"


def test_a_verdict_changes_after_that_many_checks_in_a_row() -> None:
    assert held_verdict(None, [D], needs=2) == (C, 1)  # the first check ever: not drifted until confirmed
    assert held_verdict(C, [D, D], needs=2) == (D, 2)
    assert held_verdict(C, [D, C, D], needs=3) == (C, 1)
    assert held_verdict(D, [C], needs=2) == (D, 1)  # the end of drift needs confirming too
    assert held_verdict(D, [C, C], needs=2) == (C, 2)
    assert held_verdict(D, [D, C], needs=2) == (D, 1)
    assert held_verdict(C, [D], needs=1) == (D, 1)  # consecutive = 1: every check's own verdict
    assert held_verdict(None, [C], needs=3) == (C, 1)


@pytest.fixture
def home(tmp_path: Path, untrained_artifact: Path, db_url: str) -> Settings:
    settings = Settings.load(home=tmp_path, database={"url": db_url}, drift={"consecutive": 3},
                             refit={"min_new_labels": 5, "cooldown_minutes": 30})
    upgrade(make_engine(settings.database_url))
    publish_version(settings, untrained_artifact)
    with session_scope(make_engine(settings.database_url)) as s:
        s.add_all(Feedback(text=f"label {i} {time.time_ns()}", label="negative", source="test") for i in range(5))
    return settings


def _check(settings: Settings, found: str) -> DriftCheck:
    """Store a check whose own verdict is ``found`` the way run_check does: settled first."""
    with session_scope(make_engine(settings.database_url)) as s:
        verdict, reason, held = settle(s, found, f"the window was {found}", needs=settings.drift.consecutive)
        row = DriftCheck(model_version="v1", window_size=300, verdict=verdict, reason=reason, signals={"_verdict": held})
        s.add(row)
        s.flush()
        s.refresh(row)
        return row


def test_a_drift_refit_waits_for_consecutive_drifted_checks_and_records_each_skip(home: Settings) -> None:
    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    first = _check(home, D)
    assert first.verdict == C and "still not drifted: 1 of the 3 checks in a row" in first.reason
    with session_scope(engine) as s:
        assert "drifted in 1 of the 3 checks in a row that drift.consecutive needs" in pending_drift(s)
    skipped = consider(home, engine, launcher, "drift", drift_verdict=first.verdict)
    assert not skipped.start and skipped.reason.startswith("drift: skipped, the window drifted in 1 of the 3")

    second = _check(home, D)
    assert second.verdict == C and second.signals["_verdict"] == {"found": D, "in_a_row": 2, "needs": 3}
    assert not consider(home, engine, launcher, "drift", drift_verdict=second.verdict).start

    third = _check(home, D)  # N in a row: the verdict changes, and the refit may start
    assert third.verdict == D and third.reason == "the window was drifted"
    with session_scope(engine) as s:
        assert pending_drift(s) is None
    assert decide(home, engine, launcher, "drift", drift_verdict=third.verdict).start

    with session_scope(engine) as s:
        events = [e.reason for e in s.exec(select(Event).where(Event.kind == "refit_skipped"))]
    assert len(events) == 2 and "1 of the 3" in events[0] and "2 of the 3" in events[1]


def test_a_clean_check_after_a_pending_drift_starts_the_count_again(home: Settings) -> None:
    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    verdicts = [_check(home, found).verdict for found in (D, D, C, D, D)]
    assert verdicts == [C, C, C, C, C]  # never three drifted in a row
    clean = _check(home, C)
    with session_scope(engine) as s:
        assert pending_drift(s) is None
    routine = decide(home, engine, launcher, "drift", drift_verdict=clean.verdict)
    assert routine.routine and not routine.start
    assert [_check(home, found).verdict for found in (D, D, D, C, C, C)] == [C, C, D, D, D, C]


def test_a_drifted_verdict_held_over_a_clean_check_starts_no_refit(home: Settings) -> None:
    """After drift (the verdict "drifted"), a clean check keeps "drifted" by hysteresis; that held-over
    verdict is no reason to refit again (e.g. the new champion's first check): skipped, with its event."""
    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    assert [_check(home, D).verdict for _ in range(3)] == [C, C, D]
    clean = _check(home, C)
    assert clean.verdict == D and clean.signals["_verdict"]["found"] == C
    skipped = consider(home, engine, launcher, "drift", drift_verdict=clean.verdict)
    assert not skipped.start and "found no drift; \"drifted\" is held until 3 checks in a row" in skipped.reason
    with session_scope(engine) as s:
        assert any("found no drift" in e.reason for e in s.exec(select(Event).where(Event.kind == "refit_skipped")))
    again = _check(home, D)  # the window drifts again: the verdict's own finding, a refit may start
    assert again.verdict == D and decide(home, engine, launcher, "drift", drift_verdict=again.verdict).start
