"""``python -m refitd.bench store``: the prediction log at size, SQLite and PostgreSQL, in one run.

Logs ``--rows`` predictions (corpus texts, default settings: no stored embedding, rounded scores)
through the real prediction log — rows built by the data plane's ``log_rows``, made durable in spool
segments, bulk-inserted by the writer thread — into a fresh SQLite file and a fresh PostgreSQL
database, spread over ``--days`` days. For each it reports rows/s sustained, bytes per prediction,
the database size, the time to read the drift check's window (last 1,000 and 10,000 rows, what the
check queries), the time to re-embed a 1,000-row window with the champion (``--home``), and the
time retention takes to prune one day's rows. The same figures for a ``--small`` table come first,
and the large table's are printed as ratios against them.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from refitd.bench.report import save
from refitd.core.datasets import load_bundled_corpus
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.labels import predictions_with_labels
from refitd.core.retention import prune_predictions
from refitd.core.settings import Settings
from refitd.core.tables import utcnow
from refitd.serving.batcher import Answer
from refitd.serving.predlog import PredictionLog, log_rows

LABELS = ["negative", "neutral", "positive"]
REQUEST_TEXTS = 8  # texts per logged request


def _answers(texts: list[str], rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Model-shaped answers (scores, labels, embeddings) for requests of REQUEST_TEXTS texts."""
    runtime = SimpleNamespace(version="v7", labels=LABELS)
    for i in range(0, len(texts), REQUEST_TEXTS):
        chunk = texts[i : i + REQUEST_TEXTS]
        scores = rng.dirichlet([2.0, 1.0, 2.0], size=len(chunk)).astype(np.float32)
        embeddings = rng.normal(size=(len(chunk), 384)).astype(np.float32)
        yield chunk, Answer(runtime, [LABELS[j] for j in scores.argmax(1)], scores, embeddings, 4.2)  # type: ignore[arg-type]


