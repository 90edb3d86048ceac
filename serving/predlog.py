"""Prediction logging off the request path, durable from the moment a request is answered.

Before a request is acknowledged its rows are appended to the active spool
segment (``spool/wal-*.jsonl``, written through to the OS). A background
thread rotates the segment and bulk-inserts its rows; the segment is deleted
once the database has them. Two kinds of failure are told apart:

* The database is **unavailable**: it cannot be reached, drops the connection,
  times out, is locked, or fails in any way not blamed on the rows. The
  segment is kept as ``pending-*.jsonl`` and replayed, in order, when the
  database answers again; segments left by a crash are replayed at start.
  Replays skip ids already stored, so a row is never lost and never doubled.
* The database **refuses rows** (``DataError``, ``IntegrityError``, or a value
  that cannot be bound to its column; e.g. a text holding a NUL character,
  which PostgreSQL text columns refuse). The batch is bisected, each half
  inserted in its own transaction, until every row the database accepts is
  stored. A row refused on its own is a *rejected row*: it goes to
  ``spool/rejected-<ts>.jsonl`` (its segment line plus a ``"rejected":
  {"error", "message"}`` entry), is logged with its id and the reason, and is
  counted in ``rejected``. It is never dropped and never holds up later rows.

To re-import a rejected row, fix the line (the ``"rejected"`` entry may stay;
it is ignored on read) and move it into a file named ``pending-<name>.jsonl``
in the spool folder. The next flush replays it like any pending segment,
skipping ids already stored; a line still refused lands in a new
``rejected-*.jsonl``. A line that is not a row at all (torn by a crash, or mis-edited) is copied to
``unparsed-<segment>`` and skipped; a segment that cannot be read is renamed ``unreadable-<segment>``.
Neither stops the rows behind it.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import random
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from refitd.core.tables import Prediction, new_prediction_id, utcnow

log = logging.getLogger(__name__)


def log_rows(texts: list[str], answer: Any, *, embedding_share: float, rng: random.Random) -> list[dict[str, Any]]:
    """What the log keeps of each answered text (the storage budget: README, Scale).

    Text, label, version, time, confidence, latency and the class scores rounded to 4 decimals, with a
    new prediction id. The pooled embedding (768 bytes at float16, half a row) only for a sampled
    ``embedding_share`` of rows: the drift check re-embeds the rest of its window with the champion.
    """
    now, version, labels = utcnow(), answer.runtime.version, answer.runtime.labels
    rows = []
    for text, label, scores, emb in zip(texts, answer.labels, answer.scores, answer.embeddings, strict=True):
        keep = embedding_share >= 1.0 or (embedding_share > 0.0 and rng.random() < embedding_share)
        rows.append({"id": new_prediction_id(), "created_at": now, "model_version": version, "text": text,
                     "label": label, "scores": {lbl: round(float(s), 4) for lbl, s in zip(labels, scores, strict=True)},
                     "confidence": float(scores.max()), "latency_ms": round(answer.latency_ms, 3),
                     "embedding": emb.astype(np.float16).tobytes() if keep else None})
    return rows


class PredictionLog:
    def __init__(self, engine: Engine, spool_dir: Path, *, flush_every_s: float = 0.5, batch_rows: int = 512) -> None:
        self.engine = engine
        self.dir = Path(spool_dir)
        self.flush_every_s, self.batch_rows = flush_every_s, batch_rows
        self._rows: list[dict[str, Any]] = []
        self._active: Path | None = None
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()  # guards _rows and the active segment
        self._flush_lock = threading.Lock()  # one flush at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.spooled = 0
        self.rejected = 0  # rows the database refused on their own, kept in rejected-*.jsonl
        self.db_ok = True

    # lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in sorted(self.dir.glob("wal-*.jsonl")):  # a previous process died mid-segment
            leftover.rename(leftover.with_name("pending-" + leftover.name.removeprefix("wal-")))
        with self._lock:
            self._open_segment()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer and flush what is left (to the database, else to a pending segment)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            if self._active is not None and self._active.exists() and self._active.stat().st_size == 0:
                self._active.unlink()

    # request path ----------------------------------------------------------------------

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Make rows durable (spool segment) and queue them for the database."""
        lines = "".join(_line(r) for r in rows)
        with self._lock:
            if self._fh is None:
                self._open_segment()
            assert self._fh is not None
            self._fh.write(lines)
            self._fh.flush()
            self._rows.extend(rows)
            if len(self._rows) >= self.batch_rows:
                self._wake.set()

    @property
    def pending(self) -> int:
        """Rows not yet in the database (queued in memory; spooled segments not counted)."""
        return len(self._rows)

    @property
    def spooled_segments(self) -> int:
        return sum(1 for _ in self.dir.glob("pending-*.jsonl"))

    def may_hold(self, prediction_id: str) -> bool:
        """Whether a row with this id may be on its way to the table: queued here, being inserted by a flush,
        or in a spooled segment not yet replayed (not read: a flush replays it). False: wherever it was, it is
        in the table by now, or it never was logged. Looked at in the order a row moves (queue → insert →
        table or segment), so a row moving meanwhile is seen at its next stop."""
        with self._lock:
            if any(row["id"] == prediction_id for row in self._rows):
                return True
        return self._flush_lock.locked() or self.spooled_segments > 0

    # writer ---------------------------------------------------------------------------

    def flush(self) -> None:
        with self._flush_lock:
            self._replay_pending()
            with self._lock:
                rows, segment, fh = self._rows, self._active, self._fh
                if not rows:
                    return
                self._rows = []
                self._open_segment()
            if fh is not None:
                fh.close()
            assert segment is not None
            if self._insert(rows, skip_existing=False):
                segment.unlink(missing_ok=True)
            else:
                segment.rename(segment.with_name("pending-" + segment.name.removeprefix("wal-")))
                self.spooled += len(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the writer thread must outlive any one failure
                log.exception("prediction log flush failed")
                time.sleep(1.0)

    def _open_segment(self) -> None:
        self._active = self.dir / f"wal-{time.time_ns()}-{uuid.uuid4().hex[:6]}.jsonl"
        self._fh = self._active.open("a", encoding="utf-8")

    def _insert(self, rows: list[dict[str, Any]], *, skip_existing: bool) -> bool:
        """Store rows, quarantining any the database refuses; False (rows kept) while it is unavailable."""
        try:
            self._write(rows, skip_existing=skip_existing)
        except SQLAlchemyError as exc:
            if not _refused(exc):
                return self._unavailable(exc)
            rejected: list[tuple[dict[str, Any], SQLAlchemyError]] = []
            try:
                self._bisect(rows, rejected)
            except SQLAlchemyError as down:  # gone mid-way: the replay bisects again, skipping stored ids
                return self._unavailable(down)
            self._quarantine(rejected)
        if not self.db_ok:
            log.info("database is back; prediction logging resumed")
        self.db_ok = True
        return True

    def _write(self, rows: list[dict[str, Any]], *, skip_existing: bool) -> None:
        """Insert rows in one transaction (without the ids already stored, if asked)."""
        with self.engine.begin() as conn:
            if skip_existing:
                stored = _existing_ids(conn, [r.get("id") for r in rows])
                rows = [r for r in rows if r.get("id") not in stored]
            if rows:
                conn.execute(insert(Prediction), rows)
        self.written += len(rows)

    def _bisect(self, rows: list[dict[str, Any]], rejected: list[tuple[dict[str, Any], SQLAlchemyError]]) -> None:
        """Store each half the database accepts, halving refused ones; collect rows refused alone.

        Raises when the database turns out to be unavailable.
        """
        mid = len(rows) // 2
        for half in (rows[:mid], rows[mid:]):
            if not half:
                continue
            try:
                self._write(half, skip_existing=True)
            except SQLAlchemyError as exc:
                if not _refused(exc):
                    raise
                if len(half) == 1:
                    rejected.append((half[0], exc))
                else:
                    self._bisect(half, rejected)

    def _quarantine(self, rejected: list[tuple[dict[str, Any], SQLAlchemyError]]) -> None:
        """Keep rows refused on their own in ``rejected-<ts>.jsonl``, with the reason, and say so."""
        if not rejected:
            return
        path = self.dir / f"rejected-{time.time_ns()}-{uuid.uuid4().hex[:6]}.jsonl"
        with path.open("a", encoding="utf-8") as fh:
            for row, exc in rejected:
                error, message = type(exc).__name__, _reason(exc)
                fh.write(json.dumps({**_jsonable(row), "rejected": {"error": error, "message": message}}) + "\n")
                log.error("prediction %s refused by the database (%s: %s); kept in %s",
                          row.get("id"), error, message, path.name)
            fh.flush()
            os.fsync(fh.fileno())
        self.rejected += len(rejected)

    def _unavailable(self, exc: SQLAlchemyError) -> bool:
        if self.db_ok:
            log.warning("database unavailable for prediction rows (%s: %s); keeping them in %s",
                        type(exc).__name__, _reason(exc), self.dir)
        self.db_ok = False
        return False

    def _replay_pending(self) -> None:
        for segment in sorted(self.dir.glob("pending-*.jsonl")):
            try:
                rows = _read_segment(segment)
            except OSError as exc:  # unreadable (permissions, I/O): set aside, never a reason to stop the log
                _set_aside(segment, f"unreadable-{segment.name}", f"could not be read ({exc})")
                continue
            if rows and not self._insert(rows, skip_existing=True):
                return  # still down: keep this and later segments for the next try
            segment.unlink()
            log.info("replayed %d spooled prediction rows from %s", len(rows), segment.name)


def _refused(exc: SQLAlchemyError) -> bool:
    """True when the database answered and refused the rows, False when it is unavailable.

    Only errors blamed on the data count; anything else (connection, timeout, lock, missing
    table, server fault) keeps the rows for a retry, so an outage never quarantines good rows.
    """
    if isinstance(exc, DBAPIError):
        return isinstance(exc, (DataError, IntegrityError)) and not exc.connection_invalidated
    return isinstance(exc, StatementError)  # a value that could not be bound to its column


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's first line, without the statement and parameters (they would repeat the text)."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).splitlines() or [type(orig).__name__])[0][:200]


def _read_segment(segment: Path) -> list[dict[str, Any]]:
    """The rows of a spool segment. A line that is not a row is kept, byte for byte, in
    ``unparsed-<segment>`` beside it and skipped: a crash mid-write leaves a torn last line (that request
    was never acknowledged), and a line edited by hand for re-import may be wrong; neither may stop the log."""
    rows, unparsed = [], []
    # "\n" alone ends a line: texts are written as UTF-8, and str.splitlines would also cut at U+2028,
    # U+0085 and the other separators a text may hold. Each line is decoded on its own: a crash mid-write
    # can leave half a character at the end, and that must cost the torn line only, not the segment.
    for n, line in enumerate(segment.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_from_json(json.loads(line)))  # UnicodeDecodeError is a ValueError
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # torn, not an object, a field's type
            log.warning("%s line %d is not a prediction row (%s: %s); kept in unparsed-%s and skipped",
                        segment.name, n, type(exc).__name__, exc, segment.name)
            unparsed.append(line)
    if unparsed:
        with (segment.parent / f"unparsed-{segment.name}").open("wb") as fh:  # a segment read again writes the same
            fh.write(b"".join(line + b"\n" for line in unparsed))
            fh.flush()
            os.fsync(fh.fileno())
    return rows


def _set_aside(segment: Path, name: str, why: str) -> None:
    try:
        segment.rename(segment.with_name(name))
        log.error("spool segment %s %s; moved to %s, the log goes on", segment.name, why, name)
    except OSError:
        log.error("spool segment %s %s and could not be moved; skipped", segment.name, why)


def _existing_ids(conn: Any, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(ids), 500):
        found.update(conn.execute(select(Prediction.id).where(Prediction.id.in_(ids[i : i + 500]))).scalars())
    return found


def _line(row: dict[str, Any]) -> str:
    """One spool line: orjson (a tenth of json's time on the request path), json for what orjson refuses."""
    data = _jsonable(row)
    try:
        return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE).decode()
    except TypeError:  # orjson.JSONEncodeError: e.g. a lone surrogate, which json escapes
        return json.dumps(data) + "\n"


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["created_at"] = row["created_at"].isoformat()
    if row.get("embedding") is not None:
        out["embedding"] = base64.b64encode(row["embedding"]).decode("ascii")
    return out


def _from_json(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("rejected", None)  # a quarantined line moved back for re-import
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    if row.get("embedding") is not None:
        row["embedding"] = base64.b64decode(row["embedding"])
    return row
