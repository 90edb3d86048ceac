"""The served OpenAPI schema tells the truth: schemathesis generates requests from it for every route.

Every check (schemathesis `--checks all`): no 5xx, every status and body declared, every
schema-valid request accepted, every schema-invalid one refused, 405 with Allow, … over ≥ 1,000
generated cases. Limits are small enough that the largest schema-valid request fits the body limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

HOOKS = "tests.serving.schemathesis_hooks"
CONFIG = Path(__file__).with_name("schemathesis.toml")
SERVING = {"max_texts_per_request": 16, "max_text_chars": 300, "max_body_bytes": 1024 * 1024,
           "feedback_rate_per_s": 1000.0, "feedback_burst": 100000, "admin_token": "s3cret-admin"}


def _st(url: str, out: Path, *, max_examples: int, extra: list[str]) -> subprocess.CompletedProcess:
    st = Path(sys.executable).with_name("st")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [str(st), "--config-file", str(CONFIG), "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", str(max_examples),
               "--workers", "2", "--seed", "1", "--report", "ndjson", "--report-dir", str(out),
               "--request-timeout", "30", "--suppress-health-check", "all", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent, timeout=900, check=False)


def _cases(out: Path) -> int:
    """Generated cases with a response, from the ndjson event stream."""
    count = 0
    for path in out.glob("*.ndjson"):
        for line in path.read_text().splitlines():
            if '"ScenarioFinished"' in line:
                event = json.loads(line)["ScenarioFinished"]
                count += len((event.get("recorder") or {}).get("interactions") or {})
    return count


@pytest.mark.integration
def test_generated_requests_over_every_route(start_server, tmp_path: Path) -> None:
    running = start_server(serving=SERVING)
    schema = httpx.get(f"{running.url}/openapi.json").json()
    routes = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert len(routes) >= 16
    result = _st(running.url, tmp_path / "report", max_examples=60,
                 extra=["--header", "Authorization: Bearer s3cret-admin"])
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary + result.stderr[-3000:]
    cases = _cases(tmp_path / "report")
    assert cases >= 1000, summary
    print(f"{cases} cases\n{summary}")  # the schemathesis summary, for the record
