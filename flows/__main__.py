"""Run a training flow in its own process: ``python -m refitd.flows init [--quick] …``.

This is how the CLI and the daemon start training by name, without importing
torch or transformers themselves. The last line on stdout is a JSON summary;
``--result-file`` writes the same summary to a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from refitd.core.db import make_engine, upgrade
from refitd.core.errors import RefitdError
from refitd.core.logs import configure_logging
from refitd.core.settings import Settings

log = logging.getLogger("flows")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refitd.flows", description=__doc__)
    p.add_argument("--config", type=Path, default=None, help="refitd.toml to read")
    p.add_argument("--home", type=Path, default=None, help="state directory")
    p.add_argument("--result-file", type=Path, default=None, help="write the JSON summary here too")
    sub = p.add_subparsers(dest="flow", required=True)
    init = sub.add_parser("init", help="train, evaluate and promote the first model")
    init.add_argument("--data", type=Path, default=None, help="CSV / JSONL / Parquet training data")
    init.add_argument("--base-model", type=Path, default=None, help="local Hugging Face model folder")
    refit = sub.add_parser("refit", help="refit on new data; promote the candidate only if it is better")
    refit.add_argument("--from", dest="warm_start", choices=["champion", "base"], default=None)
    refit.add_argument("--hpo", dest="hpo_trials", type=int, default=None, help="Optuna trials (0 = none)")
    refit.add_argument("--sampler", choices=["grid", "random", "tpe"], default=None)
    refit.add_argument("--budget", type=float, default=None, help="search budget in minutes")
    refit.add_argument("--no-promote", action="store_true", help="evaluate and gate, but do not promote")
    refit.add_argument("--trigger", default="manual", help="what started this run (recorded)")
    refit.add_argument("--drill-shuffle-labels", action="store_true",
                       help="gate drill: train on shuffled labels; the gate must reject the result")
    for sp in (init, refit):
        sp.add_argument("--quick", action="store_true", help="a few hundred examples, short texts")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict = {}
    if args.home is not None:
        overrides["home"] = args.home
    try:
        settings = Settings.load(args.config, **overrides)
        if args.flow == "init":
            if args.data is not None:
                settings.training.data = args.data.expanduser().resolve()
            if args.base_model is not None:
                settings.model.base_model = args.base_model.expanduser().resolve()
        else:
            if args.sampler is not None:
                settings.hpo.sampler = args.sampler
            if args.budget is not None:
                settings.hpo.budget_minutes = args.budget
        configure_logging(settings.log_level)
        settings.home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
        # A fresh ephemeral Prefect server migrates its database first: slow on 2 cores.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        upgrade(make_engine(settings.database_url))
        from refitd.flows.refit import refit  # imported late: Prefect reads PREFECT_HOME at import

        if args.flow == "init":
            result = refit(settings, trigger="init", warm_start="base", quick=args.quick)
        else:
            result = refit(settings, trigger=args.trigger, warm_start=args.warm_start, quick=args.quick,
                           hpo_trials=args.hpo_trials, promote=not args.no_promote,
                           shuffle_labels=args.drill_shuffle_labels)
    except RefitdError as exc:
        log.error("%s", exc)
        result, code = {"error": str(exc)}, 2
    except Exception as exc:  # noqa: BLE001 - the run row and Prefect state hold the details
        log.exception("flow failed")
        result, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    else:
        code = 0
    line = json.dumps(result, default=str)
    if args.result_file is not None:
        args.result_file.write_text(line)
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
