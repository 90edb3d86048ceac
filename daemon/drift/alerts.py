"""What a drift alert says: the verdict change, the champion, the reason and the signals (delivered by
``daemon/alerts`` from the outbox)."""

from __future__ import annotations

from typing import Any


def drift_payload(check: Any, previous: str | None) -> dict[str, Any]:
    icon = ":rotating_light:" if check.verdict == "drifted" else ":white_check_mark:"
    return {
        "text": f"{icon} refitd drift check {check.id} on {check.model_version}: {previous or 'none'} → "
                f"{check.verdict}. {check.reason}",
        "check_id": check.id, "verdict": check.verdict, "previous": previous, "model_version": check.model_version,
        "reason": check.reason, "report_path": check.report_path,
        "signals": {k: v for k, v in check.signals.items() if not k.startswith("_")},
    }