def fill(engine: Any, spool: Path, texts: list[str], *, rows: int, days: float, share: float) -> float:
    """Log ``rows`` predictions spread over ``days`` days; return rows/s including the final flush."""
    log = PredictionLog(engine, spool)
    log.start()
    rng, pick = np.random.default_rng(0), random.Random(0)
    start_at, step = utcnow() - timedelta(days=days), timedelta(days=days) / rows
    stream = (texts * (rows // len(texts) + 1))[:rows]
    started, n = time.perf_counter(), 0
    for chunk, answer in _answers(stream, rng):
        batch = log_rows(chunk, answer, embedding_share=share, rng=pick)
        for row in batch:
            row["created_at"] = start_at + step * n
            n += 1
        log.add(batch)
    log.close()
    if log.rejected or log.spooled:
        raise RuntimeError(f"{log.rejected} rows rejected, {log.spooled} spooled: the figures would be wrong")
    return rows / (time.perf_counter() - started)


def size_bytes(engine: Any, url: str) -> int:
    if url.startswith("sqlite"):
        path = make_url(url).database
        engine.dispose()
        raw = sqlite3.connect(path)
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw.execute("VACUUM")
        raw.close()
        return Path(path).stat().st_size
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE predictions")
        return int(conn.execute(text("SELECT pg_total_relation_size('predictions')")).scalar())


def window_seconds(engine: Any, size: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with session_scope(engine) as session:
            frame = predictions_with_labels(session, unlabelled=True, latest=size)
        times.append(time.perf_counter() - start)
        assert len(frame) == size, (len(frame), size)
    return float(np.median(times))


def measure(url: str, spool: Path, texts: list[str], *, rows: int, days: float, share: float) -> dict[str, Any]:
    engine = make_engine(url)
    upgrade(engine)
    rate = fill(engine, spool, texts, rows=rows, days=days, share=share)
    size = size_bytes(engine, url)
    engine = make_engine(url)
    out: dict[str, Any] = {"rows": rows, "rows_per_s": round(rate), "bytes_per_prediction": round(size / rows, 1),
                           "database_mb": round(size / 2**20, 1)}
    for window in (1_000, 10_000):
        if window <= rows:
            out[f"window_{window}_ms"] = round(window_seconds(engine, window) * 1000, 1)
    start = time.perf_counter()
    pruned = prune_predictions(engine, utcnow() - timedelta(days=days - 1))  # the oldest day's rows
    out |= {"retention_rows": pruned, "retention_s": round(time.perf_counter() - start, 3)}
    engine.dispose()
    return out


def reembed_seconds(home: Path, texts: list[str]) -> float | None:
    """Seconds to embed a 1,000-text window with the home's champion (what a check does for unstored embeddings)."""
    from refitd.core import registry
    from refitd.core.artifacts import ArtifactStore
    from refitd.core.db import engine_for
    from refitd.serving.runtime import OnnxClassifier

    settings = Settings.load(home=home)
    with session_scope(engine_for(settings)) as session:
        champion = registry.get_champion(session)
    if champion is None:
        return None
    runtime = OnnxClassifier(champion.version, ArtifactStore.from_settings(settings).verify(champion.version),
                             provider="cpu", threads=settings.serving.threads)
    runtime.load()
    start = time.perf_counter()
    for i in range(0, 1000, 64):
        runtime.predict(texts[i : min(i + 64, 1000)])
    return time.perf_counter() - start


def _postgres_database(server_url: str):  # type: ignore[no-untyped-def]
    name = f"refitd_bench_store_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop


def ratios(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for backend, r in result["backends"].items():
        rows.append((f"{backend} bytes per prediction", f"{r['large']['bytes_per_prediction']:.0f}", "≤ 400"))
        for key, name in (("rows_per_s", "rows/s"), ("window_1000_ms", "1k window read"),
                          ("window_10000_ms", "10k window read")):
            if key in r["ratios"]:  # a small run has no 10k window
                rows.append((f"{backend} {name} large / small", f"{r['ratios'][key]:.2f}", "≈ 1"))
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench store", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="predictions in the large table")
    p.add_argument("--small", type=int, default=10_000, help="predictions in the small table (the baseline)")
    p.add_argument("--days", type=float, default=30.0, help="days the rows are spread over (retention prunes one)")
    p.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                   help="a PostgreSQL server URL to create the bench database on; 'none' to skip")
    p.add_argument("--embedding-share", type=float, default=Settings().serving.log_embedding_share,
                   help="share of rows that keep their embedding (default: the setting's default)")
    p.add_argument("--home", type=Path, help="a state dir with a champion, to time re-embedding a 1,000-row window")
    args = p.parse_args(argv)
    texts = load_bundled_corpus()["text"].tolist()
    result: dict[str, Any] = {"rows": args.rows, "small": args.small, "days": args.days,
                              "embedding_share": args.embedding_share, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="refitd-bench-store-") as tmp:
        backends = {"sqlite": lambda size: (f"sqlite:///{Path(tmp) / f'{size}.db'}", lambda: None)}
        if args.postgres != "none":
            backends["postgresql"] = lambda size: _postgres_database(args.postgres)
        for backend, database in backends.items():
            figures = {}
            for label, rows in (("small", args.small), ("large", args.rows)):
                url, drop = database(rows)
                try:
                    figures[label] = measure(url, Path(tmp) / f"spool-{backend}-{label}", texts, rows=rows,
                                             days=args.days, share=args.embedding_share)
                finally:
                    drop()
                print(f"{backend} {label}: {figures[label]}", flush=True)
            figures["ratios"] = {k: round(figures["large"][k] / figures["small"][k], 2)
                                 for k in ("rows_per_s", "bytes_per_prediction", "window_1000_ms", "window_10000_ms")
                                 if k in figures["large"] and figures["small"].get(k)}
            result["backends"][backend] = figures
    if args.home is not None:
        result["reembed_1000_s"] = reembed_seconds(args.home, texts)
    save("store", result)
    print(_table(result))
    return 0


def _table(result: dict[str, Any]) -> str:
    lines = [f"bench store: {result['rows']:,} rows over {result['days']:g} days (small table: {result['small']:,}), "
             f"embedding share {result['embedding_share']:g}",
             "| backend | table | rows/s | bytes/prediction | DB MB | window 1k ms | window 10k ms | retention of a day |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for backend, figures in result["backends"].items():
        for label in ("small", "large"):
            r = figures[label]
            lines.append(f"| {backend} | {label} | {r['rows_per_s']:,} | {r['bytes_per_prediction']} | {r['database_mb']} | "
                         f"{r.get('window_1000_ms', '-')} | {r.get('window_10000_ms', '-')} | "
                         f"{r['retention_rows']:,} rows in {r['retention_s']} s |")
        lines.append(f"| {backend} | large / small | {figures['ratios'].get('rows_per_s', '-')} | "
                     f"{figures['ratios'].get('bytes_per_prediction', '-')} | | {figures['ratios'].get('window_1000_ms', '-')} | "
                     f"{figures['ratios'].get('window_10000_ms', '-')} | |")
    if result.get("reembed_1000_s") is not None:
        lines.append(f"re-embedding a 1,000-row window with the champion: {result['reembed_1000_s']:.2f} s")
    return "\n".join(lines)
