"""When to refit: the trigger policy, and an event for every decision, started or skipped, with why.

- ``drift``: the last check said drifted — ``drift.consecutive`` checks in a row found drift (a
  check that found it before then is a skipped decision, with its event) — and at least
  ``refit.min_new_labels`` labels arrived since the champion was trained;
- ``labels``: ``scheduler.label_trigger`` labels arrived since the champion was trained;
- ``cron``: ``scheduler.refit_cron`` fired.

A drift or label refit after one whose candidate does not serve (the gate rejected it, or it was rolled
back) also waits for ``refit.retry_new_labels`` labels newer than that candidate's snapshot: a refit is
deterministic, and on the same data it would be refused, or promoted and rolled back, again.

Between checks, the ``drift_followup`` job starts a drift refit that waited only for labels as soon as they are in
(:func:`follow_up_drift`), not at the next check: at the default ten-minute interval that was up to ten minutes.

All three respect the cooldown between refit starts and the one-refit-at-a-time lease, and wait while a
candidate is scored in shadow (``gate.shadow_minutes``): its verdict comes first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from refitd.core import registry
from refitd.core.db import db_now, session_scope
from refitd.core.labels import count_labels_since
from refitd.core.reference_info import current as current_reference
from refitd.core.settings import Settings
from refitd.core.tables import Event, ModelVersion, RefitRun, VersionStatus
from refitd.daemon.drift.verdict import drift_held_over, drift_waiting_for_a_refit, pending_drift
from refitd.daemon.launcher import RefitLauncher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    start: bool
    reason: str
    routine: bool = False  # a clean check or a count under its trigger: logged, not an event


def last_start(session: Session) -> datetime | None:
    """When the last refit was started: its run row, or the daemon's launch event when the run never wrote
    one (a deployment whose worker failed before the flow began, a child that died on import), so such a
    failure waits out the cooldown like any other instead of being retried at every check."""
    run = session.exec(select(RefitRun.created_at).where(RefitRun.trigger != "init")
                       .order_by(col(RefitRun.created_at).desc())).first()
    launched = session.exec(select(Event.created_at).where(Event.kind == "refit_started")
                            .order_by(col(Event.created_at).desc())).first()
    return max((t for t in (run, launched) if t is not None), default=None)


@dataclass(frozen=True)
class Unserved:
    """The newest version, when it is not serving: what its refit read, and how many labels came after."""

    version: str
    why: str
    labels_after: int
    reference_digest: str | None = None  # the reference rows its refit read, when recorded


def not_serving(session: Session, champion: ModelVersion) -> Unserved | None:
    """The newest registered version when a refit on the same inputs would make it again — the gate rejected it,
    it was rolled back, or an older version was promoted over it, and it was refit from the champion serving now
    (not a gate drill's shuffled labels) — with the labels that arrived after the newest its refit read; else
    None. Whether the reference is still the one it read is :func:`reference_replaced`'s to say."""
    newest = session.exec(select(ModelVersion).order_by(col(ModelVersion.id).desc())).first()
    if newest is None or newest.status not in (VersionStatus.rejected.value, VersionStatus.archived.value):
        return None
    if newest.parent != champion.version:
        return None  # compared with another champion: not the same refit
    run = session.exec(select(RefitRun).where(RefitRun.candidate_version == newest.version)).first()
    if run is not None and (run.params or {}).get("shuffle_labels"):
        return None  # a gate drill's candidate is rejected on purpose
    if newest.status == VersionStatus.archived.value:
        why = "replaced by an older version"
    else:
        why = "rolled back" if (newest.gate_reason or "").startswith("rolled back") else "rejected by the gate"
    return Unserved(newest.version, why, count_labels_since(session, registry.labels_until(newest)),
                    (newest.params or {}).get("reference_digest"))


def reference_replaced(settings: Settings, unserved: Unserved) -> bool:
    """Whether the current reference is not the one the candidate's refit read (False when either is unknown).
    Read outside any database session: with object storage it is a request."""
    if unserved.reference_digest is None:
        return False
    stored = current_reference(settings)
    return stored is not None and stored.digest != unserved.reference_digest


def _same_data(settings: Settings, unserved: Unserved | None, trigger: str) -> Decision | None:
    """Why not yet, when the last candidate does not serve and too few labels arrived after its snapshot."""
    need = settings.refit.retry_new_labels
    if unserved is None or unserved.labels_after >= need or reference_replaced(settings, unserved):
        return None  # the reference is read only when it decides
    return Decision(False, f"{trigger}: skipped, {unserved.version} was {unserved.why} and {unserved.labels_after} "
                           f"labels arrived after the newest its refit read (refit.retry_new_labels: {need}); the same "
                           "data would train the same model")


def decide(settings: Settings, engine: Engine, launcher: RefitLauncher, trigger: str, *,
           drift_verdict: str | None = None) -> Decision:
    """Whether a refit should start now for ``trigger``, and why (or why not)."""
    busy = launcher.busy()
    if busy is not None:
        return Decision(False, f"{trigger}: skipped, {busy}")
    with session_scope(engine) as session:
        champion = registry.get_champion(session)
        if champion is None:
            return Decision(False, f"{trigger}: skipped, there is no champion yet (run `refitd init`)")
        in_shadow = registry.get_shadow(session)
        if in_shadow is not None:
            return Decision(False, f"{trigger}: skipped, {in_shadow.version} is being scored in shadow; its verdict "
                                   "comes first")
        last, now = last_start(session), db_now(session)
        new_labels = count_labels_since(session, registry.labels_until(champion))
        unserved = not_serving(session, champion)
        waiting = pending_drift(session) if trigger == "drift" and drift_verdict != "drifted" else None
        held_over = drift_held_over(session) if trigger == "drift" and drift_verdict == "drifted" else None
    cooldown = timedelta(minutes=settings.refit.cooldown_minutes)
    if last is not None and last + cooldown > now:
        return Decision(False, f"{trigger}: skipped, cooldown — the last refit started {last:%H:%M:%S} "
                               f"UTC; the next may start after {last + cooldown:%H:%M:%S}")
    if trigger == "drift":
        if waiting is not None:
            return Decision(False, f"drift: skipped, {waiting}")
        if drift_verdict != "drifted":
            return Decision(False, f"drift: no refit, the last check was {drift_verdict}", routine=True)
        if held_over is not None:
            return Decision(False, f"drift: skipped, {held_over}")
        need = settings.refit.min_new_labels
        if new_labels < need:
            return Decision(False, f"drift: skipped, too few labels — {new_labels} new since {champion.version} "
                                   f"was trained, needs {need}")
        if (retry := _same_data(settings, unserved, trigger)) is not None:
            return retry
        return Decision(True, f"drift: the window drifted and {new_labels} new labels arrived (needs {need})")
    if trigger == "labels":
        need = settings.scheduler.label_trigger
        if need is None or new_labels < need:
            return Decision(False, f"labels: {new_labels} new labels since {champion.version}, needs {need}",
                            routine=True)
        if (retry := _same_data(settings, unserved, trigger)) is not None:
            return retry
        return Decision(True, f"labels: {new_labels} new labels since {champion.version} (trigger at {need})")
    if trigger == "cron":
        return Decision(True, f"cron: scheduled refit ({settings.scheduler.refit_cron}); {new_labels} new labels")
    return Decision(True, f"{trigger}: requested")


def consider(settings: Settings, engine: Engine, launcher: RefitLauncher, trigger: str, *,
             drift_verdict: str | None = None) -> Decision:
    """Decide, then start the refit or record why not; returns the decision."""
    return act(engine, launcher, trigger, decide(settings, engine, launcher, trigger, drift_verdict=drift_verdict))


def act(engine: Engine, launcher: RefitLauncher, trigger: str, decision: Decision, *, quiet: bool = False) -> Decision:
    """Start the refit ``decision`` asks for, or record why not as an event; returns what happened. ``quiet``: a
    decision not to start is only logged at debug level (a follow-up between checks, whose check records its own)."""
    if decision.start:
        started, where = launcher.start(trigger, decision.reason)
        if not started:  # lost the lease to another process between deciding and starting
            decision = Decision(False, f"{trigger}: skipped, {where}")
    log.log(logging.DEBUG if quiet and not decision.start else logging.INFO, "%s", decision.reason)
    if not decision.start and not decision.routine and not quiet:
        with session_scope(engine) as session:
            registry.record_event(session, kind="refit_skipped", subject=trigger, reason=decision.reason,
                                  actor="daemon")
    return decision


def follow_up_drift(settings: Settings, engine: Engine, launcher: RefitLauncher, *, tried: int | None = None,
                    on_try: Callable[[int], None] = lambda check_id: None) -> Decision | None:
    """Between checks: when the newest check (within two drift intervals) checked the champion serving now and
    found drift itself, decide on a drift refit again — it starts once ``refit.min_new_labels`` labels are in. A
    decision not to start records no event (the checks record theirs). One try to start per check: ``on_try`` is
    told the check before the start is tried, and ``tried`` is that check the next time (a launch that failed
    waits for the next check, not the next tick). None when there is no such check."""
    with session_scope(engine) as session:
        # the database's clock, as the check's row and the promotion were stamped: hosts' clocks may differ
        since = db_now(session) - timedelta(minutes=2 * settings.scheduler.drift_interval_minutes)
        champion = registry.get_champion(session)
        check = drift_waiting_for_a_refit(session, champion, since=since) if champion is not None else None
    if check is None:
        return None
    if check.id == tried:
        return Decision(False, f"drift: a start was tried after check {check.id} already", routine=True)
    decision = decide(settings, engine, launcher, "drift", drift_verdict="drifted")
    if not decision.start:
        log.debug("%s", decision.reason)
        return Decision(False, decision.reason, routine=True)
    on_try(check.id)
    return act(engine, launcher, "drift", decision, quiet=True)
