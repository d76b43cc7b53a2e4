"""agents/engine.py: what the engine checks before it serves."""

from __future__ import annotations

import pytest

from agents.engine import MIN_REDIS, redis_version, require_redis_7


@pytest.mark.parametrize(
    ("text", "too_old"),
    [("7.0.15", False), ("7.2.4", False), ("8.0.0", False), ("6.2.14", True), ("x.y", True)],
)
def test_redis_versions_before_7_0_are_too_old(text: str, too_old: bool) -> None:
    assert (redis_version(text) < MIN_REDIS) is too_old


async def test_the_configured_redis_is_new_enough(redis_url: str) -> None:
    await require_redis_7()  # raises RuntimeError naming REDIS_URL and the version otherwise
