"""The ``refitd`` command line.

Each command is its own composition root: it builds Settings once from
``--config`` / ``--home`` / env / TOML and passes them down. Training runs in
a child process (``python -m refitd.flows …``): this process never imports torch.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from refitd.core.credentials import redact_url
from refitd.core.errors import RefitdError
from refitd.core.settings import Settings
from refitd.cli.data import data_app
from refitd.cli.drift import drift_app
from refitd.cli.models import models_app
from refitd.cli.terminal import METRICS, console, err
from refitd.cli.terminal import fmt as _fmt
from refitd.cli.terminal import settings_from as _settings

app = typer.Typer(help="refitd: serve a fine-tuned classifier, watch it drift, refit and promote.", no_args_is_help=True)
db_app = typer.Typer(help="The SQL store.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(drift_app, name="drift")
app.add_typer(data_app, name="data")
feedback_app = typer.Typer(help="Ground-truth labels.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")

log = logging.getLogger("refitd")

HostOption = Annotated[str | None, typer.Option("--host", help="Address to bind (default serving.host, 127.0.0.1).")]
PortOption = Annotated[int | None, typer.Option("--port", help="Port (default serving.port).")]


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="refitd.toml to read (default: $REFITD_CONFIG, <home>/refitd.toml).")] = None,
    home: Annotated[Path | None, typer.Option(help="State directory (default: $REFITD_HOME, $STATE_DIRECTORY, ~/.local/share/refitd).")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    ctx.obj = {"config": config, "home": home, "log_level": log_level}


# db ---------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply database migrations up to the newest schema."""
    from refitd.core.db import engine_for, upgrade

    settings = _settings(ctx)
    revision = upgrade(engine_for(settings))
    console.print(f"database at revision [bold]{revision}[/] ({redact_url(settings.database_url)})")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Show the schema revision the database is at."""
    from refitd.core.db import current_revision, head_revision, engine_for

    settings = _settings(ctx)
    current = current_revision(engine_for(settings))
    console.print(f"current {current or '(empty)'}; newest {head_revision()}")


# init -------------------------------------------------------------------------------------


@app.command()
def init(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="CSV / JSONL / Parquet file of labelled texts.")] = None,
    base_model: Annotated[Path | None, typer.Option(help="Local Hugging Face model folder to fine-tune.")] = None,
    quick: Annotated[bool, typer.Option(help="Train a few hundred examples (about a minute).")] = False,
    force: Annotated[bool, typer.Option(help="Train a first model even if a champion exists.")] = False,
) -> None:
    """Create the state directory and database, fine-tune v1, evaluate it and promote it."""
    from refitd.core import registry
    from refitd.core.db import engine_for, session_scope, upgrade

    settings = _settings(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = engine_for(settings)
    upgrade(engine)
    with session_scope(engine) as session:
        champion = registry.get_champion(session)
    if champion is not None and not force:
        console.print(f"already initialised: {champion.version} is the champion in {settings.home} "
                      "(`refitd refit` trains a new candidate; `--force` trains a first model again)")
        return
    changes: dict[str, Any] = {}
    if data is not None:
        changes["training"] = {"data": data.expanduser().resolve()}
    if base_model is not None:
        changes["model"] = {"base_model": base_model.expanduser().resolve()}
    settings = settings.updated(changes)
    if data is not None:  # the reference dataset is state: stored now, read by every refit after
        from refitd.core import reference

        frame, source = reference.from_settings(settings)
        # a trained home's reference: this home's, or the one published beside the models by another host
        stored = reference.sync(settings) if champion is not None else None
        if stored is not None:
            reference.check_same(settings, frame, source)  # a trained home changes its data only by `data replace`
        else:  # a trained home's same data is already stored, as `data replace` left it (--new-label-set kept)
            reference.store(settings, frame, source=source, actor=getpass.getuser(), reason="refitd init --data")
    result = run_flow(settings, ["init"] + (["--quick"] if quick else []), trigger="init")
    print_result(result)
    if not result.get("promoted"):
        raise typer.Exit(1)


def run_flow(settings: Settings, args: list[str], *, trigger: str) -> dict[str, Any]:
    """Run a flow child (refitd.core.children) with these settings, holding the ``refit`` lease as the daemon's
    refits do (one at a time, whoever starts it: a daemon's trigger waits, a second `refitd refit` is refused
    with the holder's name and exit code 75); return its JSON summary.

    The child's log (Prefect's run logs, tracebacks) goes to ``<home>/flows.log``; an expected
    refusal reaches the terminal as its one-line reason.
    """
    from refitd.core import children, leases
    from refitd.core.db import engine_for, session_scope
    from refitd.core.errors import RefitStillRunningError
    from refitd.core.runs import orphan_here

    log_file = settings.home / "flows.log"
    with leases.held(engine_for(settings), leases.REFIT, holder=f"{leases.holder_name()}:cli",
                     ttl_s=settings.refit.lease_s, data={"trigger": trigger}) as lost:
        with session_scope(engine_for(settings)) as session:  # the lease is ours: a refit running here is nobody's
            orphan = orphan_here(session)
        if orphan is not None:
            raise RefitStillRunningError(orphan)
        console.print(f"[dim]running flow: {' '.join(args)} (log: {log_file})[/]")
        code, result = children.run(settings, args, log_file=log_file)
    if lost.is_set():
        err.print("[yellow]the refit lease was lost while the flow ran (the store did not answer its renewals); "
                  "another refit may have started beside it[/]")
    if not result:
        err.print(f"[red]the flow process exited with code {code} before reporting a result; see {log_file}[/]")
        raise typer.Exit(2)
    if "error" in result:
        err.print(f"[red]{result['error']}[/]")
        raise typer.Exit(int(result.get("exit_code") or 2))
    return result


def print_result(result: dict[str, Any]) -> None:
    """Before/after tables on the frozen and recent test sets, then the gate's verdict."""
    m, version = result["metrics"], result["version"]
    cand, champ = m["candidate"], m.get("champion")
    for set_name in ("frozen", "recent"):
        report = cand.get(set_name) or {}
        if not report.get("n"):
            continue
        table = Table(title=f"{version} on the {set_name} test set (n={report['n']})")
        columns: list[tuple[str, dict]] = []
        if set_name == "frozen":
            columns.append(("majority baseline", cand["baseline"]))
            if m.get("before"):
                columns.append(("base model, fresh head", m["before"]))
        if champ and (champ.get(set_name) or {}).get("n"):
            columns.append((f"champion {result.get('parent')}", champ[set_name]))
        columns += [(f"{version} fp32", report), (f"{version} int8", cand.get(f"{set_name}_int8") or {})]
        table.add_column("metric")
        for name, _ in columns:
            table.add_column(name, justify="right")
        for metric in METRICS:
            table.add_row(metric, *[_fmt(col.get(metric)) for _, col in columns])
        console.print(table)
    colour = "green" if result["promoted"] else "yellow" if result["verdict"] in ("held", "shadow") else "red"
    console.print(f"[{colour}]{version} {result['reason']}[/]")
    console.print(f"[dim]{result['int8']}; timings {result['timings']} s[/]")
    if m.get("hpo"):
        h = m["hpo"]
        console.print(f"[dim]search ({h['sampler']}, {len(h['trials'])} trials, {h['pruned']} pruned, "
                      f"{h['seconds']:.0f} s): best macro-F1 {h['best_value']:.3f} with {h['best_params']}[/]")


