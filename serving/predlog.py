"""Prediction logging off the request path: buffered, flushed in bulk inserts.

Rows are handed over after a request is answered and written by one
background thread. When the database refuses a flush, the rows are appended
to a spool file in the state directory and replayed once it answers again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import SQLAlchemyError

from core.tables import Prediction

log = logging.getLogger(__name__)


class PredictionLog:
    """A bounded-latency writer of prediction rows."""

    def __init__(self, engine: Engine, spool_dir: Path, *, flush_every_s: float = 0.5, batch_rows: int = 512) -> None:
        self.engine = engine
        self.spool = Path(spool_dir) / "predictions.jsonl"
        self.flush_every_s, self.batch_rows = flush_every_s, batch_rows
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.spooled = 0

    def start(self) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._pending.extend(rows)
            if len(self._pending) >= self.batch_rows:
                self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write everything pending now (to the database, else to the spool)."""
        self._replay_spool()
        while True:
            with self._lock:
                rows = [self._pending.popleft() for _ in range(min(self.batch_rows, len(self._pending)))]
            if not rows:
                return
            self._write(rows)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer and flush what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the writer thread must survive anything
                log.exception("prediction log flush failed")
                time.sleep(1.0)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(Prediction), rows)
            self.written += len(rows)
        except SQLAlchemyError as exc:
            log.warning("database refused %d prediction rows (%s); spooling to %s", len(rows), exc.__class__.__name__, self.spool)
            self._append_spool(rows)

    def _append_spool(self, rows: list[dict[str, Any]]) -> None:
        with self.spool.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(_jsonable(row)) + "\n")
            fh.flush()
        self.spooled += len(rows)

    def _replay_spool(self) -> None:
        if not self.spool.is_file() or self.spool.stat().st_size == 0:
            return
        replaying = self.spool.with_suffix(".replaying")
        if not replaying.exists():
            self.spool.rename(replaying)
        rows = [_from_json(json.loads(line)) for line in replaying.read_text(encoding="utf-8").splitlines() if line]
        try:
            with self.engine.begin() as conn:
                existing = _existing_ids(conn, [r["id"] for r in rows])
                fresh = [r for r in rows if r["id"] not in existing]
                if fresh:
                    conn.execute(insert(Prediction), fresh)
        except SQLAlchemyError:
            return  # still down; keep the file for the next try
        replaying.unlink()
        self.written += len(rows)
        log.info("replayed %d spooled prediction rows", len(rows))


def _existing_ids(conn: Any, ids: list[str]) -> set[str]:
    from sqlalchemy import select

    found: set[str] = set()
    for i in range(0, len(ids), 500):
        found.update(conn.execute(select(Prediction.id).where(Prediction.id.in_(ids[i : i + 500]))).scalars())
    return found


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["created_at"] = row["created_at"].isoformat()
    if row.get("embedding") is not None:
        out["embedding"] = row["embedding"].hex()
    return out


def _from_json(row: dict[str, Any]) -> dict[str, Any]:
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    if row.get("embedding") is not None:
        row["embedding"] = bytes.fromhex(row["embedding"])
    return row
