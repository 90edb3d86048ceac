"""A drift check's report, and which reports are kept.

The page opens with refitd's own account of the check — the verdict and its reason, the champion,
the window and the reference, and every signal (embedding and measured performance included) with
its score, p-value and threshold — in plain HTML that reads without JavaScript. Evidently's
per-signal sections follow. Evidently's page embeds its 3.5 MB JavaScript bundle and icon font in
every file; here they are written once per Evidently version into ``<home>/reports/js/`` and each
report names them by a relative path (Evidently's own "folder" save mode), and the copy of plotly's
default template that every figure carries (~7.5 KB each) is dropped. What is left is the check's own
data: the words and example texts that tell the window from the reference, and the aggregated
distributions. The same trimmed snapshot goes to the local Evidently workspace
(``evidently ui --workspace <home>/workspace``), without the copy of every widget that each metric
result carries (the UI draws a run from the snapshot's widgets).

Kept (:func:`prune`, after every check, in the check's process): the newest ``drift.keep_reports``
checks' reports, and beyond them those of checks that found drift (whether or not the verdict followed
yet) or changed the verdict, until ``scheduler.retention_days``; the rest lose their HTML and workspace
run and keep their row.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import Session, col

from refitd.core.db import session_scope
from refitd.core.settings import Settings
from refitd.core.tables import DriftCheck, utcnow

log = logging.getLogger(__name__)

LIB_DIR = "js"
FONT_FILE = "material-ui-icons.woff2"


def save(settings: Settings, row: DriftCheck, snapshot: Any) -> None:
    """Write the check's HTML report and its workspace run; record both on ``row`` (``report_path``, ``_report``)."""
    trimmed = trim(snapshot)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    path = settings.reports_dir / f"drift-{row.created_at:%Y%m%dT%H%M%S%f}.html"
    page = render(settings, row, trimmed, lib=ensure_lib(settings.reports_dir))
    path.write_text(page, encoding="utf-8")
    run = _add_to_workspace(settings, trimmed, name=f"{row.model_version} {row.verdict}")
    row.report_path = str(path)
    row.signals = {**row.signals, "_report": {"bytes": len(page.encode()), "workspace_run": run}}


# -- the page -----------------------------------------------------------------------------


def render(settings: Settings, row: DriftCheck, snapshot: Any, *, lib: str) -> str:
    """refitd's header, then Evidently's sections drawn by the shared library at ``lib`` (relative to the page)."""
    from evidently.legacy.model.dashboard import DashboardInfo
    from evidently.legacy.model.widget import AdditionalGraphInfo
    from evidently.legacy.renderers.html_widgets import group_widget
    from evidently.legacy.utils.dashboard import TemplateParams, file_html_template

    model = snapshot.to_snapshot_model()
    widgets = [group_widget(title="", widgets=model.widgets)] + model.tests_widgets  # as Snapshot.save_html draws them
    graphs = {g.id: (g.params if isinstance(g, AdditionalGraphInfo) else g.dict()) for w in widgets
              for g in w.get_additional_graphs()}
    dashboard = "metric_" + uuid.uuid4().hex
    page = file_html_template(TemplateParams(
        dashboard_id=dashboard, dashboard_info=DashboardInfo(name="Report", widgets=widgets), additional_graphs=graphs,
        embed_lib=False, embed_font=False, font_file=f"{LIB_DIR}/{FONT_FILE}", include_js_files=[lib]))
    head, body = page.split("<body>", 1)
    title = f"<title>refitd drift check: {html.escape(row.verdict.replace('_', ' '))} ({row.created_at:%Y-%m-%d %H:%M} UTC)</title>"
    return head.replace("</head>", title + "\n</head>", 1) + "<body>\n" + header(settings, row) + body


_STYLE = """<style>
.refitd{font:14px/1.45 system-ui,sans-serif;margin:16px 24px;color:#222}
.refitd h1{font-size:22px;margin:0 0 6px}.refitd h2{font-size:16px;margin:18px 0 6px}
.refitd table{border-collapse:collapse}.refitd td,.refitd th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
.refitd td.n{text-align:right;font-variant-numeric:tabular-nums}
.refitd .drifted{color:#b00020;font-weight:600}.refitd .not_drifted{color:#1b5e20;font-weight:600}
.refitd .insufficient_data{color:#8a6d00;font-weight:600}.refitd .note{color:#555}
</style>"""


