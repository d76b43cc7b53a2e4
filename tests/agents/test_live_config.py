"""agents/live_config.py: the in-memory config snapshot follows the database's version."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from agents.live_config import LiveConfig, config_version_bump, config_version_current

pytestmark = pytest.mark.django_db(transaction=True)


def _bump() -> None:
    with transaction.atomic():
        config_version_bump()


async def test_the_watcher_reloads_and_tells_its_engine_when_the_version_moves() -> None:
    config = LiveConfig()
    await asyncio.to_thread(config.reload_in_thread)
    changed = asyncio.Event()
    watcher = asyncio.create_task(config.watch(interval_s=0.05, on_change=changed.set))
    try:
        await asyncio.sleep(0.2)
        assert not changed.is_set()  # nothing moved: nothing reloaded
        await sync_to_async(_bump)()
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert config.snapshot.version == await sync_to_async(config_version_current)()
    finally:
        watcher.cancel()
