"""Per-agent pools (docs/SCALING.md, "Per-agent pools"): an agent's ``queue`` routes its queued
executions to a Celery queue of their own, so a surge of one agent's cannot delay another's.

On the test's PostgreSQL and Redis. The first test publishes through the API with no worker:
the message waits in the Redis list named after the agent's queue (the list KEDA reads), and
recovery dispatches to it again. The second runs two real ``celery -A console worker``
processes, one consuming only the default queue and one only the heavy agent's.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from agents.executions import queue as executions
from agents.models import Agent, Execution
from tests.agents.executions.test_celery_worker import CeleryWorker, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

DOC = """
providers:
  - {{name: quick, kind: simulated, simulation: {{latency_ms: 20, error_rate: 0, seed: 1}}}}
  - {{name: slow, kind: simulated, simulation: {{latency_ms: 60000, error_rate: 0, seed: 2}}}}
models:
  - {{name: q, provider: quick, upstream_model: q-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
  - {{name: s, provider: slow, upstream_model: s-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
agents:
  - {{name: light, model: q, max_tokens: 32, timeout_s: 5}}
  - {{name: heavy, model: s, max_tokens: 32, timeout_s: 90, queue: {heavy}}}
"""


@pytest.fixture
def pools(redis_url: str, postgres: None, settings: Any) -> Iterator[tuple[str, str]]:
    """(the default execution queue, the heavy agent's queue): names of this test's own."""
    tag = uuid.uuid4().hex[:10]
    default, heavy = f"bwtest-default-{tag}", f"bwtest-heavy-{tag}"
    settings.BREAKWATER_EXECUTION_QUEUE = default
    config_apply(document=config_parse(DOC.format(heavy=heavy)))
    yield default, heavy
    from core.redis import get_redis

    for queue in (default, heavy):
        get_redis().delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


@pytest.fixture
async def execute_key(pools: tuple[str, str]) -> AsyncIterator[str]:
    get_engine().drainer = None  # nothing runs here: the executions stay queued
    key = await sync_to_async(lambda: api_key_create(name="k", scopes=["execute"]).plaintext)()
    yield key
    await engine_shutdown()
    await sync_to_async(connections.close_all)()


def _waiting(queue: str) -> list[str]:
    """The execution ids of the Celery messages waiting in ``queue``'s Redis list."""
    import base64

    from core.redis import get_redis

    ids = []
    for raw in get_redis().lrange(queue, 0, -1):
        _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(kwargs["execution_id"])
    return ids


async def test_an_agents_queued_executions_wait_in_the_redis_list_of_its_queue(
    pools: tuple[str, str], execute_key: str
) -> None:
    default, heavy = pools
    response = await AsyncClient().post(
        "/api/v1/agents/heavy/executions",
        data=json.dumps({"input": "analyse this"}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {execute_key}"},
    )
    assert response.status_code == 202, response.content
    execution_id = response.json()["execution_id"]
    light = await sync_to_async(executions.execution_enqueue)(
        agent="light", timeout_s=5, messages=[{"role": "user", "content": "hi"}]
    )
    # No worker consumes the heavy queue: the execution waits, accepted and stored, in the
    # list named exactly after the queue (what KEDA's redis scaler measures).
    assert await sync_to_async(_waiting)(heavy) == [execution_id]
    assert await sync_to_async(_waiting)(default) == [light]
    assert (await Execution.objects.aget(pk=execution_id)).status == "queued"
    # Recovery of a lost message dispatches it to the agent's queue again, not the default one.
    assert await sync_to_async(executions.executions_requeue_stale)(older_than_s=0) == 2
    assert await sync_to_async(_waiting)(heavy) == [execution_id, execution_id]
    assert await sync_to_async(_waiting)(default) == [light, light]


def _statuses(agent: str) -> list[str]:
    return list(
        Execution.objects.filter(agent_name=agent)
        .order_by("queued_at")
        .values_list("status", flat=True)
    )


def _each(workers: list[CeleryWorker], action: Any) -> None:
    """``action(worker)`` for every worker at once (a start or a warm shutdown takes seconds)."""
    threads = [threading.Thread(target=action, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_a_surge_on_the_heavy_pool_does_not_delay_the_other_agents_queued_executions(
    pools: tuple[str, str], redis_url: str, tmp_path: Any
) -> None:
    default, heavy = pools
    env = worker_env(redis_url, tmp_path)
    workers = [CeleryWorker(env, default, tmp_path / "d"), CeleryWorker(env, heavy, tmp_path / "h")]
    for worker in workers:
        worker.logs.mkdir()
    _each(workers, CeleryWorker.start)
    try:
        # Each heavy execution would hold the heavy pool's one worker for 60 s.
        agent = Agent.objects.get(name="heavy")
        surge = [
            executions.execution_enqueue(
                agent="heavy",
                timeout_s=agent.timeout_s,
                queue=agent.queue,  # what the API passes (the live config's copy of it)
                messages=[{"role": "user", "content": "x"}],
            )
            for _ in range(5)
        ]
        light = [
            executions.execution_enqueue(
                agent="light", timeout_s=5, messages=[{"role": "user", "content": f"q{i}"}]
            )
            for i in range(3)
        ]
        deadline = time.monotonic() + 60
        while _statuses("light") != ["succeeded"] * 3 or "running" not in _statuses("heavy"):
            assert time.monotonic() < deadline, (_statuses("light"), _statuses("heavy"))
            time.sleep(0.1)
        # Every light execution finished while the surge is still waiting behind the first
        # heavy one: the light pool never ran a heavy execution, nor waited for one.
        assert _statuses("heavy") == ["running", "queued", "queued", "queued", "queued"]
        assert Execution.objects.filter(pk__in=light, status="succeeded").count() == 3
        for execution_id in surge:
            executions.execution_cancel(
                execution_id=execution_id, key_id=0, operator_agents=frozenset()
            )
    finally:
        _each(workers, CeleryWorker.stop)
    assert set(_statuses("heavy")) == {"cancelled"}, workers[1].tail()
