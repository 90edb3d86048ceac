"""Trigger policy, the refit lease across processes, and the post-promotion watch's automatic rollback."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import select

from refitd.core import leases, registry
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.runs import start_run
from refitd.core.settings import Settings
from refitd.core.tables import Alert, Event, Feedback, Prediction, RefitRun, new_prediction_id, utcnow
from refitd.daemon import guard
from refitd.daemon.launcher import LEASE, RefitLauncher
from refitd.daemon.triggers import consider, decide
from tests.artifact_factory import publish_version


DEAD_HOOK = "http://127.0.0.1:9/hook"  # the discard port: nothing answers


@pytest.fixture
def home(tmp_path: Path, untrained_artifact: Path, db_url: str) -> Settings:
    settings = Settings.load(home=tmp_path, database={"url": db_url},
                             refit={"min_new_labels": 5, "cooldown_minutes": 30},
                             scheduler={"label_trigger": 8, "watch_min_labels": 20, "rollback_drop": 0.1})
    upgrade(make_engine(settings.database_url))
    publish_version(settings, untrained_artifact)
    return settings


def _labels(settings: Settings, n: int) -> None:
    with session_scope(make_engine(settings.database_url)) as s:
        s.add_all(Feedback(text=f"label {i} {time.time_ns()}", label="negative", source="test") for i in range(n))


def test_drift_needs_enough_new_labels_and_respects_the_cooldown(home: Settings) -> None:
    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    assert decide(home, engine, launcher, "drift", drift_verdict="not_drifted").routine
    too_few = consider(home, engine, launcher, "drift", drift_verdict="drifted")
    assert not too_few.start and "too few labels — 0 new since v1" in too_few.reason
    _labels(home, 5)
    assert decide(home, engine, launcher, "drift", drift_verdict="drifted").start
    assert not decide(home, engine, launcher, "labels").start  # 5 < label_trigger 8
    _labels(home, 3)
    assert decide(home, engine, launcher, "labels").start
    with session_scope(engine) as s:  # a refit started a minute ago
        run = start_run(s, trigger="drift", params={})
        run.created_at = utcnow() - timedelta(minutes=1)
    cooled = consider(home, engine, launcher, "labels")
    assert not cooled.start and "cooldown" in cooled.reason
    with session_scope(engine) as s:
        s.exec(select(RefitRun)).first().created_at = utcnow() - timedelta(minutes=31)
    assert decide(home, engine, launcher, "cron").start
    with session_scope(engine) as s:
        reasons = [e.reason for e in s.exec(select(Event).where(Event.kind == "refit_skipped"))]
    assert len(reasons) == 2 and "too few labels" in reasons[0] and "cooldown" in reasons[1]  # every skip, with why


def test_a_drift_refit_waiting_for_labels_starts_once_they_are_in_not_at_the_next_check(home: Settings,
                                                                                     monkeypatch) -> None:
    """The follow-up between checks: the newest check found drift, too few labels then; once they arrive the refit
    starts at the follow-up (the launch is recorded, not run), and the waits before it are no events."""
    from refitd.core.tables import DriftCheck
    from refitd.daemon.triggers import follow_up_drift

    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    launched: list[tuple[str, str]] = []
    monkeypatch.setattr(launcher, "start", lambda trigger, reason: launched.append((trigger, reason)) or (True, ""))
    assert follow_up_drift(home, engine, launcher) is None  # no check yet

    def check(found: str, verdict: str, minutes_ago: float = 0, version: str = "v1") -> int:
        with session_scope(engine) as s:
            row = DriftCheck(model_version=version, verdict=verdict, signals={"_verdict": {"found": found}},
                             created_at=utcnow() - timedelta(minutes=minutes_ago))
            s.add(row)
            s.flush()
            return row.id

    check("drifted", "drifted")
    waiting = follow_up_drift(home, engine, launcher)
    assert waiting is not None and not waiting.start and "too few labels" in waiting.reason and not launched
    check("not_drifted", "drifted")  # held over: the new window was clean, no reason to refit
    _labels(home, 5)
    assert follow_up_drift(home, engine, launcher) is None
    check("drifted", "drifted", minutes_ago=2 * home.scheduler.drift_interval_minutes + 1)  # stale: checks stopped
    assert follow_up_drift(home, engine, launcher) is None
    check("drifted", "drifted", version="v0")  # a champion since replaced: says nothing of the one serving now
    assert follow_up_drift(home, engine, launcher) is None
    with session_scope(engine) as s:  # v1 promoted again (a rollback to it) after its newest check
        registry.get_champion(s).promoted_at = utcnow() + timedelta(seconds=1)
    check("drifted", "drifted")
    assert follow_up_drift(home, engine, launcher) is None
    with session_scope(engine) as s:
        registry.get_champion(s).promoted_at = utcnow() - timedelta(minutes=5)
    newest = check("drifted", "drifted")
    assert follow_up_drift(home, engine, launcher, tried=newest) is not None and not launched  # tried: next check
    tries: list[int] = []
    started = follow_up_drift(home, engine, launcher, tried=newest - 1, on_try=tries.append)
    assert started is not None and started.start and launched == [("drift", started.reason)] and tries == [newest]
    assert "the window drifted and 5 new labels arrived" in started.reason
    with session_scope(engine) as s:
        assert s.exec(select(Event).where(Event.kind == "refit_skipped")).all() == []  # the waits were quiet

    # The daemon's job: a launch that raises (a Prefect API down) is tried once after a check, not at every tick.
    from types import SimpleNamespace

    from refitd.daemon import jobs

    def down(trigger: str, reason: str) -> tuple[bool, str]:
        launched.append((trigger, reason))
        raise RuntimeError("the work pool's API is down")

    monkeypatch.setattr(launcher, "start", down)
    launched.clear()
    ctx = SimpleNamespace(settings=home, engine=engine, launcher=launcher, followed_up=None)
    failing = check("drifted", "drifted")
    with pytest.raises(RuntimeError, match="API is down"):
        jobs.drift_followup(ctx)  # type: ignore[arg-type]
    assert ctx.followed_up == failing and len(launched) == 1
    again = jobs.drift_followup(ctx)  # type: ignore[arg-type]
    assert again == {"refit": False, "decision": f"drift: a start was tried after check {failing} already"}
    assert len(launched) == 1


def test_a_promoting_host_with_a_fast_clock_hides_no_check_and_no_cooldown(home: Settings, monkeypatch) -> None:
    """Promotions, events, refit runs, labels and checks are stamped by the database's clock (PostgreSQL; SQLite
    serves one host), so a training host five minutes fast neither makes the follow-up ignore the check made after
    its promotion nor stretches the cooldown after the refit it ran."""
    from datetime import datetime, timezone

    from refitd.core.db import db_now
    from refitd.core.tables import DriftCheck
    from refitd.daemon.triggers import follow_up_drift

    def fast() -> datetime:
        return datetime.now(timezone.utc) + timedelta(minutes=5)

    for module in (registry, __import__("refitd.core.runs", fromlist=["utcnow"]),
                   __import__("refitd.core.tables", fromlist=["utcnow"])):
        monkeypatch.setattr(module, "utcnow", fast, raising=False)  # what a fast host's code would read as now
    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    launched: list[str] = []
    monkeypatch.setattr(launcher, "start", lambda trigger, reason: launched.append(trigger) or (True, ""))
    v2 = registry.register_version(engine, artifact_uri="/models/v2").version
    with session_scope(engine) as s:
        start_run(s, trigger="drift", params={})  # the refit that made v2, on the fast host
    registry.promote(engine, v2)
    _labels(home, 5)
    with session_scope(engine) as s:
        now = db_now(s)
        assert abs((registry.get_champion(s).promoted_at - now).total_seconds()) < 60
        assert abs((s.exec(select(RefitRun).where(RefitRun.trigger == "drift")).one().created_at - now).total_seconds()) < 60
        promoted = s.exec(select(Event).where(Event.kind == "promoted", Event.subject == v2)).one()
        assert abs((promoted.created_at - now).total_seconds()) < 60
        assert all(abs((f.created_at - now).total_seconds()) < 60 for f in s.exec(select(Feedback)))
        s.add(DriftCheck(model_version=v2, verdict="drifted", signals={"_verdict": {"found": "drifted"}},
                         created_at=now))
    home.refit.cooldown_minutes = 0.05  # 3 s after the refit started, by the database's clock
    time.sleep(3.5)
    started = follow_up_drift(home, engine, launcher)
    assert started is not None and started.start, started
    assert launched == ["drift"]


def test_labels_count_as_new_from_the_newest_label_the_champions_refit_read(home: Settings) -> None:
    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    _labels(home, 10)  # in the champion's snapshot
    with session_scope(engine) as s:
        read = max(f.created_at for f in s.exec(select(Feedback)))
        champion = registry.get_champion(s)
        champion.params = {**(champion.params or {}), "labels_until": read.isoformat()}
        champion.created_at = utcnow() + timedelta(minutes=5)  # registered after a training that outlasted them
    _labels(home, 8)  # arrived while it trained: in no snapshot, so new to it
    decision = decide(home, engine, launcher, "labels")
    assert decision.start and "8 new" in decision.reason, decision.reason


def test_after_a_candidate_that_does_not_serve_a_refit_waits_for_labels_it_did_not_read(home: Settings,
                                                                                         untrained_artifact: Path) -> None:
    """A refit is deterministic: on the labels the rejected (or rolled-back) candidate read, the next one would
    train the same model and be refused, or promoted and rolled back, again — so it waits for new labels."""
    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    home = home.model_copy(update={"refit": home.refit.model_copy(update={"retry_new_labels": 4})})
    _labels(home, 10)
    v2 = publish_version(home, untrained_artifact, promote=False)
    with session_scope(engine) as s:
        read = max(f.created_at for f in s.exec(select(Feedback)))
        candidate = registry.get_version(s, version=v2)
        candidate.params = {**(candidate.params or {}), "labels_until": read.isoformat()}
        candidate.status, candidate.gate_reason = "rejected", "rejected: macro_f1 on recent +0.004, needs +0.010"
        candidate.parent = "v1"  # refit from the champion, as a refit records it
    for trigger, verdict in (("drift", "drifted"), ("labels", None)):
        waiting = consider(home, engine, launcher, trigger, drift_verdict=verdict)
        assert not waiting.start and (f"{v2} was rejected by the gate and 0 labels arrived after the newest its "
                                      "refit read (refit.retry_new_labels: 4)") in waiting.reason, waiting.reason
    assert decide(home, engine, launcher, "cron").start  # a schedule is the operator's: it runs
    with session_scope(engine) as s:  # a gate drill's candidate (shuffled labels) is rejected on purpose
        drill = start_run(s, trigger="manual", params={"shuffle_labels": True})
        drill.candidate_version, drill.created_at = v2, utcnow() - timedelta(hours=2)  # cooldown over
    assert decide(home, engine, launcher, "labels").start
    with session_scope(engine) as s:
        s.get(RefitRun, drill.id).params = {"shuffle_labels": False}
    assert not decide(home, engine, launcher, "labels").start
    _labels(home, 4)
    assert decide(home, engine, launcher, "drift", drift_verdict="drifted").start
    registry.promote(engine, v2, actor="test")  # promoted, then rolled back: the same wait again
    registry.rollback(engine, actor="watch", reason="live accuracy fell")
    with session_scope(engine) as s:
        read = max(f.created_at for f in s.exec(select(Feedback)))
        rolled = registry.get_version(s, version=v2)
        rolled.params = {**(rolled.params or {}), "labels_until": read.isoformat()}
    waiting = decide(home, engine, launcher, "labels")
    assert not waiting.start and f"{v2} was rolled back and 0 labels arrived" in waiting.reason, waiting.reason
    import pandas as pd

    from refitd.core import reference

    rows = pd.DataFrame({"text": [f"ticket {i}" for i in range(12)], "label": ["a", "b"] * 6,
                         "split": ["train"] * 8 + ["validation", "validation", "test", "test"]})
    current = reference.store(home, rows, source="t.csv", actor="ops", reason="t")  # published beside the models
    for recorded, waits in ((current.digest, True), ("0" * 64, False)):  # the same reference; one replaced since
        with session_scope(engine) as s:
            rolled = registry.get_version(s, version=v2)
            rolled.params = {**(rolled.params or {}), "reference_digest": recorded}
        assert decide(home, engine, launcher, "labels").start is not waits
    with session_scope(engine) as s:  # refit from another champion (a rollback landed during its refit): no wait
        s.exec(select(type(candidate)).where(type(candidate).version == v2)).one().parent = "v0"
    assert decide(home, engine, launcher, "labels").start


def test_a_launch_that_never_wrote_its_run_row_still_starts_the_cooldown(home: Settings) -> None:
    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    _labels(home, 10)
    with session_scope(engine) as s:  # e.g. a deployment whose worker failed before the flow began
        registry.record_event(s, kind="refit_started", subject="v1", reason="labels: 10 new labels; running as "
                              "deployment refitd-refit-deployed/refitd-refit", actor="daemon")
        s.exec(select(Event).where(Event.kind == "refit_started")).one().created_at = utcnow() - timedelta(minutes=2)
    cooled = decide(home, engine, launcher, "labels")
    assert not cooled.start and "cooldown" in cooled.reason, cooled.reason
    with session_scope(engine) as s:
        s.exec(select(Event).where(Event.kind == "refit_started")).one().created_at = utcnow() - timedelta(minutes=31)
    assert decide(home, engine, launcher, "labels").start


def test_one_refit_at_a_time_across_processes(home: Settings) -> None:
    engine = make_engine(home.database_url)
    _labels(home, 10)
    assert leases.acquire(engine, LEASE, holder="other-host:123:refit", ttl_s=60)
    decision = consider(home, engine, RefitLauncher(home, engine), "labels")
    assert not decision.start and "already running (lease held by other-host:123:refit" in decision.reason
    assert not leases.acquire(engine, LEASE, holder="me", ttl_s=60)
    assert leases.release(engine, LEASE, holder="other-host:123:refit")
    assert leases.acquire(engine, LEASE, holder="me", ttl_s=60)


def test_a_stopped_launcher_starts_no_refit(home: Settings) -> None:
    engine = make_engine(home.database_url)
    _labels(home, 10)
    launcher = RefitLauncher(home, engine)
    launcher.stop(1.0)  # the daemon is shutting down: a check finishing on the way out starts nothing
    decision = consider(home, engine, launcher, "labels")
    assert not decision.start and "the daemon is shutting down" in decision.reason
    assert launcher.start("labels", "test") == (False, "the daemon is shutting down")
    assert launcher.launch is None and leases.current(engine, LEASE) is None

def test_a_refit_is_freed_only_after_its_outcome_is_recorded(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever sees ``launch`` None (the daemon's follower, a test, the next trigger) finds the
    outcome in ``finished`` and its event in the database; a failed write keeps the launch, and the
    next poll records it."""
    from refitd.daemon.launcher import Launch

    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    assert leases.acquire(engine, LEASE, holder=launcher.holder, ttl_s=60)
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait(30)
    launcher.launch = Launch("labels", "test", process=process)
    seen: list[tuple[bool, int]] = []
    real_event = launcher._event
    fail_once = [True]

    def event(kind, reason, data, subject=None):  # type: ignore[no-untyped-def]
        seen.append((launcher.launch is not None, len(launcher.finished)))
        if fail_once.pop() if fail_once else False:
            raise RuntimeError("database went away")
        real_event(kind, reason, data, subject)

    monkeypatch.setattr(launcher, "_event", event)
    with pytest.raises(RuntimeError):
        launcher.poll()
    assert launcher.launch is not None and not launcher.finished and leases.current(engine, LEASE) is not None
    outcome = launcher.poll()
    assert outcome is not None and outcome["status"] == "failed" and "exited with 3" in outcome["reason"]
    assert seen == [(True, 0), (True, 0)]  # recorded while the launch was still held
    assert launcher.launch is None and launcher.finished == [outcome] and leases.current(engine, LEASE) is None
    with session_scope(engine) as s:
        assert len(s.exec(select(Event).where(Event.kind == "refit_failed")).all()) == 1