@app.command()
def refit(
    ctx: typer.Context,
    from_: Annotated[str, typer.Option("--from", help="Warm start: champion or base.")] = "champion",
    hpo: Annotated[int | None, typer.Option(help="Optuna trials (default hpo.trials; 0 = no search).")] = None,
    sampler: Annotated[str | None, typer.Option(help="grid, random, tpe or evolutionary.")] = None,
    budget: Annotated[float | None, typer.Option(help="Search budget in minutes.")] = None,
    no_promote: Annotated[bool, typer.Option("--no-promote", help="Evaluate and gate, but do not promote.")] = False,
    quick: Annotated[bool, typer.Option(help="A few hundred examples, short texts.")] = False,
    drill_shuffle_labels: Annotated[bool, typer.Option(help="Gate drill: train on shuffled labels; must be rejected.")] = False,
    ensemble: Annotated[int | None, typer.Option(help="Bagging: K members (default training.ensemble; 1 = one model).")] = None,
) -> None:
    """Refit now on the reference data plus new labels; promote only if the gate says it is better."""
    from refitd.core.db import engine_for, upgrade

    if from_ not in ("champion", "base"):
        raise typer.BadParameter("--from must be champion or base")
    settings = _settings(ctx)
    upgrade(engine_for(settings))
    search = {k: v for k, v in (("sampler", sampler), ("budget_minutes", budget)) if v is not None}
    args = ["refit", "--from", from_] + (["--hpo", str(hpo)] if hpo is not None else [])
    args += ["--no-promote"] * no_promote + ["--quick"] * quick + ["--drill-shuffle-labels"] * drill_shuffle_labels
    bagging = {"training": {"ensemble": ensemble}} if ensemble is not None else {}
    result = run_flow(settings.updated({"hpo": search, **bagging}), args, trigger="manual")
    print_result(result)
    if result["verdict"] == "rejected" and not drill_shuffle_labels:
        raise typer.Exit(1)


