"""The direction of imports, and a serving process free of torch and transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"core", "serving", "flows", "daemon", "bench"}
# package -> first-party packages it must never import
FORBIDDEN = {
    "core": {"serving", "flows", "daemon", "bench"},
    "serving": {"flows", "daemon", "bench"},
    "flows": {"serving", "daemon", "bench"},
    "daemon": {"flows", "bench"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & PACKAGES


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package: str) -> None:
    offenders = {
        str(f.relative_to(ROOT)): sorted(_imports(f) & FORBIDDEN[package])
        for f in (ROOT / package).rglob("*.py")
        if _imports(f) & FORBIDDEN[package]
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "statement",
    [
        "import serving.server, serving.app, serving.runtime, serving.dataplane, serving.batcher, serving.oip, serving.predlog, serving.trial_load",
        "import daemon.cli",
        "import daemon.drift, evidently.metrics, evidently.legacy.metrics.data_drift.embedding_drift_methods",
        "import daemon.service, daemon.jobs, daemon.launcher, daemon.guard, daemon.triggers, daemon.report, daemon.demo, "
        "daemon.plots, apscheduler.jobstores.sqlalchemy, prefect.deployments",
    ],
)
def test_serving_and_the_daemon_never_import_torch_or_transformers(statement: str) -> None:
    code = f"{statement}; import sys; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
