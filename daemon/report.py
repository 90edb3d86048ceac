"""What `refitd status` shows: gathered from the store, rendered by the CLI."""

from __future__ import annotations

from typing import Any

from sqlmodel import func, select

from core import registry
from core.db import make_engine, session_scope
from core.settings import Settings
from core.tables import DriftCheck, Feedback, ModelVersion, Prediction, RefitRun


def gather_status(settings: Settings, *, events: int = 10) -> dict[str, Any]:
    """Champion with its test metrics, row counts and the latest events."""
    engine = make_engine(settings.database_url)
    with session_scope(engine) as session:
        champion = registry.get_champion(session)
        counts = {
            name: session.exec(select(func.count()).select_from(table)).one()
            for name, table in (("versions", ModelVersion), ("predictions", Prediction), ("feedback", Feedback),
                                ("drift checks", DriftCheck), ("refit runs", RefitRun))
        }
        recent = registry.list_events(session, limit=events)
    champ = None
    if champion is not None:
        test = champion.metrics.get("test", {})
        champ = {
            "version": champion.version,
            "promoted_at": champion.promoted_at,
            "test_accuracy": test.get("accuracy"),
            "test_macro_f1": test.get("macro_f1"),
            "gate_reason": champion.gate_reason,
        }
    return {
        "home": str(settings.home),
        "champion": champ,
        "counts": counts,
        "events": [
            {"created_at": e.created_at.strftime("%Y-%m-%d %H:%M:%S"), "kind": e.kind, "subject": e.subject, "reason": e.reason}
            for e in recent
        ],
    }
