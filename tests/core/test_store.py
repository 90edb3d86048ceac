"""The SQL store on SQLite and PostgreSQL: migrations and registry invariants."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import inspect, update
from sqlalchemy.exc import IntegrityError

from refitd.core import registry
from refitd.core.db import current_revision, head_revision, make_engine, session_scope, upgrade
from refitd.core.errors import ChampionChangedError, NotFoundError, RegistryError
from refitd.core.tables import ModelVersion


def _versions(engine, n: int) -> list[str]:
    return [registry.register_version(engine, artifact_uri=f"/models/x{i}").version for i in range(n)]


def _champions(engine) -> list[str]:
    with session_scope(engine) as s:
        return [mv.version for mv in s.query(ModelVersion).filter(ModelVersion.status == "champion")]


def test_migrations_apply_from_empty(db_url: str) -> None:
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    assert upgrade(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"model_versions", "predictions", "feedback", "drift_checks", "refit_runs", "events"} <= tables
    assert upgrade(engine) == head_revision()  # idempotent


def test_register_numbers_versions(engine) -> None:
    assert _versions(engine, 3) == ["v1", "v2", "v3"]


def test_promote_keeps_exactly_one_champion(engine) -> None:
    v1, v2 = _versions(engine, 2)
    registry.promote(engine, v1, reason="first")
    registry.promote(engine, v2, reason="better")
    assert _champions(engine) == [v2]
    with session_scope(engine) as s:
        assert registry.get_version(s, version=v1).status == "archived"
        kinds = [e.kind for e in registry.list_events(s)]
    assert kinds.count("promoted") == 2


def test_database_refuses_a_second_champion(engine) -> None:
    v1, v2 = _versions(engine, 2)
    registry.promote(engine, v1)
    with pytest.raises(IntegrityError):
        with session_scope(engine) as s:
            s.exec(update(ModelVersion).where(ModelVersion.version == v2).values(status="champion"))


def test_rollback_restores_previous_and_rejects_current(engine) -> None:
    v1, v2 = _versions(engine, 2)
    registry.promote(engine, v1)
    registry.promote(engine, v2)
    restored = registry.rollback(engine, actor="ops", reason="live accuracy fell")
    assert restored.version == v1
    assert _champions(engine) == [v1]
    with session_scope(engine) as s:
        bad = registry.get_version(s, version=v2)
        assert bad.status == "rejected" and "live accuracy fell" in bad.gate_reason
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(engine)


def test_promotions_and_rollbacks_act_only_on_the_champion_they_were_decided_against(engine) -> None:
    """A refit gated against v2 does not promote over v1 that a rollback restored meanwhile; a watch that
    measured v2 does not roll back v3 that replaced it; a shadow gated against v2 is rejected, not promoted."""
    v1, v2, v3, v4 = _versions(engine, 4)
    registry.promote(engine, v1)
    registry.promote(engine, v2, over=v1)
    registry.rollback(engine, only_from=v2)  # back to v1
    with pytest.raises(ChampionChangedError, match=f"the champion is now {v1}, not {v2}"):
        registry.promote(engine, v3, over=v2)
    assert _champions(engine) == [v1]
    registry.promote(engine, v3, over=v1)
    with pytest.raises(ChampionChangedError):
        registry.rollback(engine, only_from=v2)
    assert _champions(engine) == [v3]
    with session_scope(engine) as s:
        s.exec(update(ModelVersion).where(ModelVersion.version == v4).values(parent=v2))
    registry.start_shadow(engine, v4, reason="offline gate passed")
    ended = registry.end_shadow(engine, v4, promote=True, reason="promoted: live accuracy better", figures={})
    assert ended.status == "rejected" and f"the champion is now {v3}, not {v2}" in ended.gate_reason
    assert _champions(engine) == [v3]


def test_unknown_version_and_unpublished_artifact(engine) -> None:
    with pytest.raises(NotFoundError):
        registry.promote(engine, "v99")
    bare = registry.register_version(engine)  # no artifact yet
    with pytest.raises(RegistryError, match="no artifact"):
        registry.promote(engine, bare.version)


def _promote_many(url: str, versions: list[str], rounds: int) -> None:
    engine = make_engine(url)
    for _ in range(rounds):
        for v in versions:
            registry.promote(engine, v, actor="racer")


def test_concurrent_promotions_from_two_processes(engine, db_url: str) -> None:
    versions = _versions(engine, 4)
    registry.promote(engine, versions[0])
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_promote_many, args=(db_url, versions[:2], 15)),
        ctx.Process(target=_promote_many, args=(db_url, versions[2:], 15)),
    ]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):
        champions = _champions(engine)
        assert len(champions) <= 1  # never two at once, as any reader sees it
        seen.update(champions)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert len(_champions(engine)) == 1
    assert len(seen) >= 2
