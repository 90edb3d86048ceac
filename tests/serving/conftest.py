"""A real server on a free port over a real (untrained) model artifact."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from refitd.core.db import make_engine, upgrade
from refitd.core.settings import Settings
from refitd.serving.server import Serving, build
from tests.artifact_factory import publish_version
from tests.conftest import free_port, wait_ready


@dataclass
class Running:
    url: str
    settings: Settings
    parts: Serving
    server: uvicorn.Server


def _start(settings: Settings, parts: Serving) -> Running:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(parts.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout=30)
    running = Running(url, settings, parts, server)
    running.thread = thread  # type: ignore[attr-defined]
    return running


def _stop(running: Running) -> None:
    running.server.should_exit = True
    running.thread.join(15)  # type: ignore[attr-defined]


@pytest.fixture
def start_server(tmp_path: Path, untrained_artifact: Path) -> Iterator:
    """Start a real server over a fresh home with v1 promoted; settings overrides as keyword arguments."""
    started: list[Running] = []

    def start(**overrides) -> Running:
        serving = {"max_texts_per_request": 8, "max_text_chars": 200, **overrides.pop("serving", {})}
        settings = Settings.load(home=tmp_path, serving=serving, **overrides)
        upgrade(make_engine(settings.database_url))
        publish_version(settings, untrained_artifact)
        running = _start(settings, build(settings))
        started.append(running)
        return running

    yield start
    for running in started:
        _stop(running)


@pytest.fixture
def running(start_server) -> Running:
    return start_server()
