"""Every file in deploy/ parses and means what it says."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from refitd.core.credentials import credential_name, file_variable, secret_settings
from refitd.core.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_deploy_folder_files_are_all_checked() -> None:
    assert {p.name for p in DEPLOY.iterdir() if p.is_file()} == {"refitd.toml", "refitd.service", "prefect.yaml",
                                                                 "refitd.env"}


def test_example_config_loads(tmp_path) -> None:
    settings = Settings.load(DEPLOY / "refitd.toml", home=tmp_path)
    assert settings.model.name == "refitd" and settings.serving.host == "127.0.0.1"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "refitd.service").read_text())
    return parser


def test_unit_asks_for_what_the_daemon_does() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify" and service["ExecStart"].endswith("refitd run")
    assert int(service["WatchdogSec"]) >= 30 and service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed" and float(service["TimeoutStopSec"]) > Settings().refit.stop_timeout_s
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "StateDirectory": "refitd", "User": "refitd"}.items():
        assert service[key] == value, key
    assert service["EnvironmentFile"].lstrip("-") == "/etc/refitd/refitd.env"


def test_systemd_verifies_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs the systemd package")
        pytest.skip("systemd-analyze is not installed")
    refitd = Path(sys.executable).with_name("refitd")  # the unit's ExecStart, pointed at this environment
    unit = tmp_path / "refitd.service"
    unit.write_text((DEPLOY / "refitd.service").read_text().replace("/opt/refitd/venv/bin/refitd", str(refitd)))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_env_file_holds_only_settings() -> None:
    lines = [ln.lstrip("# ").strip() for ln in (DEPLOY / "refitd.env").read_text().splitlines()]
    assignments = [ln for ln in lines if re.match(r"^[A-Z_]+=", ln)]
    # refitd's settings, and the AWS client's own variables for models on S3 (storage.models_url)
    assert assignments and all(a.startswith(("REFITD_", "AWS_")) for a in assignments)
    env = dict(a.split("=", 1) for a in assignments if a.startswith("REFITD_"))
    files = {k for k in env if k.endswith("_FILE")}
    # every secret's *_FILE form is shown, and nothing else has one
    assert files == {file_variable(Settings, *secret) for secret in secret_settings(Settings)}
    overrides = {k: v for k, v in env.items() if k not in files and ("ADMIN_TOKEN" in k or "HOST" in k or "PREFECT" in k)}
    settings = Settings(_env_file=None, **_nested(overrides))  # the example values are valid settings
    assert settings.prefect.deployment == "refitd-refit-deployed/refitd-refit"


def test_unit_shows_a_credential_for_every_secret() -> None:
    shown = re.findall(r"^#\s*LoadCredential=([^:\s]+):", (DEPLOY / "refitd.service").read_text(), flags=re.M)
    assert sorted(shown) == sorted(credential_name(*secret) for secret in secret_settings(Settings))


def _nested(env: dict[str, str]) -> dict:
    out: dict = {}
    for key, value in env.items():
        section, name = key.removeprefix("REFITD_").lower().split("__")
        out.setdefault(section, {})[name] = value
    return out


def test_prefect_deployment_points_at_the_deployed_flow() -> None:
    import yaml

    spec = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    (deployment,) = spec["deployments"]
    module, function = deployment["entrypoint"].split(":")
    source = (DEPLOY.parent / module).read_text()
    flow_name = re.search(rf'@flow\(name="([^"]+)"\)\ndef {function}\(', source).group(1)
    assert f"{flow_name}/{deployment['name']}" == "refitd-refit-deployed/refitd-refit"  # what refitd.env names
    assert set(deployment["parameters"]) <= {"trigger", "quick", "config"}
