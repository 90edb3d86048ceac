"""Run a training flow in its own process: ``python -m flows init [--quick] …``.

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

from core.db import make_engine, upgrade
from core.errors import RefitdError
from core.logs import configure_logging
from core.settings import Settings

log = logging.getLogger("flows")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows", description=__doc__)
    p.add_argument("--config", type=Path, default=None, help="refitd.toml to read")
    p.add_argument("--home", type=Path, default=None, help="state directory")
    p.add_argument("--result-file", type=Path, default=None, help="write the JSON summary here too")
    sub = p.add_subparsers(dest="flow", required=True)
    init = sub.add_parser("init", help="train, evaluate and promote the first model")
    init.add_argument("--quick", action="store_true", help="a few hundred examples, one epoch")
    init.add_argument("--data", type=Path, default=None, help="CSV / JSONL / Parquet training data")
    init.add_argument("--base-model", type=Path, default=None, help="local Hugging Face model folder")
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
        configure_logging(settings.log_level)
        settings.home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
        # A fresh ephemeral Prefect server migrates its database first: slow on 2 cores.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        upgrade(make_engine(settings.database_url))
        from flows.init import init_model  # imported late: Prefect reads PREFECT_HOME at import

        result = init_model(settings, quick=args.quick)
    except RefitdError as exc:
        log.error("%s", exc)
        result = {"error": str(exc)}
        code = 2
    else:
        code = 0
    line = json.dumps(result, default=str)
    if args.result_file is not None:
        args.result_file.write_text(line)
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
