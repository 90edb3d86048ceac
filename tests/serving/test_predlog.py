"""The prediction log against real databases: rows a database refuses are quarantined, never wedging the log."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from refitd.core.artifacts import ArtifactStore
from refitd.core.db import make_engine, upgrade
from refitd.core.errors import NotFoundError
from refitd.core.settings import Settings
from refitd.core.tables import Prediction
from refitd.serving.dataplane import DataPlane, StoreUnavailable
from refitd.serving.predlog import PredictionLog, _jsonable
from tests.conftest import free_port


def _row(text: Any = "fine text", **over: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "created_at": datetime.now(timezone.utc), "model_version": "v1", "text": text,
            "label": "pos", "scores": {"pos": 0.9, "neg": 0.1}, "confidence": 0.9, "latency_ms": 1.5,
            "embedding": b"\x00\x3c", **over}


def _ids(rows: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in rows}


def _stored(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(Prediction.id, Prediction.text)).all())


def _write_segment(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in rows), encoding="utf-8")


def _rejected_lines(spool: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(spool.glob("rejected-*.jsonl")) for line in f.read_text().splitlines()]


def _engine(url: str) -> Iterator[Engine]:
    eng = make_engine(url, busy_timeout_s=1)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    yield from _engine(sqlite_url)


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    yield from _engine(postgres_url)


@pytest.fixture
def open_log(tmp_path: Path) -> Iterator:
    """Start a PredictionLog whose writer thread stays idle: the test flushes it."""
    logs: list[PredictionLog] = []

    def open_(engine: Engine) -> PredictionLog:
        plog = PredictionLog(engine, tmp_path / "spool", flush_every_s=3600)
        plog.start()
        logs.append(plog)
        return plog

    yield open_
    for plog in logs:
        plog.close()


def _refused_rows_do_not_wedge(engine: Engine, open_log, spool: Path, bad: list[dict[str, Any]]) -> None:
    """Bad rows amid good ones, in a pending segment ahead of another and in a live flush."""
    spool.mkdir(parents=True)
    first, second = [_row(), bad[0], _row(), _row()], [_row()]
    _write_segment(spool / "pending-1.jsonl", first)
    _write_segment(spool / "pending-2.jsonl", second)
    plog = open_log(engine)
    live = [_row(), *bad[1:], _row()]
    plog.add(live)
    plog.flush()
    good = _ids(first + second + live) - _ids(bad)
    assert set(_stored(engine)) == good
    assert {line["id"] for line in _rejected_lines(spool)} == _ids(bad)
    assert plog.rejected == len(bad) and plog.db_ok and plog.spooled_segments == 0
    later = [_row(), _row()]
    plog.add(later)
    plog.flush()
    assert set(_stored(engine)) == good | _ids(later)


def test_sqlite_refused_rows_are_quarantined(sqlite_engine: Engine, open_log, tmp_path: Path) -> None:
    bad = [_row(text=None), _row(text=None)]  # NOT NULL: an IntegrityError for that row alone
    _refused_rows_do_not_wedge(sqlite_engine, open_log, tmp_path / "spool", bad)
    reasons = {line["rejected"]["error"] for line in _rejected_lines(tmp_path / "spool")}
    assert reasons == {"IntegrityError"}


@pytest.mark.postgres
def test_postgres_nul_text_is_quarantined(pg_engine: Engine, open_log, tmp_path: Path, caplog) -> None:
    bad = [_row(text="SECRET-1\x00a"), _row(text="SECRET-2 \x00"), _row(text=None)]
    _refused_rows_do_not_wedge(pg_engine, open_log, tmp_path / "spool", bad)
    lines = _rejected_lines(tmp_path / "spool")
    assert {line["rejected"]["error"] for line in lines} == {"DataError", "IntegrityError"}
    assert {line["text"] for line in lines} == {"SECRET-1\x00a", "SECRET-2 \x00", None}  # kept as they came
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert all(b["id"] in " ".join(logged) for b in bad)
    assert not any("SECRET" in m for m in logged)  # the reason, not the text


def test_quarantined_row_fixed_and_moved_back_is_replayed(sqlite_engine: Engine, open_log, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    plog = open_log(sqlite_engine)
    bad, good = _row(text=None), _row()
    plog.add([good, bad])
    plog.flush()
    [quarantine] = spool.glob("rejected-*.jsonl")
    line = json.loads(quarantine.read_text())
    line["text"] = "fixed by hand"  # the "rejected" entry stays: it is ignored on read
    (spool / "pending-fixed.jsonl").write_text(json.dumps(line) + "\n")
    quarantine.unlink()
    plog.flush()
    assert _stored(sqlite_engine) == {good["id"]: "fine text", bad["id"]: "fixed by hand"}
    assert plog.rejected == 1 and plog.spooled_segments == 0 and not list(spool.glob("rejected-*"))


def test_a_segment_torn_mid_character_loses_only_its_torn_line(sqlite_engine: Engine, open_log, tmp_path: Path) -> None:
    """A crash mid-write can end a spool segment with half of a UTF-8 character: the good lines replay."""
    spool = tmp_path / "spool"
    spool.mkdir()
    good = [_row("caf\u00e9 \u2708\ufe0f"), _row("plain")]
    torn = "".join(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in good).encode()
    last = json.dumps(_jsonable(_row("lost \u2708")), ensure_ascii=False).encode()
    torn += last[: last.index("\u2708".encode()) + 2]  # the write stopped inside the ✈
    (spool / "pending-torn.jsonl").write_bytes(torn)
    plog = open_log(sqlite_engine)
    plog.flush()
    assert _stored(sqlite_engine) == {r["id"]: r["text"] for r in good}
    assert plog.spooled_segments == 0 and not list(spool.glob("pending-*"))


def test_lines_that_are_not_rows_are_kept_aside_and_never_stop_the_log(sqlite_engine: Engine, open_log,
                                                                       tmp_path: Path) -> None:
    """A hand-edited line with a null timestamp, a JSON array and an unreadable segment: the good rows of
    that segment, of the segment behind it and of the live flush are stored; the bad lines are kept."""
    spool = tmp_path / "spool"
    spool.mkdir()
    good, later, live = _row(), _row(), _row()
    nulled = json.dumps({**_jsonable(_row()), "created_at": None})
    (spool / "pending-1.jsonl").write_text(f"{json.dumps(_jsonable(good))}\n{nulled}\n[1, 2]\n", encoding="utf-8")
    unreadable = spool / "pending-2.jsonl"
    unreadable.mkdir()  # reading it raises an OSError (IsADirectoryError) on every platform
    _write_segment(spool / "pending-3.jsonl", [later])
    plog = open_log(sqlite_engine)
    plog.add([live])
    plog.flush()
    plog.flush()  # a second pass over what was set aside changes nothing
    assert set(_stored(sqlite_engine)) == {good["id"], later["id"], live["id"]}
    assert (spool / "unparsed-pending-1.jsonl").read_text().splitlines() == [nulled, "[1, 2]"]
    assert (spool / "unreadable-pending-2.jsonl").is_dir() and not list(spool.glob("pending-*"))


def test_sqlite_unavailable_keeps_segments_until_back(tmp_path: Path, open_log) -> None:
    db_dir = tmp_path / "db"
    engine = make_engine(f"sqlite:///{db_dir / 'refitd.db'}", busy_timeout_s=1)
    upgrade(engine)
    plog = open_log(engine)
    db_dir.rename(tmp_path / "db-away")  # the database file is gone: every connection fails
    engine.dispose()
    # texts holding what other line splitters cut at (U+2028, U+0085, U+001C) survive the spool as written
    rows = [[_row("before\u2028after \u2708\ufe0f"), _row("x\x85y\x1cz\u2029 \u00fcml")], [_row()]]
    for batch in rows:
        plog.add(batch)
        plog.flush()
    assert not plog.db_ok and plog.spooled_segments == 2
    (tmp_path / "db-away").rename(db_dir)
    plog.flush()
    assert _stored(engine) == {r["id"]: r["text"] for r in rows[0] + rows[1]}
    assert plog.db_ok and plog.spooled_segments == 0 and plog.rejected == 0
    assert not list((tmp_path / "spool").glob("rejected-*"))
    engine.dispose()


@pytest.mark.postgres
def test_closed_port_keeps_segments_until_back(pg_engine: Engine, open_log, tmp_path: Path) -> None:
    down = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres", busy_timeout_s=1)
    plog = open_log(down)
    rows = [_row(), _row(text="nul \x00 too")]  # refused once it is back, not while it is down
    plog.add(rows)
    plog.flush()
    assert not plog.db_ok and plog.spooled_segments == 1 and plog.rejected == 0
    plog.engine = pg_engine  # the database answers again
    plog.flush()
    assert set(_stored(pg_engine)) == {rows[0]["id"]}
    assert plog.db_ok and plog.spooled_segments == 0 and plog.rejected == 1
    down.dispose()


def test_may_hold_says_where_a_row_can_still_be(sqlite_engine: Engine, open_log, tmp_path: Path) -> None:
    """Feedback flushes only for an id the log may still hold: queued, or behind a spooled segment."""
    plog = open_log(sqlite_engine)
    row = _row()
    plog.add([row])
    assert plog.may_hold(row["id"]) and not plog.may_hold("f" * 32)
    plog.flush()
    assert not plog.may_hold(row["id"]) and _stored(sqlite_engine)[row["id"]] == "fine text"
    _write_segment(tmp_path / "spool" / "pending-9.jsonl", [_row()])
    assert plog.may_hold("f" * 32)  # a replay may bring any id: flush first


def test_a_label_for_a_prediction_the_log_could_not_land_is_retried_not_dropped(sqlite_engine: Engine, open_log,
                                                                                   tmp_path: Path) -> None:
    """The database answers reads but not the log's writes: the prediction waits in the spool, and its label is
    503 (retry) — a 404 would tell the client the id is unknown, and the label would be dropped."""
    plog = open_log(make_engine(f"sqlite:///{tmp_path / 'gone' / 'refitd.db'}", busy_timeout_s=1))
    plane = DataPlane(Settings.load(home=tmp_path / "home"), sqlite_engine, ArtifactStore(tmp_path / "models"), plog)
    row = _row()
    plog.add([row])
    with pytest.raises(StoreUnavailable):
        plane.feedback(label="pos", prediction_id=row["id"], text=None, source="api")
    assert plog.spooled_segments == 1 and not _stored(sqlite_engine)
    plog.engine = sqlite_engine  # writes land again: the retry flushes the row, then records its label
    assert plane.feedback(label="pos", prediction_id=row["id"], text=None, source="api")["status"] == "recorded"
    with pytest.raises(NotFoundError):  # and an id nobody logged is unknown at once
        plane.feedback(label="pos", prediction_id="f" * 32, text=None, source="api")
