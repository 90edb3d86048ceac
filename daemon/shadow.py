"""The shadow watch: promote or reject the version in shadow on how it answered live traffic.

A candidate that passed the offline gate goes into shadow when ``gate.shadow_minutes`` > 0 (flows/refit.py);
every serving process scores a share of its requests with it (serving/shadow.py). Once the shadow has run
``gate.shadow_minutes`` and scored ``gate.shadow_min_rows`` requests, this watch decides:

- with ``gate.shadow_min_labels`` or more of those requests labelled, on live accuracy: the shadow is promoted
  only if its accuracy on them beats the champion's on the same requests by ``gate.shadow_min_delta``;
- with fewer, on agreement: it is promoted only if it gives the champion's answer to at least
  ``gate.shadow_min_agreement`` of them — a floor that catches a candidate broken on live inputs (a different
  tokenisation, a label set gone wrong), low enough that a better model, which must disagree with a drifted
  champion, passes.

The figures are stored on the version (``metrics.shadow``: ``refitd models show``) and the decision is a
``promoted`` or ``rejected`` event with them in words; the post-promotion watch then follows as after any
promotion.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from refitd.core import registry
from refitd.core.db import db_now, session_scope
from refitd.core.sections import GateSection
from refitd.core.settings import Settings
from refitd.core.shadow import figures
from refitd.core.tables import Event

log = logging.getLogger(__name__)


def shadow_started(session: Session, version: str) -> datetime | None:
    """When ``version`` went into shadow (its latest ``shadow_started`` event)."""
    return session.exec(select(Event.created_at).where(Event.kind == "shadow_started", Event.subject == version)
                        .order_by(col(Event.id).desc())).first()


def progress(session: Session, settings: Settings) -> dict[str, Any] | None:
    """The shadow in progress and its figures so far (``refitd status``), or None. Its accuracies count the labels
    that measure (``serving.feedback_measure_sources``): a correction of the champion's mistake alone would hand
    the shadow every such request."""
    mv = registry.get_shadow(session)
    if mv is None:
        return None
    since = shadow_started(session, mv.version) or mv.created_at
    return {**figures(session, mv.version, sources=settings.serving.feedback_measure_sources), "since": since.isoformat(),
            "minutes": round((db_now(session) - since).total_seconds() / 60, 1)}  # the event's clock


def verdict(f: dict[str, Any], g: GateSection) -> tuple[bool, str]:
    """Promote or not, and why, from a finished shadow's figures."""
    said = f"agreement with {f['champion']} {f['agreement']:.3f} over {f['scored']} live requests"
    if f["labelled"] >= g.shadow_min_labels:
        delta = f["accuracy"] - f["champion_accuracy"]
        ok = delta >= g.shadow_min_delta
        return ok, (f"shadow {'passed' if ok else 'failed'}: live accuracy {f['accuracy']:.3f} vs {f['champion']}'s "
                    f"{f['champion_accuracy']:.3f} on the same {f['labelled']} labelled requests ({delta:+.3f}; needs "
                    f"≥ {g.shadow_min_delta:+.3f}); {said}")
    ok = f["agreement"] >= g.shadow_min_agreement
    return ok, (f"shadow {'passed' if ok else 'failed'}: {f['labelled']} labelled requests (< {g.shadow_min_labels}), "
                f"so judged on agreement: {said} ({'≥' if ok else '<'} the floor {g.shadow_min_agreement:g})")


def check(settings: Settings, engine: Engine) -> dict[str, Any] | None:
    """Judge the shadow once it has run its time and scored enough; None when nothing is in shadow."""
    g = settings.gate
    with session_scope(engine) as session:
        f = progress(session, settings)
    if f is None:
        return None
    version = f["version"]
    if f["minutes"] < g.shadow_minutes:
        return {"action": "shadowing", **f}
    if f["scored"] < g.shadow_min_rows:
        if f["minutes"] < max(g.shadow_max_minutes, g.shadow_minutes):
            return {"action": "waiting", "reason": f"{version}: {f['scored']} live requests scored in shadow, needs "
                                                   f"{g.shadow_min_rows} before it is judged", **f}
        # Too little traffic (or no server could load it) to judge live: refits are held meanwhile, so the
        # shadow ends on the offline gate it already passed.
        ok, reason = True, (f"shadow ended after {f['minutes']:.0f} min with {f['scored']} live requests scored "
                            f"(< {g.shadow_min_rows}; gate.shadow_max_minutes {g.shadow_max_minutes:g}): promoted on "
                            "the offline gate it passed")
    else:
        ok, reason = verdict(f, g)
    ended = registry.end_shadow(engine, version, promote=ok, reason=reason, figures={**f, "verdict": reason})
    if ended is None:
        return {"action": "gone", "reason": f"{version} left shadow before it was judged", **f}
    log.info("%s: %s", version, reason)
    return {"action": "promoted" if ok else "rejected", "reason": reason, **f}
