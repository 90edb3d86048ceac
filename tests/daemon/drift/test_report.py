"""The report an operator acts on: refitd's verdict first, within a size budget; and which reports are kept."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from refitd.core import registry
from refitd.core.artifacts import TRAIN_ROWS_FILE, ArtifactStore
from refitd.core.datasets import load_bundled_corpus
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.registration import register_candidate
from refitd.core.settings import Settings
from refitd.core.tables import DriftCheck, utcnow
from refitd.daemon.drift import report
from refitd.daemon.drift.check import run_check
from refitd.serving.runtime import OnnxClassifier
from tests.artifact_factory import copy_artifact
from tests.daemon.drift.test_check import _log

BUDGET = 1_000_000  # bytes of HTML per check (issue 13)


def champion_with_traffic(home: Path, artifact: Path, *, other: int, **drift) -> Settings:  # type: ignore[no-untyped-def]
    """A champion trained on 600 airline tweets, and 300 logged predictions of which ``other`` are off-topic."""
    corpus = load_bundled_corpus()
    airline = corpus[corpus["topic"] == "airline"].sample(900, random_state=5)
    off = corpus[corpus["topic"] != "airline"].sample(max(other, 1), random_state=5)
    settings = Settings.load(home=home, drift={"window_size": 300, "min_window": 200, "reference_size": 600,
                                               "calibration_draws": 1000} | drift)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = ArtifactStore(settings.models_dir)
    staged = copy_artifact(artifact, store.staging("t"))
    airline.iloc[:600][["text", "label"]].to_parquet(staged / TRAIN_ROWS_FILE)
    registry.promote(engine, register_candidate(engine, store, staged).version)
    runtime = OnnxClassifier("v1", store.path("v1"), provider="cpu")
    runtime.load()
    texts = airline["text"].iloc[600:900 - other].tolist() + off["text"].iloc[:other].tolist()
    _log(settings, runtime, texts, utcnow() - timedelta(minutes=5))
    return settings


def test_a_report_opens_with_the_verdict_and_every_signal_and_stays_under_budget(tmp_path: Path,
                                                                                 untrained_artifact: Path) -> None:
    settings = champion_with_traffic(tmp_path, untrained_artifact, other=90, consecutive=1)
    row = run_check(settings, make_engine(settings.database_url))
    assert row.verdict == "drifted", row.reason
    page = Path(row.report_path).read_text()
    assert len(page.encode()) <= BUDGET / 5  # ~70 KB here; Evidently's own page was 3.8 MB
    assert row.signals["_report"]["bytes"] == len(page.encode())

    head = page[: page.index("root_metric_")]  # refitd's part comes before Evidently's sections
    assert 'class="drifted">drifted</span>' in head and html.escape(row.reason) in head
    assert "v1" in head and "300 predictions" in head and "600 rows" in head
    for name in ("text", "embedding", "label", "confidence", "length", "oov_share", "non_letter_share", "performance"):
        assert f"<td>{name}</td>" in head, name
    embedding = row.signals["embedding"]
    assert f"{embedding['p_value']:.4g}" in head and f"{embedding['threshold']:.4g}" in head
    assert "not measured: 0 labelled rows, needs 30" in head  # performance: no labels yet

    # Evidently's sections keep the text signal's words and examples; its library is shared, not embedded.
    assert "characteristic words" in page and "characteristic examples" in page
    lib = re.search(r'<script src="(js/evidently\.[\d.]+\.js)">', page)
    assert lib and (settings.reports_dir / lib.group(1)).stat().st_size > 3_000_000
    assert (settings.reports_dir / "js" / report.FONT_FILE).is_file()
    assert '"template"' not in page  # plotly's default template, once per figure, is dropped

    workspace, project = report.workspace_project(settings)
    run = row.signals["_report"]["workspace_run"]
    assert [str(r) for r in workspace.list_runs(project.id)] == [run]
    stored = workspace.get_run(project.id, run)
    assert len(stored.widgets) == len(json.loads(page.split(f"var {_dashboard(page)} = ", 1)[1].split(";\n", 1)[0])["widgets"][0]["widgets"])
    assert all(r.widget is None for r in stored.metric_results.values())  # the UI draws from the snapshot's widgets


def _dashboard(page: str) -> str:
    return re.search(r"var (metric_[0-9a-f]+) = ", page).group(1)


@pytest.fixture
def checks(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Rows with report files, as checks leave them: (verdict, what the check itself found, age in days)."""
    settings = Settings.load(home=tmp_path, drift={"keep_reports": 2})
    engine = make_engine(settings.database_url)
    upgrade(engine)
    settings.reports_dir.mkdir(parents=True)

    def add(verdict: str, found: str | None = None, days: float = 0.0) -> int:
        with session_scope(engine) as session:
            path = settings.reports_dir / f"r{session.query(DriftCheck).count()}.html"
            path.write_text("<html></html>")
            row = DriftCheck(verdict=verdict, created_at=utcnow() - timedelta(days=days), report_path=str(path),
                             signals={"_verdict": {"found": found or verdict}, "_report": {"bytes": 13}})
            session.add(row)
            session.flush()
            return row.id  # type: ignore[return-value]

    return settings, engine, add


def test_beyond_the_newest_n_only_drift_and_verdict_changes_keep_their_report(checks) -> None:  # type: ignore[no-untyped-def]
    settings, engine, add = checks
    C, D = "not_drifted", "drifted"
    first = add(C)  # the first verdict: a change from none
    routine = add(C)
    pending = add(C, found=D)  # drift found once, the verdict held back by hysteresis
    drifted = add(D)
    recovered = add(C)  # drifted → not drifted
    quiet = [add(C) for _ in range(3)]
    assert report.prune(settings, engine) == 2  # routine and quiet[0]; quiet[1:] are the newest 2
    with session_scope(engine) as session:
        kept = {r.id: r.report_path is not None for r in session.query(DriftCheck)}
        gone = session.get(DriftCheck, routine)
        assert gone.signals["_report"]["dropped"] and gone.signals["_verdict"]  # the row keeps its numbers
    assert kept == {first: True, routine: False, pending: True, drifted: True, recovered: True,
                    quiet[0]: False, quiet[1]: True, quiet[2]: True}
    assert sorted(p.name for p in settings.reports_dir.glob("*.html")) == sorted(
        Path(f"r{i - 1}.html").name for i, k in kept.items() if k)
    assert report.prune(settings, engine) == 0  # idempotent


def test_every_report_older_than_retention_goes_drifted_or_not(checks) -> None:  # type: ignore[no-untyped-def]
    settings, engine, add = checks
    old = add("drifted", days=settings.scheduler.retention_days + 1)
    new = add("drifted")
    assert report.prune(settings, engine) == 1
    with session_scope(engine) as session:
        assert session.get(DriftCheck, old).report_path is None
        assert session.get(DriftCheck, new).report_path is not None