def header(settings: Settings, row: DriftCheck) -> str:
    """The operator's summary: verdict, reason, champion, window, reference, calibration, every signal."""
    s = row.signals
    held, calib, ref, perf = (s.get(k) or {} for k in ("_verdict", "_calibration", "_reference", "_performance"))
    facts = [
        ("champion", row.model_version or "-"),
        ("checked at", f"{row.created_at:%Y-%m-%d %H:%M:%S} UTC"),
        ("window", f"{row.window_size} predictions, {_time(row.window_start)} … {_time(row.window_end)}"),
        ("reference", f"{ref.get('rows', f'up to {settings.drift.reference_size}')} rows"
                      + (f" — {ref['source']}" if ref.get("source") else "")),
    ]
    if held:
        facts.append(("this check found", f"{held.get('found', '-').replace('_', ' ')} ({held.get('in_a_row', '-')} in "
                                          f"a row; drift.consecutive = {held.get('needs', '-')})"))
    if calib:
        facts.append(("calibration", f"{calib['false_alarm_rate'] * 100:g}% false alarms per check over "
                                     f"{calib['signals']} signals: each drifts at p ≤ {calib['cutoff']:.2g} "
                                     f"(null of {calib['draws']} splits, {calib['null_window']} vs "
                                     f"{calib['null_reference']} rows)"))
    else:
        facts.append(("rule", "fixed thresholds (drift.calibrated = false or per-signal overrides)"))
    if perf:
        facts.append(("accuracy", _performance(perf)))
    rows = _signal_rows(settings, row)
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    return f"""{_STYLE}
<div class="refitd">
<h1>Drift check: <span class="{_e(row.verdict)}">{_e(row.verdict.replace('_', ' '))}</span></h1>
<p>{_e(row.reason)}</p>
<table>{table}</table>
<h2>Signals</h2>
<table><tr><th>signal</th><th>method</th><th>score</th><th>p-value</th><th>threshold</th><th>threshold from</th>
<th>drifted</th><th>Evidently's score</th></tr>{rows}</table>
<p class="note">A calibrated signal drifts when its p-value (its score's rank in the reference-vs-reference null)
is at or under the cutoff — its threshold is the score at that point; a fixed one when its score passes the
configured threshold. Below, Evidently's section for each of text, label, confidence, length, out-of-vocabulary
and non-letter share (words and examples that tell the window from the reference; distributions). The embedding
and measured-performance signals are the rows above. `refitd drift show` prints the same numbers.</p>
</div>
"""


def _signal_rows(settings: Settings, row: DriftCheck) -> str:
    """One table row per signal: method, score, p-value, threshold and where it came from, drifted or not."""
    perf = row.signals.get("_performance") or {}
    signals = [v for k, v in row.signals.items() if not k.startswith("_")]
    rows = "".join(
        f"<tr><td>{_e(g['name'])}</td><td>{_e(g['method'])}</td><td class=n>{_num(g['score'])}</td>"
        f"<td class=n>{_num(g.get('p_value'))}</td><td class=n>{_num(g['threshold'])}</td>"
        f"<td>{'calibrated' if g.get('calibrated') else 'fixed'}</td>"
        f"<td class='{'drifted' if g['drifted'] else 'not_drifted'}'>{'drifted' if g['drifted'] else 'no'}</td>"
        f"<td class=n>{_num(g.get('evidently_score'))}</td></tr>" for g in signals)
    if "performance" not in row.signals and row.verdict != "insufficient_data":
        rows += (f"<tr><td>performance</td><td>accuracy drop</td><td class=n>-</td><td class=n>-</td>"
                 f"<td class=n>{settings.drift.performance_drop:g}</td><td>fixed</td><td colspan=2>not measured: "
                 f"{perf.get('labelled', 0)} labelled rows, needs {settings.drift.min_labels}</td></tr>")
    return rows


