"""What every CLI command shares: the consoles, settings from the global options, number format."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from refitd.core.logs import configure_logging
from refitd.core.settings import Settings

console = Console()
err = Console(stderr=True)

METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


def settings_from(ctx: typer.Context) -> Settings:
    """Build Settings once from the root command's --config / --home / --log-level; configure logging."""
    obj = ctx.find_root().obj or {}
    overrides: dict[str, Any] = {}
    if obj.get("home") is not None:
        overrides["home"] = obj["home"]
    settings = Settings.load(obj.get("config"), **overrides)
    configure_logging(obj.get("log_level") or settings.log_level)
    return settings


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
