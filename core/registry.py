"""The model registry: which versions exist and which one is the champion.

Rows only; where the bytes live is the artifact store's business. Every write
first updates the single ``registry_lock`` row, which serialises registry
writes across processes on SQLite (write lock) and PostgreSQL (row lock); the
partial unique index on ``status = 'champion'`` is the database's own guarantee
that there is never more than one champion.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, func, select

from refitd.core.db import db_now, session_scope
from refitd.core.errors import ChampionChangedError, NotFoundError, RegistryError
from refitd.core.tables import Event, ModelVersion, RegistryLock, VersionStatus, utcnow

log = logging.getLogger(__name__)

_RETRIES = 5


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def registry_transaction(engine: Engine) -> Iterator[Session]:
    """A transaction holding the registry lock row until it commits."""
    with session_scope(engine) as session:
        held = session.exec(  # type: ignore[call-overload]
            update(RegistryLock).where(RegistryLock.id == 1).values(holder=_holder(), held_at=utcnow())
        )
        if held.rowcount == 0:
            session.add(RegistryLock(id=1, holder=_holder(), held_at=utcnow()))
            session.flush()
        yield session


def retrying(fn):  # type: ignore[no-untyped-def]
    """Retry a registry write that lost a race (unique violation, lock timeout)."""

    def wrapper(engine: Engine, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(_RETRIES):
            try:
                return fn(engine, *args, **kwargs)
            except (IntegrityError, OperationalError) as exc:
                if attempt == _RETRIES - 1:
                    raise RegistryError(f"registry write failed after {_RETRIES} tries: {exc.orig}") from exc
                log.warning("registry write conflicted (%s); retrying", type(exc.orig).__name__)
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def record_event(
    session: Session, *, kind: str, subject: str | None, reason: str, actor: str = "refitd", data: dict | None = None,
    at: datetime | None = None,
) -> Event:
    """Add one audit row (committed with the caller's transaction), stamped ``at`` or by the database's clock now
    (``db_now``)."""
    ev = Event(kind=kind, subject=subject, reason=reason, actor=actor, data=data or {},
               created_at=at or db_now(session))
    session.add(ev)
    return ev


def next_version(session: Session) -> str:
    """The name the next registered version gets (v1, v2, … in registration order).

    Hold :func:`registry_transaction` from this call to the insert, so no other process takes the name.
    """
    return f"v{session.exec(select(func.count()).select_from(ModelVersion)).one() + 1}"


def add_candidate(session: Session, *, version: str, **fields: Any) -> ModelVersion:
    """Add the row of a candidate named by :func:`next_version` (committed with the caller's transaction)."""
    mv = ModelVersion(version=version, status=VersionStatus.candidate.value, **fields)
    session.add(mv)
    record_event(session, kind="registered", subject=version, reason="candidate registered")
    session.flush()
    session.refresh(mv)
    return mv


def version_names(session: Session) -> set[str]:
    """The name of every registered version."""
    return set(session.exec(select(ModelVersion.version)))


@retrying
def register_version(engine: Engine, **fields: Any) -> ModelVersion:
    """Add a candidate row alone. A candidate with files is registered by ``registration.register_candidate``."""
    with registry_transaction(engine) as session:
        return add_candidate(session, version=next_version(session), **fields)


@retrying
def update_version(engine: Engine, version: str, **fields: Any) -> ModelVersion:
    """Set fields on a version (artifact location, metrics, gate reason)."""
    with registry_transaction(engine) as session:
        mv = _get(session, version)
        for key, value in fields.items():
            setattr(mv, key, value)
        session.add(mv)
        session.flush()
        session.refresh(mv)
        return mv


@retrying
def promote(engine: Engine, version: str, *, actor: str = "refitd", reason: str = "",
            over: str | None = None) -> ModelVersion:
    """Make ``version`` the champion and archive the previous one, atomically. With ``over``, only if the
    champion is still ``over`` (the version the gate compared it with): ChampionChangedError otherwise."""
    with registry_transaction(engine) as session:
        _expect_champion(session, over, f"promoting {version}")
        return _promote(session, _get(session, version), actor=actor, reason=reason)


def _expect_champion(session: Session, expected: str | None, action: str) -> None:
    if expected is None:
        return
    current = _champion(session)
    if current is None or current.version != expected:
        raise ChampionChangedError(expected, current.version if current else None, action)


def _promote(session: Session, mv: ModelVersion, *, actor: str, reason: str) -> ModelVersion:
    if mv.status == VersionStatus.champion.value:
        return mv
    if not mv.artifact_uri:
        raise RegistryError(f"{mv.version} has no artifact yet; it cannot be promoted")
    previous = _champion(session)
    if previous is not None:
        previous.status = VersionStatus.archived.value
        session.add(previous)
        session.flush()
    mv.status = VersionStatus.champion.value
    mv.promoted_at = db_now(session)  # compared with checks other hosts made: one clock for all
    session.add(mv)
    record_event(
        session,
        at=mv.promoted_at,
        kind="promoted",
        subject=mv.version,
        actor=actor,
        reason=reason or f"promoted {mv.version}" + (f" over {previous.version}" if previous else ""),
        data={"previous": previous.version if previous else None},
    )
    session.flush()
    session.refresh(mv)
    return mv


@retrying
def start_shadow(engine: Engine, version: str, *, reason: str, actor: str = "refitd") -> ModelVersion:
    """Put a candidate that passed the offline gate in shadow: serving scores live traffic with it beside the
    champion until the shadow watch promotes or rejects it. A version already in shadow is superseded (rejected)."""
    with registry_transaction(engine) as session:
        mv = _get(session, version)
        if mv.status != VersionStatus.candidate.value:
            raise RegistryError(f"{version} is {mv.status}; only a candidate can go into shadow")
        if not mv.artifact_uri:
            raise RegistryError(f"{version} has no artifact yet; it cannot be scored in shadow")
        previous = _shadow(session)
        if previous is not None:
            previous.status, previous.gate_reason = VersionStatus.rejected.value, f"superseded in shadow by {version}"
            session.add(previous)
            record_event(session, kind="rejected", subject=previous.version, actor=actor,
                         reason=f"superseded in shadow by {version}")
            session.flush()
        champion = _champion(session)
        mv.status, mv.gate_reason = VersionStatus.shadow.value, reason
        session.add(mv)
        record_event(session, kind="shadow_started", subject=version, actor=actor, reason=reason,
                     data={"champion": champion.version if champion else None})
        session.flush()
        session.refresh(mv)
        return mv


@retrying
def end_shadow(engine: Engine, version: str, *, promote: bool, reason: str, figures: dict[str, Any],
               actor: str = "shadow") -> ModelVersion | None:
    """Record the shadow's figures on ``version`` and promote or reject it, in one transaction; None when it is
    no longer in shadow (superseded, or promoted by hand, since it was judged)."""
    with registry_transaction(engine) as session:
        mv = _get(session, version)
        if mv.status != VersionStatus.shadow.value:
            return None
        mv.metrics = {**(mv.metrics or {}), "shadow": figures}
        mv.gate_reason = reason
        current = _champion(session)
        if promote and mv.parent is not None and (current is None or current.version != mv.parent):
            # judged beside a champion that no longer serves (rolled back, or replaced by hand): not this one's place
            promote, reason = False, (f"rejected: the champion is now {current.version if current else 'none'}, not "
                                      f"{mv.parent} that {version} was gated and shadowed against; {reason}")
            mv.gate_reason = reason
        if promote:
            mv.status = VersionStatus.candidate.value  # leaves the one-shadow index before it takes the champion's
            session.add(mv)
            session.flush()
            return _promote(session, mv, actor=actor, reason=reason)
        mv.status = VersionStatus.rejected.value
        session.add(mv)
        record_event(session, kind="rejected", subject=version, actor=actor, reason=reason)
        session.flush()
        session.refresh(mv)
        return mv


@retrying
def reject(engine: Engine, version: str, *, reason: str, actor: str = "refitd") -> ModelVersion:
    """Mark a candidate as rejected, with the reason."""
    with registry_transaction(engine) as session:
        mv = _get(session, version)
        if mv.status == VersionStatus.champion.value:
            raise RegistryError(f"{version} is the champion; roll back instead of rejecting it")
        mv.status, mv.gate_reason = VersionStatus.rejected.value, reason
        session.add(mv)
        record_event(session, kind="rejected", subject=version, actor=actor, reason=reason)
        session.flush()
        session.refresh(mv)
        return mv


@retrying
def rollback(engine: Engine, *, actor: str = "refitd", reason: str = "", only_from: str | None = None,
             also: Callable[[Session, ModelVersion, ModelVersion], object] | None = None) -> ModelVersion:
    """Restore the previous champion; the current one is marked rejected so it is not restored again. With
    ``only_from``, only while the champion is still that version (the one measured): ChampionChangedError otherwise.
    ``also(session, rolled_back, restored)`` runs in the same transaction (an alert that must not be lost)."""
    with registry_transaction(engine) as session:
        _expect_champion(session, only_from, "rolling back")
        current = _champion(session)
        if current is None:
            raise RegistryError("there is no champion to roll back from")
        previous = session.exec(
            select(ModelVersion)
            .where(ModelVersion.status == VersionStatus.archived.value, col(ModelVersion.promoted_at).is_not(None))
            .order_by(col(ModelVersion.promoted_at).desc())
        ).first()
        if previous is None:
            raise RegistryError(f"{current.version} is the only version ever promoted; nothing to roll back to")
        why = reason or "rollback requested"
        current.status, current.gate_reason = VersionStatus.rejected.value, f"rolled back: {why}"
        session.add(current)
        session.flush()
        previous.status, previous.promoted_at = VersionStatus.champion.value, db_now(session)
        session.add(previous)
        record_event(
            session,
            at=previous.promoted_at,
            kind="rolled_back",
            subject=previous.version,
            actor=actor,
            reason=f"rolled back from {current.version} to {previous.version}: {why}",
            data={"from": current.version, "to": previous.version},
        )
        if also is not None:
            also(session, current, previous)
        session.flush()
        session.refresh(previous)
        return previous


def _get(session: Session, version: str) -> ModelVersion:
    """``v3``, ``V3`` and ``3`` all name version v3."""
    version = version.strip()
    version = f"v{version}" if version.isdigit() else version.lower() if version[:1] in "vV" else version
    mv = session.exec(select(ModelVersion).where(ModelVersion.version == version)).first()
    if mv is None:
        raise NotFoundError("model version", version)
    return mv


def _champion(session: Session) -> ModelVersion | None:
    return session.exec(select(ModelVersion).where(ModelVersion.status == VersionStatus.champion.value)).first()


def _shadow(session: Session) -> ModelVersion | None:
    return session.exec(select(ModelVersion).where(ModelVersion.status == VersionStatus.shadow.value)).first()


def get_shadow(session: Session) -> ModelVersion | None:
    """The version in shadow, or None."""
    return _shadow(session)


def atc_threshold(mv: ModelVersion) -> float | None:
    """The confidence above which this version's answers count as right in its label-free accuracy estimate
    (average thresholded confidence, fitted at its refit on its recent test set or its validation set;
    flows/calibrate.py), or None for a version trained before the threshold was stored."""
    value = ((mv.metrics or {}).get("calibration") or {}).get("atc_threshold")
    return None if value is None else float(value)


def served_labels(mv: ModelVersion | None) -> list[str]:
    """The labels this version answers, sorted; empty for none, or a version recorded without them."""
    return sorted((mv.params or {}).get("labels") or []) if mv is not None else []


def labels_until(mv: ModelVersion) -> datetime:
    """The time of the newest production label this version's refit read: labels after it are new to this
    version (its recent test set at the next refit, and what the label trigger counts). A version recorded
    before this was stored falls back to when it was registered, which counts labels that arrived while it
    trained as already seen."""
    value = (mv.params or {}).get("labels_until")
    if value is None:
        return mv.created_at
    until = datetime.fromisoformat(str(value))
    if (until.tzinfo is None) != (mv.created_at.tzinfo is None):  # compared with what the store returns
        until = until.replace(tzinfo=timezone.utc) if until.tzinfo is None else \
            until.astimezone(timezone.utc).replace(tzinfo=None)
    return until


def estimate_method(mv: ModelVersion | None) -> str:
    """How this version's label-free accuracy estimate is read, in words: the share above its ATC threshold
    (and the set that threshold was fitted on), or mean confidence for a version without one."""
    threshold = None if mv is None else atc_threshold(mv)
    if threshold is None:
        return "mean confidence"
    where = ((mv.metrics or {}).get("calibration") or {}).get("atc_set")  # type: ignore[union-attr]
    return f"share of confidences above {threshold:.3f} (ATC{f', set on {where}' if where else ''})"


def get_version(session: Session, *, version: str) -> ModelVersion:
    """The row for ``version``; NotFoundError if there is none."""
    return _get(session, version)


def get_champion(session: Session) -> ModelVersion | None:
    """The current champion, or None before the first promotion."""
    return _champion(session)


def list_versions(session: Session, *, limit: int = 50) -> list[ModelVersion]:
    """Versions, newest first."""
    return list(session.exec(select(ModelVersion).order_by(col(ModelVersion.id).desc()).limit(limit)))


def list_events(session: Session, *, limit: int = 20, kind: str | None = None) -> list[Event]:
    """Audit rows, newest first."""
    query = select(Event).order_by(col(Event.id).desc()).limit(limit)
    if kind is not None:
        query = query.where(Event.kind == kind)
    return list(session.exec(query))