def _performance(perf: dict[str, Any]) -> str:
    est = perf.get("estimated_accuracy")
    how = f" ({perf['estimate_method']})" if perf.get("estimate_method") else ""
    text = f"{perf.get('labelled', 0)} labelled rows; label-free estimate {_num(est)}{how}"
    if perf.get("measured_accuracy") is not None:
        text += (f"; measured {_num(perf['measured_accuracy'])} vs the champion's "
                 f"{perf.get('champion_test_set', 'frozen')} test {_num(perf.get('champion_test_accuracy'))}; "
                 f"estimate error {_num(perf.get('estimate_error'))}")
    return text


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _time(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _e(value: Any) -> str:
    return html.escape(str(value))


def ensure_lib(reports: Path) -> str:
    """Evidently's JavaScript and icon font beside the reports, once per version; the script's relative path."""
    import evidently
    from evidently.legacy.utils.dashboard import STATIC_PATH

    lib = f"{LIB_DIR}/evidently.{evidently.__version__}.js"
    for source, name in ((Path(STATIC_PATH) / "index.js", lib), (Path(STATIC_PATH) / FONT_FILE, f"{LIB_DIR}/{FONT_FILE}")):
        target = reports / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            shutil.copyfile(source, partial)
            os.replace(partial, target)  # two checks at once: both copies are whole
    return lib


def trim(snapshot: Any) -> Any:
    """The snapshot without what an operator never reads: plotly's default template in every figure and the
    copy of each widget that its metric result carries beside the snapshot's own list."""
    from evidently.core.report import Snapshot

    data = json.loads(snapshot.dumps())
    for result in data["metric_results"].values():
        result["widget"] = None
    _drop_templates(data["widgets"])
    _drop_templates(data["tests_widgets"])
    return Snapshot.load_dict(data)


def _drop_templates(node: Any) -> None:
    if isinstance(node, dict):
        layout = node.get("layout")
        if isinstance(layout, dict):
            layout.pop("template", None)
        for value in node.values():
            _drop_templates(value)
    elif isinstance(node, list):
        for value in node:
            _drop_templates(value)


# -- the workspace --------------------------------------------------------------------------


def workspace_project(settings: Settings):  # type: ignore[no-untyped-def]
    """The local Evidently workspace under the state dir and this model's project in it."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(settings.home / "workspace"))
    name = f"refitd {settings.model.name}"
    found = workspace.search_project(name)
    project = found[0] if found else workspace.create_project(name, description="refitd drift checks")
    return workspace, project


def _add_to_workspace(settings: Settings, snapshot: Any, *, name: str) -> str | None:
    """Keep the history for `evidently ui --workspace <home>/workspace`; the run's id, or None when it failed."""
    try:
        workspace, project = workspace_project(settings)
        return str(workspace.add_run(project.id, snapshot, name=name).id)
    except Exception:  # noqa: BLE001 - the HTML report and the row are already written
        log.exception("could not add the drift snapshot to the Evidently workspace")
        return None


# -- what is kept ----------------------------------------------------------------------------


def prune(settings: Settings, engine: Engine) -> int:
    """After a check: drop the reports of checks older than ``scheduler.retention_days``, then apply
    ``drift.keep_reports`` — beyond the newest N reports, keep those of checks that found drift or changed
    the verdict. A dropped report loses its HTML and workspace run; its row stays. Returns how many went."""
    keep = settings.drift.keep_reports
    cutoff = utcnow() - timedelta(days=settings.scheduler.retention_days)
    has_report = col(DriftCheck.report_path).is_not(None)
    with session_scope(engine) as session:
        dropped = list(session.scalars(select(DriftCheck).where(has_report, col(DriftCheck.created_at) < cutoff)))
        edge = session.scalars(select(DriftCheck.id).where(has_report).order_by(col(DriftCheck.id).desc())
                               .offset(keep - 1).limit(1)).first()
        if edge is not None:
            older = session.scalars(select(DriftCheck).where(has_report, col(DriftCheck.id) < edge,
                                                             col(DriftCheck.created_at) >= cutoff,
                                                             DriftCheck.verdict != "drifted"))
            dropped += [row for row in older if not _worth_keeping(session, row)]
        for row in dropped:
            _drop(settings, row)
    if dropped:
        log.info("drift reports: dropped %d (older than %s, or beyond the newest %d without drift or a verdict "
                 "change); their rows stay", len(dropped), cutoff, keep)
    return len(dropped)


def _worth_keeping(session: Session, row: DriftCheck) -> bool:
    """Found drift (held or not), or the verdict differs from the check before it (the first check counts)."""
    if row.verdict == "drifted" or (row.signals.get("_verdict") or {}).get("found") == "drifted":
        return True
    before = session.scalars(select(DriftCheck.verdict).where(col(DriftCheck.id) < row.id,
                                                              DriftCheck.verdict != "insufficient_data")
                             .order_by(col(DriftCheck.id).desc()).limit(1)).first()
    return before != row.verdict


def _drop(settings: Settings, row: DriftCheck) -> None:
    """Delete one check's HTML and workspace run; its row keeps every number and says the report went."""
    Path(row.report_path).unlink(missing_ok=True)  # type: ignore[arg-type]
    run = (row.signals.get("_report") or {}).get("workspace_run")
    if run:
        try:
            workspace, project = workspace_project(settings)
            workspace.delete_run(project.id, run)
        except Exception:  # noqa: BLE001 - a leftover snapshot costs disk, not correctness
            log.exception("could not delete workspace run %s of drift check %s", run, row.id)
    row.report_path = None
    row.signals = {**row.signals, "_report": {**(row.signals.get("_report") or {}), "dropped": True}}