@feedback_app.command("import")
def feedback_import(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="CSV / JSONL / Parquet with text and label columns.")],
    source: Annotated[str, typer.Option(help="Recorded as the labels' source.")] = "import",
) -> None:
    """Add labelled texts in bulk (e.g. a labelling team's export); the next refit trains on them."""
    from refitd.core.datasets import load_table
    from refitd.core.db import db_now, engine_for, session_scope, upgrade
    from refitd.core.reference_info import current as current_reference
    from refitd.core.tables import Feedback

    settings = _settings(ctx)
    t = settings.training
    stored = current_reference(settings)  # labels outside the model's label set are refused here, naming the row
    frame = load_table(path, text_column=t.text_column, label_column=t.label_column,
                       labels=sorted(stored.labels) if stored is not None else None)
    engine = engine_for(settings)
    upgrade(engine)
    with session_scope(engine) as session:
        now = db_now(session)  # labels' times are the database's: every host counts them against one clock
        session.add_all(Feedback(text=text, label=label, source=source, created_at=now)
                        for text, label in zip(frame["text"], frame["label"], strict=True))
    console.print(f"imported {len(frame)} labelled texts from {path} ({frame['label'].value_counts().to_dict()})")


# serve / predict --------------------------------------------------------------------------


@app.command()
def serve(
    ctx: typer.Context,
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Serve the champion over HTTP (JSON API and Open Inference Protocol V2)."""
    from refitd.serving.server import serve as run_server

    run_server(_settings(ctx), host=host, port=port)


@app.command()
def predict(
    ctx: typer.Context,
    texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
    url: Annotated[str | None, typer.Option(help="Server URL (default: http://serving.host:serving.port).")] = None,
) -> None:
    """Classify texts: through the server when one is up, else with the champion loaded here."""
    import httpx

    settings = _settings(ctx)
    base = url or f"http://{settings.serving.host}:{settings.serving.port}"
    try:
        response = httpx.post(f"{base}/v1/predict", json={"texts": texts}, timeout=30)
        if response.status_code != 200:
            err.print(f"[red]{response.status_code}: {response.json().get('error', response.text)}[/]")
            raise typer.Exit(1)
        predictions, where = response.json()["predictions"], f"server {base}"
    except httpx.TransportError:
        predictions, where = _predict_locally(settings, texts), "champion loaded locally (not logged)"
    table = Table(title=f"answered by {where}")
    for col in ("text", "label", "confidence", "version", "prediction id"):
        table.add_column(col)
    for text, p in zip(texts, predictions, strict=True):
        table.add_row(text[:60], p["label"], f"{max(p['scores'].values()):.3f}", p["model_version"], p.get("prediction_id") or "-")
    console.print(table)


def _predict_locally(settings: Settings, texts: list[str]) -> list[dict[str, Any]]:
    from refitd.core import registry
    from refitd.core.artifacts import ArtifactStore
    from refitd.core.db import engine_for, session_scope
    from refitd.core.errors import NoChampionError
    from refitd.serving.runtime import OnnxClassifier

    with session_scope(engine_for(settings)) as session:
        champion = registry.get_champion(session)
    if champion is None:
        raise NoChampionError()
    runtime = OnnxClassifier(champion.version, ArtifactStore.from_settings(settings).verify(champion.version), provider=settings.serving.provider)
    runtime.load()
    batch = runtime.predict(texts)
    return [
        {"label": lbl, "scores": dict(zip(runtime.labels, map(float, s), strict=True)), "model_version": champion.version, "prediction_id": None}
        for lbl, s in zip(batch.labels, batch.scores, strict=True)
    ]


# models / status --------------------------------------------------------------------------


@app.command()
def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """One screen for ops: champion, served version and health, drift, schedule, refit, events."""
    from refitd.daemon.status import gather_status, render_status

    info = gather_status(_settings(ctx))
    if as_json:
        console.print_json(json.dumps(info, default=str))
    else:
        render_status(info, console)


# run --------------------------------------------------------------------------------------


@app.command()
def run(
    ctx: typer.Context,
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Run the service: serve, check drift on schedule, refit when the policy says so, watch promotions."""
    from refitd.daemon.service import Daemon

    settings = _settings(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    raise typer.Exit(Daemon(settings, host=host, port=port).run())


# demo -------------------------------------------------------------------------------------


@app.command()
def demo(
    ctx: typer.Context,
    quick: Annotated[bool, typer.Option(help="A smaller, faster loop (about 10 minutes on two cores).")] = False,
    home: Annotated[Path | None, typer.Option(help="State directory for the demo (default: a fresh temporary one).")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the whole temporary state directory (database, models).")] = False,
) -> None:
    """The whole loop on the embedded default: v1, a topic shift, drift, refit, promotion, recovery."""
    from refitd.core.logs import configure_logging
    from refitd.demo.run import run_demo

    obj = ctx.find_root().obj or {}
    configure_logging(obj.get("log_level") or "WARNING")
    run_demo(home=home or obj.get("home"), quick=quick, keep=keep, console=console)


def main() -> None:
    try:
        app()
    except RefitdError as exc:  # an expected refusal: its one line, and its exit code
        log.debug("refused", exc_info=True)
        err.print(f"[red]{exc}[/]")
        sys.exit(exc.exit_code)
