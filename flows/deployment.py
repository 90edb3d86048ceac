"""The refit flow as a Prefect deployment's entrypoint (see deploy/prefect.yaml).

A deployment's parameters must be plain JSON, so this flow takes the trigger and
builds the settings on the worker's host, from its own environment and refitd.toml
(`REFITD_CONFIG`, `REFITD_DATABASE__URL`, …); the refit itself is the same flow
`python -m refitd.flows refit` runs, here as a subflow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from refitd.core.db import engine_for, upgrade
from refitd.core.settings import Settings
from refitd.flows.refit import refit


@flow(name="refitd-refit-deployed")
def refit_deployed(trigger: str = "deployment", quick: bool = False, config: str | None = None) -> dict[str, Any]:
    """Load this host's settings, then run the refit flow: train, evaluate, gate, promote or reject."""
    settings = Settings.load(config)
    upgrade(engine_for(settings))
    return refit(settings, trigger=trigger, quick=quick)
