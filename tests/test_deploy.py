"""Every file in deploy/ parses and means what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_deploy_folder_files_are_all_checked() -> None:
    known = {"refitd.toml"}
    assert {p.name for p in DEPLOY.iterdir() if p.is_file()} <= known | {"refitd.service", "prefect.yaml", "refitd.env"}


def test_example_config_loads(tmp_path) -> None:
    settings = Settings.load(DEPLOY / "refitd.toml", home=tmp_path)
    assert settings.model.name == "refitd" and settings.serving.host == "127.0.0.1"


@pytest.mark.parametrize("name", ["refitd.service", "prefect.yaml"])
def test_other_deploy_files_parse(name) -> None:
    path = DEPLOY / name
    if not path.exists():
        pytest.skip(f"{name} arrives with the daemon")
    if name.endswith(".yaml"):
        import yaml

        assert yaml.safe_load(path.read_text())
    else:
        import configparser

        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(path.read_text())
        assert parser.has_section("Service")
