"""Run one drift check in its own process: ``python -m refitd.daemon.drift --settings FILE [--result-file F] [--nice N]``.

The daemon starts a check this way (see refitd.core.children), so the serving process neither holds
the check's pandas/Evidently memory nor competes with it for the GIL; the thread budget is in the
environment (``drift.threads``) and the settings (ONNX Runtime), the niceness in ``--nice``. The check
writes its own row, report and alert; the JSON summary (check id, verdict, seconds, peak memory) is
the last line on stdout and, with ``--result-file``, that file.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import threading

from refitd.core.children import child_parser, read_settings, write_result
from refitd.core.db import engine_for
from refitd.core.errors import RefitdError
from refitd.core.logs import configure_logging

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = child_parser("python -m refitd.daemon.drift", __doc__)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    try:
        settings = read_settings(args.settings)
        configure_logging(settings.log_level)
        from refitd.daemon.drift.check import run_check  # after the niceness and the log set-up

        row = run_check(settings, engine_for(settings))
        _wait_for_alerts(settings.drift.webhook_retries * (settings.drift.webhook_timeout_s + 5.0))
        result = {"check": row.id, "verdict": row.verdict, "reason": row.reason, "model_version": row.model_version,
                  "report": row.report_path, "seconds": row.duration_s,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        code = 0
    except RefitdError as exc:
        log.error("%s", exc)
        result, code = {"error": str(exc), "exit_code": exc.exit_code}, exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the parent records it as a failed check
        log.exception("drift check failed")
        result, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    print(write_result(args.result_file, result), flush=True)
    return code


def _wait_for_alerts(timeout_s: float) -> None:
    """A verdict change's webhook goes out on a background thread: let it finish (or give up) before exiting."""
    for thread in threading.enumerate():
        if thread.name == "webhook":
            thread.join(timeout_s)


if __name__ == "__main__":
    sys.exit(main())
