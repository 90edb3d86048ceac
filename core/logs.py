"""Logging set-up, called once by each entry point (CLI command, flow process, server)."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) leave time stamps to the journal."""
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else _FORMAT
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "alembic", "filelock", "apscheduler.executors"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
