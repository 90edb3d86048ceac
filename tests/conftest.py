"""Shared fixtures: real SQLite / PostgreSQL stores, a real exported model, free ports."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports Prefect or Hugging Face libraries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("REFITD_PROGRESS", "0")
for _var in ("REFITD_HOME", "REFITD_CONFIG", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"):
    os.environ.pop(_var, None)

PG_URL = os.environ.get("REFITD_TEST_DATABASE_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def _prefect_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect")))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'refitd.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    if not PG_URL:
        pytest.skip("REFITD_TEST_DATABASE_URL is not set: PostgreSQL store tests skipped")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"refitd_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs on SQLite and on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(db_url: str):
    from refitd.core.db import make_engine, upgrade

    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def untrained_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real artifact folder: the bundled encoder with a fresh 3-class head, exported to ONNX."""
    from tests.artifact_factory import build_artifact

    return build_artifact(tmp_path_factory.mktemp("artifact") / "staged")


def wait_ready(url: str, timeout: float = 60) -> None:
    """Wait until a refitd server at ``url`` answers /v2/health/ready with 200."""
    import time

    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")
