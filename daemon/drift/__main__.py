"""Run drift checks in their own process: ``python -m refitd.daemon.drift --settings FILE [--result-file F]
[--nice N] [--serve]``.

The daemon starts checks this way (see refitd.core.children), so the serving process neither holds
the check's pandas/Evidently memory nor competes with it for the GIL; the thread budget is in the
environment (``drift.threads``) and the settings (ONNX Runtime), the niceness in ``--nice``. A check
writes its own row, report and alert. Alone, the process runs one check: its JSON summary (check id,
verdict, seconds, peak memory) is the last line on stdout and, with ``--result-file``, that file. With
``--serve`` it imports what a check needs once and runs a check for each line it reads on stdin,
answering each with its summary line on stdout (log lines and stray prints go to stderr), until stdin
closes: the daemon closed it, or died.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import resource
import sys
from typing import Any

from refitd.core.children import child_parser, read_settings, write_result
from refitd.core.db import engine_for
from refitd.core.errors import RefitdError
from refitd.core.logs import configure_logging
from refitd.core.settings import Settings

log = logging.getLogger(__name__)

# What a check imports on first use (signals, report, workspace): a serving check process imports it up front.
WARM_MODULES = ("refitd.daemon.drift.check", "evidently", "evidently.metrics", "evidently.core.report",
                "evidently.legacy.metrics.data_drift.embedding_drift_methods", "evidently.legacy.model.dashboard",
                "evidently.legacy.renderers.html_widgets", "evidently.legacy.utils.dashboard",
                "evidently.ui.workspace")


def _parser() -> argparse.ArgumentParser:
    p = child_parser("python -m refitd.daemon.drift", __doc__)
    p.add_argument("--serve", action="store_true",
                   help="run a check per line read on stdin, a summary line each on stdout, until stdin closes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    if args.serve:
        answers = os.fdopen(os.dup(1), "w", buffering=1)  # the summaries' own channel
        os.dup2(2, 1)  # whatever else prints goes to stderr, never into an answer
        args.result_file = None  # answers go down the pipe
    try:
        settings = read_settings(args.settings)
        configure_logging(settings.log_level)
        engine = engine_for(settings)  # a bad database URL is reported like any failed start
        for name in WARM_MODULES if args.serve else ():
            importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - the parent records it as a failed check
        code = exc.exit_code if isinstance(exc, RefitdError) else 1
        error = str(exc) if isinstance(exc, RefitdError) else f"{type(exc).__name__}: {exc}"
        line = write_result(args.result_file, {"error": error, "exit_code": code})
        (answers.write(line + "\n") if args.serve else print(line, flush=True))
        return code
    if not args.serve:
        result, code = check_once(settings, engine)
        print(write_result(args.result_file, result), flush=True)
        return code
    done = 0
    for _ in sys.stdin:  # one request a line; EOF ends the process
        result, code = check_once(settings, engine)
        done += 1
        answers.write(json.dumps(result | {"exit_code": code, "pid": os.getpid(), "checks_run": done},
                                 default=str) + "\n")
        gc.collect()  # a check's frames go before the process waits for the next one
    return 0


def check_once(settings: Settings, engine: Any) -> tuple[dict[str, Any], int]:
    """One check: its summary and exit code (0, a RefitdError's code, or 1 for anything else)."""
    try:
        from refitd.daemon.alerts import wait_for_senders
        from refitd.daemon.drift.check import run_check  # after the niceness and the log set-up

        row = run_check(settings, engine)
        wait_for_senders(settings)
        return {"check": row.id, "verdict": row.verdict, "reason": row.reason, "model_version": row.model_version,
                "report": row.report_path, "seconds": row.duration_s,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}, 0
    except RefitdError as exc:
        log.error("%s", exc)
        return {"error": str(exc), "exit_code": exc.exit_code}, exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the parent records it as a failed check
        log.exception("drift check failed")
        return {"error": f"{type(exc).__name__}: {exc}"}, 1


if __name__ == "__main__":
    sys.exit(main())
