"""The direction of imports, one installed namespace, and a serving process free of torch and transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"core", "serving", "flows", "daemon", "cli", "demo", "bench"}
# package -> first-party packages it must never import. Nothing imports the CLI; only the CLI
# starts the demo.
FORBIDDEN = {
    "core": PACKAGES - {"core"},
    "serving": {"flows", "daemon", "cli", "demo", "bench"},
    "flows": {"serving", "daemon", "cli", "demo", "bench"},
    "daemon": {"flows", "cli", "demo", "bench"},
    "demo": {"cli", "bench", "flows"},
    "bench": {"cli", "demo"},
}


def _imported(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _first_party(path: Path) -> set[str]:
    """The refitd subpackages a file imports (``refitd.core.x`` -> ``core``)."""
    return {name.split(".")[1] for name in _imported(path) if name.startswith("refitd.") and "." in name} & PACKAGES


def _sources() -> list[Path]:
    return [f for package in PACKAGES for f in (ROOT / package).rglob("*.py")] + list((ROOT / "tests").rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package: str) -> None:
    offenders = {
        str(f.relative_to(ROOT)): sorted(_first_party(f) & FORBIDDEN[package])
        for f in (ROOT / package).rglob("*.py")
        if _first_party(f) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_everything_is_imported_through_the_refitd_namespace() -> None:
    """A bare ``import core`` works from the repository root but not from the installed wheel."""
    offenders = {
        str(f.relative_to(ROOT)): bare
        for f in _sources()
        if (bare := sorted({n for n in _imported(f) if n.split(".")[0] in PACKAGES}))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "statement",
    [
        "import refitd.serving.server, refitd.serving.app, refitd.serving.runtime, refitd.serving.dataplane, "
        "refitd.serving.batcher, refitd.serving.oip, refitd.serving.predlog, refitd.serving.trial_load, "
        "refitd.serving.body, refitd.serving.ratelimit, refitd.core.objectstore, s3fs",
        "import refitd.cli.main",
        "import refitd.daemon.drift.check, evidently.metrics, evidently.legacy.metrics.data_drift.embedding_drift_methods",
        "import refitd.daemon.service, refitd.daemon.jobs, refitd.daemon.launcher, refitd.daemon.guard, "
        "refitd.daemon.triggers, refitd.daemon.status, refitd.daemon.jobstore, refitd.demo.run, refitd.demo.plots, "
        "apscheduler.jobstores.sqlalchemy, prefect.deployments",
    ],
)
def test_serving_and_the_daemon_never_import_torch_or_transformers(statement: str) -> None:
    code = f"{statement}; import sys; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_serving_and_daemon_process_holds_no_pandas_scipy_or_evidently() -> None:
    """What the long-lived process imports stays small: frames and drift statistics live in the drift check's
    and the refit's own processes (the promotion watch and the triggers count in the database)."""
    statement = ("import refitd.daemon.service, refitd.daemon.jobs, refitd.daemon.launcher, refitd.daemon.guard, "
                 "refitd.daemon.triggers, refitd.daemon.status, refitd.serving.app")
    code = (f"{statement}; import sys; bad = [m for m in ('pandas', 'scipy', 'evidently', 'sklearn') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
