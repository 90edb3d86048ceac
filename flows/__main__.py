"""Run a training flow in its own process: ``python -m refitd.flows --settings FILE init [--quick] …``.

This is how the CLI, the daemon, the demo and the benchmarks start training by name
(see refitd.core.children), without importing torch or transformers themselves. The last line on stdout is a JSON summary;
``--result-file`` writes the same summary to a file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from refitd.core.children import child_parser, read_settings, write_result
from refitd.core.db import engine_for, upgrade
from refitd.core.errors import RefitdError
from refitd.core.logs import configure_logging

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = child_parser("python -m refitd.flows", __doc__)
    sub = p.add_subparsers(dest="flow", required=True)
    init = sub.add_parser("init", help="train, evaluate and promote the first model")
    refit = sub.add_parser("refit", help="refit on new data; promote the candidate only if it is better")
    refit.add_argument("--from", dest="warm_start", choices=["champion", "base"], default=None)
    refit.add_argument("--hpo", dest="hpo_trials", type=int, default=None, help="Optuna trials (0 = none)")
    refit.add_argument("--no-promote", action="store_true", help="evaluate and gate, but do not promote")
    refit.add_argument("--trigger", default="manual", help="what started this run (recorded)")
    refit.add_argument("--drill-shuffle-labels", action="store_true",
                       help="gate drill: train on shuffled labels; the gate must reject the result")
    for sp in (init, refit):
        sp.add_argument("--quick", action="store_true", help="the quick profile: a few hundred examples, short texts")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nice:
        os.nice(args.nice)  # before any thread starts (no preexec_fn in the threaded parent)
    try:
        settings = read_settings(args.settings)
        configure_logging(settings.log_level)
        os.environ.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
        # A fresh ephemeral Prefect server migrates its database first: slow on 2 cores.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        upgrade(engine_for(settings))
        from refitd.flows.refit import refit  # imported late: Prefect reads PREFECT_HOME at import

        if args.flow == "init":
            result = refit(settings, trigger="init", warm_start="base", quick=args.quick)
        else:
            result = refit(settings, trigger=args.trigger, warm_start=args.warm_start, quick=args.quick,
                           hpo_trials=args.hpo_trials, promote=not args.no_promote,
                           shuffle_labels=args.drill_shuffle_labels)
    except RefitdError as exc:
        log.error("%s", exc)
        result, code = {"error": str(exc), "exit_code": exc.exit_code}, exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the run row and Prefect state hold the details
        log.exception("flow failed")
        result, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    else:
        code = 0
    print(write_result(args.result_file, result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
