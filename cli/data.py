"""``refitd data``: the reference dataset every refit starts from (core/reference.py)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from refitd.cli.terminal import console
from refitd.cli.terminal import settings_from as _settings

data_app = typer.Typer(help="The reference dataset (stored in the home at init).", no_args_is_help=True)


@data_app.command("show")
def data_show(ctx: typer.Context) -> None:
    """Source, digest, rows per label and split sizes of the reference every host refits from (the one published
    beside the models, which this home takes first; else this home's)."""
    from refitd.core import reference

    settings = _settings(ctx)
    stored = reference.sync(settings)
    if stored is None:
        console.print(f"no reference dataset stored in {settings.home} or published beside the models yet: "
                      "`refitd init [--data FILE]` stores one")
        raise typer.Exit(1)
    console.print(f"[bold]{stored.source}[/]: {stored.rows} rows, digest {stored.digest}")
    console.print(f"stored {stored.stored_at:%Y-%m-%d %H:%M} UTC by {stored.actor} ({stored.reason})")
    table = Table(title="rows")
    for name in ("label", "rows", "share"):
        table.add_column(name, justify="right" if name != "label" else "left")
    for label, n in stored.labels.items():
        table.add_row(label, str(n), f"{n / max(1, stored.rows):.1%}")
    console.print(table)
    console.print("splits: " + ", ".join(f"{k} {v}" for k, v in stored.splits.items()) + " (test is the frozen set)")


@data_app.command("publish")
def data_publish(ctx: typer.Context) -> None:
    """Publish this home's reference beside the models, where none is yet (a home stored before references were
    published): from then on every host refits from it."""
    from refitd.core import reference

    settings = _settings(ctx)
    stored = reference.publish_home(settings)
    console.print(f"published {stored.source}: {stored.rows} rows, digest {stored.digest[:12]}")


@data_app.command("replace")
def data_replace(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="CSV / TSV / JSONL / Parquet with the configured text and label columns.")],
    reason: Annotated[str, typer.Option(help="Why (recorded with the event).")],
    actor: Annotated[str | None, typer.Option(help="Who (default: the login name).")] = None,
    new_label_set: Annotated[bool, typer.Option(
        "--new-label-set", help="The file's labels differ from the champion's on purpose (a class added, renamed or "
        "dropped): the next refit trains the new set and the champion is scored on it, answering wrong where it "
        "has no such label.")] = False,
) -> None:
    """Replace the stored reference dataset; the next refit trains, and re-scores the champion, on it."""
    from refitd.core import reference, registry
    from refitd.core.db import engine_for, session_scope, upgrade
    from refitd.core.errors import ConfigError
    from refitd.core.reference_info import current as current_reference

    settings = _settings(ctx)
    path = path.expanduser().resolve()
    frame, source = reference.from_settings(settings.updated({"training": {"data": path}}))
    before = current_reference(settings)
    engine = engine_for(settings)
    upgrade(engine)
    with session_scope(engine) as session:
        champion = registry.get_champion(session)
    labels = sorted(frame["label"].unique().tolist())
    champion_labels = registry.served_labels(champion)
    changed = bool(champion_labels) and champion_labels != labels
    if changed and not new_label_set:
        raise ConfigError(f"{source} has labels {labels} but the champion {champion.version} answers "
                          f"{champion_labels}; if that is meant, add --new-label-set")
    who = actor or getpass.getuser()
    stored = reference.store(settings, frame, source=source, actor=who, reason=reason,
                             new_label_set_for=champion.version if changed else None)
    with session_scope(engine) as session:
        registry.record_event(session, kind="reference_replaced", subject=None, actor=who, reason=reason,
                              data={"source": source, "digest": stored.digest, "rows": stored.rows,
                                    "previous": before.digest if before else None,
                                    **({"labels": labels, "champion_labels": champion_labels} if changed else {})})
    console.print(f"reference replaced: {source}, {stored.rows} rows, digest {stored.digest[:12]} "
                  f"(was {before.digest[:12] if before else 'none'})")
