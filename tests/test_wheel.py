"""The built wheel: one installed namespace, `refitd`, that works beside python-daemon.

The folders stay at the top of the repository and pyproject.toml maps them under `refitd`; a
package missing from that map, or a migration left out, only shows up once the wheel is
installed somewhere the source tree is not on sys.path. So: build the wheel, read its file list,
install it into a fresh virtualenv next to python-daemon (which owns the import name `daemon`)
and run the entry points from a directory outside the repository.

The fresh virtualenv gets python-daemon from the package index and refitd from the wheel
(``--no-deps``); the heavy dependencies (torch, prefect, …) come from the project's own
virtualenv through a path line in a ``.pth`` file. A path line only appends that directory to
sys.path — its own ``.pth`` files, among them the editable install's finder, are not run — so
the editable refitd cannot stand in for the wheel, and the test asserts it does not.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from refitd.core.db import head_revision

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Never copied into the build: environments, VCS data, build leftovers, local state.
NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "state", "results", "*.db*"
)
TIMEOUT_S = 300


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    for var in ("REFITD_HOME", "REFITD_CONFIG", "STATE_DIRECTORY"):
        env.pop(var, None)
    env.update(
        HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_HOME=str(home / "prefect"),
        NO_COLOR="1",
        COLUMNS="200",
    )
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the working tree (so no build/ is left in the repository,
    and no stale build/lib from an earlier build can add or hide files)."""
    src = tmp_path_factory.mktemp("src") / "refitd"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out, src], cwd=src)
    (found,) = out.glob("refitd-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with python-daemon and the refitd wheel; other dependencies via a .pth."""
    root = tmp_path_factory.mktemp("venv")
    venv = root / "env"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    python = venv / "bin" / "python"
    proc = subprocess.run(
        [python, "-m", "pip", "install", "python-daemon"], cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if proc.returncode != 0:
        pytest.skip(f"python-daemon cannot be installed from the package index: {proc.stderr.strip()[-500:]}")
    _run([python, "-m", "pip", "install", "--no-deps", wheel], cwd=root)
    fresh = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).stdout.strip())
    project = {Path(sysconfig.get_path(name)) for name in ("purelib", "platlib")}
    assert all(p != fresh and p.is_dir() for p in project)
    (fresh / "refitd_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(project)))
    return venv


# the wheel's file list -------------------------------------------------------------------------


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_every_module_is_under_the_refitd_namespace(wheel: Path) -> None:
    names = _names(wheel)
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"refitd", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert [n for n in names if n.endswith(".py") and not n.startswith("refitd/")] == []


def test_every_source_file_is_in_the_wheel(wheel: Path) -> None:
    """Each file under a mapped folder ships at refitd/<its path> (an unlisted subpackage would not)."""
    expected = set()
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        prefix = package.replace(".", "/")
        for f in (ROOT / folder).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in {".py", ".mako"}:
                expected.add(f"{prefix}/{f.relative_to(ROOT / folder).as_posix()}")
    assert expected - set(_names(wheel)) == set()


def test_the_migrations_are_inside(wheel: Path) -> None:
    names = set(_names(wheel))
    versions = sorted(f.name for f in (ROOT / "core" / "migrations" / "versions").glob("*.py"))
    assert versions, "no migrations in core/migrations/versions"
    assert {"refitd/core/migrations/env.py", "refitd/core/migrations/script.py.mako"} <= names
    assert {f"refitd/core/migrations/versions/{v}" for v in versions} <= names


def test_the_console_script_is_the_cli(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"refitd": "refitd.cli.main:main"}


# installed beside python-daemon ----------------------------------------------------------------


def test_refitd_and_python_daemon_import_side_by_side(venv: Path, tmp_path: Path) -> None:
    probe = (
        "import json, daemon; daemon.DaemonContext\n"
        "import refitd, refitd.daemon.service, refitd.core.settings\n"
        "print(json.dumps({'refitd': refitd.__file__, 'service': refitd.daemon.service.__file__,"
        " 'daemon': daemon.__file__}))\n"
    )
    proc = _run([venv / "bin" / "python", "-c", probe], cwd=tmp_path, env=_clean_env(tmp_path))
    files = {k: Path(v).resolve() for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    for name, path in files.items():
        assert path.is_relative_to(venv.resolve()), f"{name} imported from {path}, not from the fresh venv"
    assert files["daemon"].parent.name == "daemon" and files["daemon"].parent.parent.name == "site-packages"


def test_the_cli_runs_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    out = _run([venv / "bin" / "refitd", "--help"], cwd=tmp_path, env=env).stdout
    for command in ("init", "serve", "run", "demo", "status", "db"):
        assert f" {command} " in out, f"`refitd --help` does not list {command}:\n{out}"
    # The migrations are found inside the installed package: the schema reaches the newest revision.
    home = tmp_path / "home"
    _run([venv / "bin" / "refitd", "--home", home, "db", "upgrade"], cwd=tmp_path, env=env)
    with sqlite3.connect(home / "refitd.db") as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [(head_revision(),)]


@pytest.mark.parametrize(
    ("module", "args", "expect"),
    [
        ("refitd.flows", ["--help"], ["usage: python -m refitd.flows", "init", "refit"]),
        ("refitd.bench", ["--help"], ["usage: python -m refitd.bench"]),
        ("refitd.bench", ["serve", "--help"], ["usage:"]),
        ("refitd.cli", ["--help"], ["Usage:", "init"]),
    ],
)
def test_module_entry_points_run_from_the_wheel(
    venv: Path, tmp_path: Path, module: str, args: list[str], expect: list[str]
) -> None:
    out = _run([venv / "bin" / "python", "-m", module, *args], cwd=tmp_path, env=_clean_env(tmp_path)).stdout
    for text in expect:
        assert text in out, f"`python -m {module} {' '.join(args)}` lacks {text!r}:\n{out}"


def test_a_checkout_as_working_directory_does_not_shadow_the_installed_package(venv: Path, tmp_path: Path) -> None:
    """``python -m`` puts the working directory first on sys.path; a checkout there holds a ``refitd/``
    folder without the subpackages, which must still resolve (children of the CLI and Prefect
    workers start this way from a checkout)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=NOT_SOURCE)
    env = _clean_env(tmp_path)
    out = _run([venv / "bin" / "python", "-m", "refitd.flows", "--help"], cwd=checkout, env=env).stdout
    assert "usage: python -m refitd.flows" in out
    probe = "import refitd.core.settings as s; print(s.__file__)"
    assert _run([venv / "bin" / "python", "-c", probe], cwd=checkout, env=env).stdout.strip().endswith("settings.py")