TTL_S = 2.0  # the lease a child holds: short, so its expiry costs the test ~2 s, not the daemon's 120 s


def _poll(condition, *, guard_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``condition()`` holds; ``guard_s`` only turns a hang into a failure."""
    deadline = time.monotonic() + guard_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def test_a_killed_holders_lease_expires(home: Settings) -> None:
    code = (
        "import time\n"
        "from refitd.core import leases\nfrom refitd.core.db import make_engine\n"
        f"engine = make_engine({home.database_url!r})\n"
        f"assert leases.acquire(engine, {LEASE!r}, holder='doomed', ttl_s={TTL_S})\n"
        "print('held', flush=True)\n"
        f"while True:\n    leases.renew(engine, {LEASE!r}, holder='doomed', ttl_s={TTL_S}); time.sleep(0.1)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        engine = make_engine(home.database_url)
        first_expiry = leases.current(engine, LEASE).expires_at
        # Alive: it keeps pushing its expiry out, and nobody else can take the lease meanwhile.
        _poll(lambda: leases.current(engine, LEASE).expires_at > first_expiry)
        assert not leases.acquire(engine, LEASE, holder="me", ttl_s=60)
        holder.kill()  # SIGKILL: no release
        holder.wait(10)
        held = leases.current(engine, LEASE)
        assert held is not None and held.holder == "doomed"  # killed, not released: still blocking
        # Dead: nothing renews it, so it is free once its last expiry passes, and another process takes it.
        _poll(lambda: leases.current(engine, LEASE) is None)
        assert utcnow() >= held.expires_at
        assert leases.acquire(engine, LEASE, holder="me", ttl_s=60)
        assert leases.current(engine, LEASE).holder == "me"
    finally:
        if holder.poll() is None:
            holder.kill()


def _served(settings: Settings, version: str, *, right: int, wrong: int, at) -> None:  # type: ignore[no-untyped-def]
    """Predictions served by ``version`` at ``at`` with feedback: ``right`` correct, ``wrong`` not."""
    rng = np.random.default_rng(0)
    with session_scope(make_engine(settings.database_url)) as s:
        for i in range(right + wrong):
            pid = new_prediction_id()
            s.add(Prediction(id=pid, created_at=at + timedelta(seconds=i), model_version=version, text=f"t{pid}",
                             label="negative", scores={}, confidence=float(rng.uniform(0.6, 0.9)), latency_ms=1.0))
            s.flush()
            s.add(Feedback(prediction_id=pid, label="negative" if i < right else "positive"))


def test_promotion_watch_rolls_back_on_a_live_drop(home: Settings, untrained_artifact: Path) -> None:
    engine = make_engine(home.database_url)
    _served(home, "v1", right=27, wrong=3, at=utcnow() - timedelta(minutes=30))  # 0.90 before the promotion
    publish_version(home, untrained_artifact)  # v2 promoted now
    assert guard.check(home, engine)["action"] == "watching"  # no labels for v2 yet
    _served(home, "v2", right=16, wrong=14, at=utcnow() + timedelta(seconds=1))  # 0.53 after
    audited = Settings.load(home=home.home, database={"url": home.database_url},
                            serving={"feedback_measure_sources": ["review"]},
                            scheduler={"watch_min_labels": 20, "rollback_drop": 0.1})
    waiting = guard.check(audited, engine)  # these labels' source does not measure: no label counts, no rollback
    assert waiting["action"] == "watching" and waiting["new"]["labelled"] == waiting["old"]["labelled"] == 0
    hooked = Settings.load(home=home.home, database={"url": home.database_url}, drift={"webhook_url": DEAD_HOOK},
                           scheduler={"watch_min_labels": 20, "rollback_drop": 0.1})
    outcome = guard.check(hooked, engine)
    assert outcome["action"] == "rolled_back" and outcome["to"] == "v1"
    with session_scope(engine) as s:  # its page was stored with the rollback, before anything tried to send it
        (alert,) = s.exec(select(Alert)).all()
    assert (alert.kind, alert.status, alert.payload["from"], alert.payload["to"]) == ("rolled_back", "pending", "v2", "v1")
    assert alert.payload["text"].startswith(":rewind: refitd rolled back from v2 to v1: live accuracy fell 0.367")
    assert outcome["drop"] == pytest.approx(0.9 - 16 / 30)
    with session_scope(engine) as s:
        assert registry.get_champion(s).version == "v1"
        assert registry.get_version(s, version="v2").status == "rejected"
        event = s.exec(select(Event).where(Event.kind == "rolled_back")).one()
    assert event.actor == "watch" and "live accuracy fell 0.367" in event.reason and "v2: accuracy 0.533" in event.reason
    assert guard.check(home, engine) is None  # the watch ended with the rollback


def test_promotion_watch_reads_answers_by_version_not_by_a_serving_hosts_clock(home: Settings,
                                                                             untrained_artifact: Path) -> None:
    """A serving host whose clock is five minutes behind the database stamps the new champion's first answers
    before its promotion: they are still its answers. A version promoted again after a rollback is watched on
    what it served since, not on the answers that got it rolled back."""
    engine = make_engine(home.database_url)
    settings = Settings.load(home=home.home, database={"url": home.database_url},
                             scheduler={"watch_min_labels": 20, "rollback_drop": 0.1})
    _served(home, "v1", right=27, wrong=3, at=utcnow() - timedelta(minutes=30))  # 0.90
    publish_version(home, untrained_artifact)  # v2 promoted now, by the database's clock
    _served(home, "v2", right=16, wrong=14, at=utcnow() - timedelta(minutes=5))  # 0.53, a slow host's stamps
    outcome = guard.check(settings, engine)
    assert outcome["new"]["labelled"] == 30 and outcome["action"] == "rolled_back" and outcome["to"] == "v1"
    time.sleep(0.05)  # the rollback and the next promotion: distinct times on any clock's resolution
    _served(home, "v1", right=9, wrong=1, at=utcnow())  # v1 serves again, and keeps its standard
    registry.promote(engine, "v2", actor="operator", reason="tried again by hand")
    again = guard.check(settings, engine)
    assert again["action"] == "watching" and again["new"]["labelled"] == 0  # its first reign's answers are not this one's
    assert again["old"]["labelled"] == 20 and again["old"]["accuracy"] == pytest.approx(16 / 20)  # v1's latest 20
    _served(home, "v2", right=19, wrong=1, at=utcnow() + timedelta(seconds=1))  # this time it holds up
    held = guard.check(settings, engine)
    assert held["action"] == "watching" and held["new"]["labelled"] == 20
    assert held["new"]["accuracy"] == pytest.approx(0.95)


def test_promotion_watch_passes_a_champion_that_holds_up(home: Settings, untrained_artifact: Path) -> None:
    engine = make_engine(home.database_url)
    _served(home, "v1", right=24, wrong=6, at=utcnow() - timedelta(minutes=30))  # 0.80
    publish_version(home, untrained_artifact)
    registry.update_version(engine, "v2", metrics={"calibration": {"atc_threshold": 0.75}})
    _served(home, "v2", right=25, wrong=5, at=utcnow() + timedelta(seconds=1))  # 0.83
    watching = guard.check(home, engine)
    assert watching["action"] == "watching"
    # The estimate beside each: v2's share of confidences above its ATC threshold, v1's (none stored) mean
    rng = np.random.default_rng(0)
    confidences = [float(rng.uniform(0.6, 0.9)) for _ in range(30)]
    assert watching["new"]["estimate"] == pytest.approx(np.mean([c > 0.75 for c in confidences]))
    assert "ATC" in watching["new"]["estimate_method"] and watching["old"]["estimate_method"] == "mean confidence"
    assert watching["old"]["estimate"] == pytest.approx(np.mean(confidences))
    over = home.model_copy(update={"scheduler": home.scheduler.model_copy(update={"watch_minutes": 0.0001})})
    passed = guard.check(over, engine)
    assert passed["action"] == "passed"
    with session_scope(engine) as s:
        assert registry.get_champion(s).version == "v2"
        assert s.exec(select(Event).where(Event.kind == "watch_passed")).one().subject == "v2"


def test_a_closing_launcher_starts_no_refit_but_still_names_why(home: Settings) -> None:
    """From the start of a shutdown (before the scheduler has stopped its jobs), no refit starts."""
    engine = make_engine(home.database_url)
    launcher = RefitLauncher(home, engine)
    _labels(home, 10)
    launcher.refuse_new()
    decision = consider(home, engine, launcher, "drift", drift_verdict="drifted")
    assert not decision.start and decision.reason == "drift: skipped, the daemon is shutting down"
    assert launcher.launch is None


def test_a_run_whose_process_ended_without_an_outcome_is_closed_failed_at_the_next_decision(home: Settings) -> None:
    """A refit killed with its daemon (or a reboot) leaves its row "running"; the next refit decision marks
    it failed, with an event, and only rows whose process of this machine and pid namespace is known gone."""
    import io

    from rich.console import Console

    import os

    from refitd.core.runs import _no_such_process, gone, process_identity, running_here
    from refitd.daemon.status import gather_status, render_status

    engine = make_engine(home.database_url)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    me = process_identity()
    assert me is not None
    processes = {
        "ended": me | {"pid": ended.pid},
        "alive": me,
        "elsewhere": me | {"machine": "another machine", "boot": "its own boot", "pid": ended.pid},
        "container": me | {"pidns": me["pidns"] + 1, "pid": ended.pid},  # another pid namespace: not ours to judge
        "unrecorded": None,
        "reused": me | {"start": me["start"] - 1},  # this pid, but a process that started earlier: not this one
        "renamed": me | {"host": "its name before", "pid": ended.pid},  # same kernel: judged whatever the name
        "unknown machine": me | {"boot": "another boot", "machine": "", "pid": ended.pid},  # cannot tell: not judged
        "rebooted": me | {"boot": "an earlier boot"},
    }
    with session_scope(engine) as s:
        ids = {name: start_run(s, trigger=name, params={"process": p} if p else {}).id for name, p in processes.items()}
    with session_scope(engine) as s:
        assert "has ended" in (gone(s.get(RefitRun, ids["ended"])) or "")
        assert gone(s.get(RefitRun, ids["alive"])) is None
        assert running_here(s, ended.pid).id == ids["renamed"]  # a local child's own row: its kernel, its pid
        assert running_here(s, 0) is None  # a child that died before writing its row marks nobody else's
    # a pid /proc does not show may be hidden (hidepid) rather than gone: the kernel is asked
    assert _no_such_process(ended.pid) and not _no_such_process(os.getpid())

    info = gather_status(home)  # the newest running row ("rebooted") is shown as what it is
    screen = io.StringIO()
    render_status(info, Console(file=screen, width=300))
    assert "the host restarted since" in info["refit"]["gone"] and "it will not finish" in screen.getvalue()

    # no lease held: swept, and only the row whose process runs here (this test's own) keeps refits waiting
    assert RefitLauncher(home, engine).busy() == (f"refit run {ids['alive']} is still running on this host (pid "
                                                  f"{os.getpid()}) though nothing holds the refit lease (what "
                                                  "started it has ended); `kill` it to refit sooner")
    with session_scope(engine) as s:
        status = {name: s.get(RefitRun, run_id).status for name, run_id in ids.items()}
        reason = s.get(RefitRun, ids["ended"]).reason
        events = [e.reason for e in s.exec(select(Event).where(Event.kind == "refit_failed"))]
    assert status == {"ended": "failed", "alive": "running", "elsewhere": "running", "container": "running",
                      "unrecorded": "running", "reused": "failed", "renamed": "failed", "unknown machine": "running",
                      "rebooted": "failed"}
    assert f"its process {me['host']}:{ended.pid} has ended without recording an outcome" in reason
    assert len(events) == 4 and all("failed" in e for e in events)
    assert "still running on this host" in (RefitLauncher(home, engine).busy() or "")  # and closes nothing twice
    with session_scope(engine) as s:
        assert len(s.exec(select(Event).where(Event.kind == "refit_failed")).all()) == 4


def test_a_refit_that_outlived_what_started_it_keeps_the_next_one_waiting(home: Settings) -> None:
    """`refitd refit` killed (or its lease lapsed) while its child trains on in its own session: no lease is held,
    but a refit started now would train beside it; once the child ends, its row is closed and refits are free."""
    from refitd.core.runs import _proc_stat, process_identity

    engine = make_engine(home.database_url)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        identity = (process_identity() or {}) | {"pid": child.pid, "start": _proc_stat(child.pid)[1]}
        with session_scope(engine) as s:
            run_id = start_run(s, trigger="manual", params={"process": identity}).id
        launcher = RefitLauncher(home, engine)
        assert f"refit run {run_id} is still running on this host (pid {child.pid})" in (launcher.busy() or "")
        started, why = launcher.start("labels", "enough new labels")
        assert not started and "still running on this host" in why
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("REFITD_")}
        by_hand = subprocess.run([sys.executable, "-m", "refitd.cli", "--home", str(home.home), "refit"],
                                 env=env | {"REFITD_DATABASE__URL": home.database_url}, capture_output=True,
                                 text=True, timeout=120)  # and so is a refit by hand: one line, exit code 75
        assert by_hand.returncode == 75 and f"refit run {run_id} is still running" in by_hand.stderr, by_hand.stderr
        assert "Traceback" not in by_hand.stderr and not (home.home / "flows.log").exists()
        with session_scope(engine) as s:  # past refit.timeout_minutes it is stopped, as a followed one would be
            s.get(RefitRun, run_id).created_at = utcnow() - timedelta(minutes=home.refit.timeout_minutes + 1)
        assert launcher.busy() is None
        assert child.wait(30) == -15  # SIGTERM to its process group
    finally:
        child.kill()
        child.wait()
    with session_scope(engine) as s:
        assert "timed out" in s.exec(select(Event).where(Event.kind == "refit_failed")).one().reason
    assert RefitLauncher(home, engine).busy() is None
    with session_scope(engine) as s:
        assert s.get(RefitRun, run_id).status == "failed"


def test_a_held_lease_is_renewed_for_the_block_refused_to_others_and_released(home: Settings) -> None:
    from refitd.core.errors import LeaseTakenError

    engine = make_engine(home.database_url)
    with leases.held(engine, LEASE, holder="cli", ttl_s=0.6, data={"trigger": "manual"}) as lost:
        time.sleep(1.5)  # past its first expiry: renewed meanwhile
        held = leases.current(engine, LEASE)
        assert held is not None and held.holder == "cli" and not lost.is_set()
        with pytest.raises(LeaseTakenError, match="the refit lease is held by cli until") as refused:
            with leases.held(engine, LEASE, holder="daemon", ttl_s=60):
                pass  # never entered
        assert refused.value.exit_code == 75
        assert not RefitLauncher(home, engine).start("labels", "10 new labels")[0]  # the daemon waits too
    assert leases.current(engine, LEASE) is None  # released at the end of the block

    with leases.held(engine, LEASE, holder="cli", ttl_s=0.6) as lost:  # taken over after its expiry: lost, said so
        assert leases.release(engine, LEASE, holder="cli") and leases.acquire(engine, LEASE, holder="other", ttl_s=60)
        _poll(lost.is_set, guard_s=10)
    assert leases.current(engine, LEASE).holder == "other"  # the block's end does not release someone else's


def test_refitd_refit_is_refused_while_another_refit_holds_the_lease(home: Settings) -> None:
    """`refitd refit` (and `init`) hold the refit lease as the daemon's refits do: while the daemon's refit
    runs, a refit by hand is refused with one line naming the holder and exit code 75, and runs no flow."""
    engine = make_engine(home.database_url)
    assert leases.acquire(engine, LEASE, holder="scheduler-host:4242:refit", ttl_s=60)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("REFITD_")}
    result = subprocess.run([sys.executable, "-m", "refitd.cli", "--home", str(home.home), "refit"],
                            env=env | {"REFITD_DATABASE__URL": home.database_url}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 75, result.stdout + result.stderr
    assert "held by scheduler-host:4242:refit" in result.stderr and "Traceback" not in result.stderr
    assert "running flow" not in result.stdout
    assert not (home.home / "flows.log").exists()
