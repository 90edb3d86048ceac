"""Composition root of the serving process: settings → engine → store → log → plane → app → uvicorn."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from refitd.core.artifacts import ArtifactStore
from refitd.core.db import engine_for
from refitd.core.settings import Settings
from refitd.serving.app import create_app
from refitd.serving.dataplane import DataPlane
from refitd.serving.predlog import PredictionLog

log = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    """uvicorn, minus re-raising the caught signal after shutdown: we still have a log to flush.

    SIGTERM / SIGINT only set flags (stop accepting, drain in-flight requests); a second SIGINT forces exit.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


@dataclass
class Serving:
    plane: DataPlane
    app: FastAPI
    predlog: PredictionLog


def build(settings: Settings) -> Serving:
    """Wire the serving objects; nothing is loaded or started yet."""
    engine = engine_for(settings)
    predlog = PredictionLog(engine, settings.spool_dir)
    plane = DataPlane(settings, engine, ArtifactStore.from_settings(settings), predlog)
    return Serving(plane, create_app(plane), predlog)


def uvicorn_config(settings: Settings, app: FastAPI, *, host: str | None = None, port: int | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host or settings.serving.host,
        port=settings.serving.port if port is None else port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve HTTP until SIGTERM / SIGINT; the app's lifespan loads the champion and flushes the log."""
    GracefulServer(uvicorn_config(settings, build(settings).app, host=host, port=port)).run()
