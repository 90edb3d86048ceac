"""A champion trained once per session (tiny, under Prefect's test harness), copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from refitd.core.db import make_engine, upgrade
from refitd.core.settings import Settings


@pytest.fixture(scope="session")
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=180):
        yield


def tiny_settings(home: Path, **overrides) -> Settings:
    training = {"min_rows": 50, "seed": 7, **overrides.pop("training", {})}
    return Settings.load(home=home, training=training, **overrides)


@pytest.fixture(scope="session")
def champion_home(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> Path:
    from refitd.flows.refit import refit

    home = tmp_path_factory.mktemp("champion")
    settings = tiny_settings(home)
    upgrade(make_engine(settings.database_url))
    result = refit(settings, trigger="init", warm_start="base", quick=True)
    assert result["promoted"], result["reason"]
    return home


@pytest.fixture
def home(champion_home: Path, tmp_path: Path) -> Path:
    """A private copy of the trained home (database and models)."""
    target = tmp_path / "home"
    shutil.copytree(champion_home, target)
    return target
