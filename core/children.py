"""How every process starts a training flow child: ``python -m refitd.flows --settings FILE FLOW …``.

The CLI, the daemon's launcher, the demo and the benchmarks all start training this one way, by
name, so none of them imports torch. Settings travel by one channel: the parent's validated
:class:`Settings` are written to a 0600 JSON file (secrets included) that the child validates
again with :meth:`Settings.from_json` and deletes once read; the child consults no TOML file and
no ``REFITD_*`` variable for settings. What the flow does (init or refit, the trigger, quick) is
in the arguments; how it does it is in the settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refitd.core.settings import Settings

MODULE = "refitd.flows"


@dataclass
class FlowChild:
    """A prepared flow process: its command line, environment and the files it reads and writes."""

    argv: list[str]
    env: dict[str, str]
    settings_file: Path
    result_file: Path

    def result(self) -> dict[str, Any]:
        """The child's JSON summary, or {} when it wrote none (it died first)."""
        try:
            text = self.result_file.read_text()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def cleanup(self) -> None:
        """Remove the settings file (if the child never read it) and the result file."""
        for path in (self.settings_file, self.result_file):
            path.unlink(missing_ok=True)


def prepare(settings: Settings, flow_args: list[str], *, threads: int | None = None, niceness: int = 0) -> FlowChild:
    """Write the settings file and build the command for ``python -m refitd.flows FLOW_ARGS``."""
    settings.home.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".flow-settings-", suffix=".json", dir=settings.home)  # 0600
    with os.fdopen(fd, "w") as handle:
        handle.write(settings.to_json())
    fd, result = tempfile.mkstemp(prefix=".flow-result-", suffix=".json", dir=settings.home)
    os.close(fd)
    argv = [sys.executable, "-m", MODULE, "--settings", name, "--result-file", result]
    if niceness:
        argv += ["--nice", str(int(niceness))]
    env = dict(os.environ)
    env["REFITD_PROGRESS"] = "0"  # the child's output goes to a log file: no progress-bar debris
    env["TOKENIZERS_PARALLELISM"] = "false"
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
            env[var] = str(threads)
    return FlowChild(argv + flow_args, env, Path(name), Path(result))


def run(settings: Settings, flow_args: list[str], *, log_file: Path) -> tuple[int, dict[str, Any]]:
    """Run a flow child to the end; (exit code, JSON summary). Its output goes to ``log_file``."""
    child = prepare(settings, flow_args)
    try:
        with open(log_file, "ab") as log:
            code = subprocess.call(child.argv, env=child.env, stdout=log, stderr=subprocess.STDOUT)
        return code, child.result()
    finally:
        child.cleanup()
