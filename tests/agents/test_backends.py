"""agents/engine.py: what the engine checks before it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.backends import (
    MIN_REDIS,
    backends_build,
    cancel_flags,
    idempotency_store,
    redis_version,
    require_redis_7,
    warn_redis_durability,
)
from agents.engine import Engine
from agents.executions.idempotency import MemoryIdempotency, RedisIdempotency
from agents.executions.live import MemoryCancelFlags, RedisCancelFlags
from agents.executions.recording import FileJournal, RedisJournal
from agents.executions.sessions import LocalSessions, RedisSessions
from agents.runtime.cache import MemoryCache, RedisCache
from agents.runtime.memory import MemoryState
from agents.runtime.redis_state import RedisState
from core.redis import close_loop_clients


@pytest.mark.parametrize(
    ("text", "too_old"),
    [("7.0.15", False), ("7.2.4", False), ("8.0.0", False), ("6.2.14", True), ("x.y", True)],
)
def test_redis_versions_before_7_0_are_too_old(text: str, too_old: bool) -> None:
    assert (redis_version(text) < MIN_REDIS) is too_old


async def test_the_start_up_check_passes_the_configured_redis_and_refuses_an_older_one(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.redis import get_async_redis

    await require_redis_7()  # the test Redis is 7.0 or later
    version = str((await get_async_redis().info("server"))["redis_version"])

    # The same check against a minimum above any real Redis: it must read the version and
    # refuse, naming the setting and what it found.
    monkeypatch.setitem(require_redis_7.__globals__, "MIN_REDIS", (99, 0))
    with pytest.raises(RuntimeError) as caught:
        await require_redis_7()
    assert str(caught.value) == (
        f"REDIS_URL: Breakwater needs Redis 99.0 or later, found {version}"
    )


@pytest.mark.parametrize(("serve_drains", "drains"), [(True, True), (False, False)])
async def test_a_distributed_serve_drains_the_journal_unless_told_another_process_does(
    redis_url: str, settings: Any, serve_drains: bool, drains: bool
) -> None:
    settings.BREAKWATER_SERVE_DRAINS = serve_drains
    engine = Engine()
    assert (engine.drainer is not None) is drains


def test_an_embedded_serve_always_drains_its_journal(settings: Any, tmp_path: Path) -> None:
    settings.REDIS_URL = None
    settings.EMBEDDED = True
    settings.VAR_DIR = tmp_path
    settings.BREAKWATER_SERVE_DRAINS = False  # nothing else would drain the files
    engine = Engine()
    assert engine.drainer is not None
    engine.records.close()


async def test_a_redis_without_persistence_or_with_eviction_is_warned_about(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from core.redis import get_async_redis

    client = get_async_redis()
    persistence = await client.info("persistence")
    warnings = await warn_redis_durability()
    # The test Redis keeps nothing on disk (CI starts it with --appendonly no).
    assert any("AOF persistence is off" in w for w in warnings) is (
        not int(persistence.get("aof_enabled", 0))
    )
    assert all(w in caplog.text for w in warnings)


async def test_the_embedded_backends_are_the_processs_memory_and_files(
    settings: Any, tmp_path: Path
) -> None:
    settings.REDIS_URL = None
    settings.EMBEDDED = True
    settings.VAR_DIR = tmp_path
    built = backends_build()
    assert built.embedded
    assert built.drains
    assert built.state is backends_build().state  # one per process, whatever the loop
    assert isinstance(built.state, MemoryState)
    assert isinstance(built.cache, MemoryCache)
    assert isinstance(built.sessions, LocalSessions)
    assert isinstance(built.journal, FileJournal)
    assert built.journal.directory == tmp_path / "journal"
    assert isinstance(idempotency_store(), MemoryIdempotency)
    assert isinstance(cancel_flags(), MemoryCancelFlags)
    built.journal.close()


async def test_the_distributed_backends_are_on_redis(redis_url: str, settings: Any) -> None:
    settings.REDIS_URL = redis_url
    settings.EMBEDDED = False
    built = backends_build()
    try:
        assert not built.embedded
        assert isinstance(built.state, RedisState)
        assert isinstance(built.cache, RedisCache)
        assert isinstance(built.sessions, RedisSessions)
        assert isinstance(built.journal, RedisJournal)
        assert built.journal.stream == "bw:journal"
        assert isinstance(idempotency_store(), RedisIdempotency)
        assert isinstance(cancel_flags(), RedisCancelFlags)
    finally:
        await close_loop_clients()  # core.redis keeps one client per loop: not this one's


def test_no_module_but_the_backends_reads_the_mode() -> None:
    """``settings.EMBEDDED`` is read in one place; everything else asks the backends."""
    root = Path(__file__).resolve().parents[2]
    readers = sorted(
        str(path.relative_to(root))
        for package in ("agents", "budgets", "incidents", "console", "core")
        for path in (root / package).rglob("*.py")
        if "EMBEDDED" in path.read_text() and "migrations" not in path.parts
    )
    assert readers == ["agents/backends.py", "console/settings.py"]
