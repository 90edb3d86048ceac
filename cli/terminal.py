"""What every CLI command shares: the consoles, settings from the global options, number format."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.console import Console

from refitd.core.logs import configure_logging
from refitd.core.settings import Settings

def _console(*, stderr: bool = False) -> Console:
    """A terminal gets rich's own layout. Piped output (a log file, CI, `| tee`) is written whole:
    lines are never soft-wrapped, and tables get room to keep every row on one line."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    width = max(int(os.environ.get("COLUMNS", "0") or 0), 160)
    return Console(stderr=stderr, width=width, soft_wrap=True)


console = _console()
err = _console(stderr=True)

METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


def settings_from(ctx: typer.Context) -> Settings:
    """Build Settings once from the root command's --config / --home / --log-level; configure logging."""
    obj = ctx.find_root().obj or {}
    overrides: dict[str, Any] = {}
    if obj.get("home") is not None:
        overrides["home"] = obj["home"]
    if obj.get("log_level") is not None:
        overrides["log_level"] = obj["log_level"]
    settings = Settings.load(obj.get("config"), **overrides)
    configure_logging(settings.log_level)
    return settings


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
