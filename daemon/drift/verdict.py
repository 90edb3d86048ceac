"""A drift check's verdict over time: hysteresis (``drift.consecutive`` checks in a row before the verdict
changes), the drift still pending behind it, and the checks as rows. Light to import: the daemon's
triggers and status read these without loading the check's pandas and Evidently."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from refitd.core.tables import DriftCheck, ModelVersion


def held_verdict(state: str | None, verdicts: list[str], *, needs: int) -> tuple[str, int]:
    """Hysteresis: the verdict to report when the checks' own verdicts are ``verdicts`` (newest first) and
    the last reported one was ``state`` (None: no check yet, taken as not drifted). A new verdict replaces
    it once ``needs`` checks in a row said it; returns (verdict, how many in a row said the newest)."""
    newest = verdicts[0]
    in_a_row = next((i for i, v in enumerate(verdicts) if v != newest), len(verdicts))
    current = state or "not_drifted"
    return (newest if newest == current or in_a_row >= needs else current), in_a_row


def settle(session: Session, found: str, reason: str, *, needs: int) -> tuple[str, str, dict[str, Any]]:
    """This check's verdict after hysteresis over the previous checks with enough data (any champion):
    (verdict, reason, what the row keeps as ``_verdict``: the check's own verdict and the run it is in)."""
    recent = list(session.scalars(select(DriftCheck).where(DriftCheck.verdict != "insufficient_data")
                                  .order_by(col(DriftCheck.id).desc()).limit(max(needs - 1, 1))))
    own = [found] + [(r.signals.get("_verdict") or {}).get("found", r.verdict) for r in recent][: needs - 1]
    held, in_a_row = held_verdict(recent[0].verdict if recent else None, own, needs=needs)
    if held != found:
        word = found.replace("_", " ")
        reason = (f"{reason} — still {held.replace('_', ' ')}: {in_a_row} of the {needs} checks in a row "
                  f"that drift.consecutive needs said {word}")
    return held, reason, {"found": found, "in_a_row": in_a_row, "needs": needs}


def pending_drift(session: Session) -> str | None:
    """Why the newest check's drift is not yet the verdict (hysteresis), or None."""
    last = _newest(session)
    held = (last.signals.get("_verdict") or {}) if last is not None else {}
    if held.get("found") != "drifted" or last.verdict == "drifted":
        return None
    return (f"the window drifted in {held['in_a_row']} of the {held['needs']} checks in a row "
            f"that drift.consecutive needs (check {last.id})")


def drift_held_over(session: Session) -> str | None:
    """Why the newest check's "drifted" is held over from earlier checks and is not its own finding (its
    window was not drifted: e.g. the first check of a champion just refit on the new traffic), or None.
    A held-over verdict keeps the alert state steady; it is no reason to refit the model again."""
    last = _newest(session)
    held = (last.signals.get("_verdict") or {}) if last is not None else {}
    if last is None or last.verdict != "drifted" or held.get("found", "drifted") == "drifted":
        return None
    return (f"check {last.id} of {last.model_version} found no drift; \"drifted\" is held until "
            f"{held.get('needs')} checks in a row say not drifted (drift.consecutive)")


def drift_waiting_for_a_refit(session: Session, champion: ModelVersion, *, since: datetime) -> DriftCheck | None:
    """The newest check, when it checked ``champion`` since it was last promoted (a check of a champion since
    replaced, or of this one before a rollback to it, says nothing of the model serving now), was written after
    ``since``, and its verdict is drift it found itself (not held over from earlier checks); else None."""
    last = _newest(session)
    if (last is None or last.verdict != "drifted" or last.created_at < since or last.model_version != champion.version
            or (champion.promoted_at is not None and last.created_at < champion.promoted_at)):
        return None
    return last if (last.signals.get("_verdict") or {}).get("found", "drifted") == "drifted" else None


def last_verdict(session: Session) -> str | None:
    """The verdict of the newest check that had enough data (an alert fires when this changes)."""
    last = _newest(session)
    return last.verdict if last is not None else None


def _newest(session: Session) -> DriftCheck | None:
    """The newest check that had enough data to judge (insufficient-data checks neither hold nor break a verdict)."""
    return session.scalars(select(DriftCheck).where(DriftCheck.verdict != "insufficient_data")
                           .order_by(col(DriftCheck.id).desc())).first()


def list_checks(session: Session, *, limit: int = 20) -> list[DriftCheck]:
    return list(session.scalars(select(DriftCheck).order_by(col(DriftCheck.id).desc()).limit(limit)))
