"""Queued executions: enqueue after commit, claim once, run, settle, cancel.

Embedded mode: the in-process worker (created in the test's loop, as ``serve`` does) runs the
task. Distributed mode (REDIS_URL): enqueueing publishes a real Celery message on Redis; the
test takes it off the queue and hands it to the same task body (a real worker process is
tests/agents/executions/test_celery_worker.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.db import OperationalError, connections
from django.test import AsyncClient
from django.utils import timezone

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from agents.executions import queue as executions
from agents.executions import runner
from agents.executions.recording import file_drain, journal_directory, redis_drain
from agents.models import Execution
from budgets.models import SpendEntry
from core.worker import EmbeddedWorker

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 20, error_rate: 0, seed: 1}}
  - {name: slow, kind: simulated, simulation: {latency_ms: 4000, error_rate: 0, seed: 2}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: s, provider: slow, upstream_model: s-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m, max_tokens: 64, timeout_s: 5}
  - {name: sleepy, model: s, timeout_s: 8}
  - {name: other, model: m}
"""
FINAL = {"succeeded", "degraded", "failed", "cancelled"}

pytestmark = pytest.mark.django_db(transaction=True)


def _setup() -> dict[str, str]:
    config_apply(document=config_parse(DOC))
    return {
        "execute": api_key_create(name="exec", scopes=["execute"]).plaintext,
        "execute-2": api_key_create(name="exec-2", scopes=["execute"]).plaintext,
        "read": api_key_create(name="read", scopes=["read"]).plaintext,
        "operate": api_key_create(name="ops", scopes=["operate"]).plaintext,
        "helper-only": api_key_create(
            name="limited", scopes=["execute", "read"], agents=["helper"]
        ).plaintext,
    }


@pytest.fixture
def agents_config() -> None:
    config_apply(document=config_parse(DOC))


async def drain_journal() -> None:
    """Store what the journal holds (the eager settlement already did; this must change
    nothing, and leaves nothing behind for the next test's database)."""
    if django_settings.EMBEDDED:
        await file_drain(journal_directory())()
    else:
        from core.redis import get_async_redis

        await redis_drain(get_async_redis())()


@pytest.fixture
async def keys() -> AsyncIterator[dict[str, str]]:
    # This loop's engine is the one the in-process worker runs executions on (embedded mode).
    # No background drainer: on the shared in-memory SQLite test database its writes would
    # collide with the worker's; the journal is drained once at the end instead.
    get_engine().drainer = None
    created = await sync_to_async(_setup)()
    yield created
    await engine_shutdown()
    await drain_journal()
    # The async ORM's thread keeps its connection otherwise (the test database cannot be dropped).
    await sync_to_async(connections.close_all)()


class RecordingWorker(EmbeddedWorker):
    """The in-process worker, noting what it was handed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.submitted: list[dict[str, Any]] = []

    def submit(self, name: str, **kwargs: Any) -> Any:
        self.submitted.append({"task": name, **kwargs})
        return super().submit(name, **kwargs)


@dataclass
class Worker:
    """The in-process worker, plus the broker queue it stands in for in distributed mode."""

    worker: RecordingWorker
    queue: str
    messages: list[dict[str, Any]] = field(default_factory=list)

    def handed(self) -> int:
        """Executions dispatched so far: to the broker queue, or to the in-process worker."""
        return len(self.worker.submitted) + self.waiting()

    def deliver(self) -> list[dict[str, Any]]:
        """Distributed mode: move the queue's Celery messages to the worker (what a Celery
        worker does). Returns the messages' headers and kwargs. Embedded mode: nothing to do."""
        if django_settings.EMBEDDED:
            return []
        from core.redis import get_redis

        delivered = []
        while (raw := get_redis().rpop(self.queue)) is not None:
            message = json.loads(raw)  # type: ignore[arg-type]
            _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            headers = message["headers"]
            self.worker.submit(headers["task"], **kwargs)
            delivered.append({"headers": headers, "kwargs": kwargs})
        self.messages.extend(delivered)
        return delivered

    def waiting(self) -> int:
        """Messages on the broker queue not delivered yet (0 in embedded mode)."""
        if django_settings.EMBEDDED:
            return 0
        from core.redis import get_redis

        return int(get_redis().llen(self.queue))


@pytest.fixture
async def worker(settings: Any) -> AsyncIterator[Worker]:
    queue = f"bwtest-{uuid.uuid4().hex[:12]}"
    settings.BREAKWATER_EXECUTION_QUEUE = queue
    embedded = RecordingWorker(threads=2, grace_s=15)
    yield Worker(embedded, queue)
    await embedded.stop()
    if not django_settings.EMBEDDED:
        from core.redis import get_redis

        get_redis().delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


async def _post(key: str | None, path: str, body: Any = None, **headers: str) -> Any:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, str | bytes) else json.dumps(body or {})
    return await AsyncClient().post(
        path, data=data, content_type="application/json", headers=headers
    )


async def _row(execution_id: str) -> Execution | None:
    """The row, read while a worker may be writing (retried on SQLite's shared-cache lock)."""
    for _ in range(100):
        try:
            return await Execution.objects.filter(pk=execution_id).afirst()
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            await asyncio.sleep(0.01)
    raise AssertionError("the table stayed locked")


async def wait_for(execution_id: str, statuses: set[str], worker: Worker) -> Execution:
    """Deliver what is queued and poll the row until its status is one of ``statuses``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await sync_to_async(worker.deliver)()
        row = await _row(execution_id)
        if row is not None and row.status in statuses:
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"execution {execution_id} never reached {statuses}: {row}")


async def _enqueue(key: str, worker: Worker, agent: str = "helper", **body: Any) -> str:
    response = await _post(key, f"/api/v1/agents/{agent}/executions", {"input": "hi", **body})
    assert response.status_code == 202, response.content
    return str(response.json()["execution_id"])


# --- enqueue -------------------------------------------------------------------------------


async def test_queueing_answers_202_and_a_worker_completes_the_execution_once(
    keys: dict[str, str], worker: Worker
) -> None:
    response = await _post(
        keys["execute"],
        "/api/v1/agents/helper/executions",
        {"input": "what is a breakwater?", "session_id": "s-1", "metadata": {"ticket": 7}},
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert set(body) == {"execution_id", "status"}
    row = await wait_for(body["execution_id"], FINAL, worker)
    assert row.status == "succeeded"
    assert row.output
    assert row.input == [{"role": "user", "content": "what is a breakwater?"}]
    assert row.metadata == {"ticket": 7}
    assert row.session_id == "s-1"
    assert row.cost_usd > 0
    assert row.finished_at is not None
    entries = [e async for e in SpendEntry.objects.filter(execution_id=row.pk)]
    assert len(entries) == 1
    assert entries[0].cost_usd == row.cost_usd
    read = await AsyncClient().get(
        f"/api/v1/executions/{row.pk}", headers={"Authorization": f"Bearer {keys['execute']}"}
    )
    assert read.json()["status"] == "succeeded"


async def test_the_message_carries_only_the_id_and_time_limits_from_the_agents_timeout(
    keys: dict[str, str], worker: Worker, redis_url: str
) -> None:
    execution_id = await _enqueue(keys["execute"], worker, max_tokens=8)
    assert worker.waiting() == 1
    [message] = await sync_to_async(worker.deliver)()
    assert message["headers"]["task"] == "agents.tasks.execution_run"
    assert message["kwargs"] == {"execution_id": execution_id, "max_tokens": 8}
    soft, hard = executions.execution_time_limits(5.0)  # helper's timeout_s
    assert message["headers"]["timelimit"] == [hard, soft]
    assert 5 < soft < hard
    assert (await wait_for(execution_id, FINAL, worker)).status == "succeeded"


async def test_a_requeued_execution_keeps_its_requests_max_tokens(
    keys: dict[str, str], worker: Worker, redis_url: str
) -> None:
    from core.redis import get_redis

    execution_id = await _enqueue(keys["execute"], worker, max_tokens=3)
    row = await Execution.objects.aget(pk=execution_id)
    assert (row.status, row.max_tokens) == ("queued", 3)
    assert worker.waiting() == 1
    await sync_to_async(get_redis().delete)(worker.queue)  # the message is lost
    later = timezone.now() + timedelta(minutes=10)
    assert await sync_to_async(executions.executions_requeue_stale)(now=later) == 1
    [message] = await sync_to_async(worker.deliver)()
    assert message["kwargs"] == {"execution_id": execution_id}  # the new message has no cap
    row = await wait_for(execution_id, FINAL, worker)
    assert row.status == "succeeded"
    assert len(row.output.split()) <= 3  # the request's cap, not the agent's 64


def _enqueue_in_a_transaction(worker: Worker) -> tuple[str, int, int]:
    from django.db import transaction

    with transaction.atomic():
        execution_id = executions.execution_enqueue(
            agent="helper", timeout_s=5, messages=[{"role": "user", "content": "hi"}]
        )
        handed_before_commit = worker.handed()
    return execution_id, handed_before_commit, worker.handed()


async def test_the_execution_is_handed_to_a_worker_only_after_its_row_is_committed(
    keys: dict[str, str], worker: Worker
) -> None:
    execution_id, before, after = await sync_to_async(_enqueue_in_a_transaction)(worker)
    assert (before, after) == (0, 1)
    assert (await wait_for(execution_id, FINAL, worker)).status == "succeeded"


def _enqueue_rolled_back() -> None:
    from django.db import transaction

    def fail_after_enqueueing() -> None:
        with transaction.atomic():
            executions.execution_enqueue(
                agent="helper", timeout_s=5, messages=[{"role": "user", "content": "hi"}]
            )
            raise RuntimeError("the request failed after enqueueing")

    with pytest.raises(RuntimeError):
        fail_after_enqueueing()


async def test_a_rolled_back_enqueue_dispatches_nothing(
    keys: dict[str, str], worker: Worker
) -> None:
    await sync_to_async(_enqueue_rolled_back)()
    assert worker.handed() == 0
    assert await Execution.objects.acount() == 0


@pytest.mark.parametrize(
    ("key", "agent", "body", "status"),
    [
        ("read", "helper", {"input": "hi"}, 403),
        ("execute", "ghost", {"input": "hi"}, 404),
        ("helper-only", "other", {"input": "hi"}, 404),
        ("execute", "helper", {"input": "hi", "max_tokens": 65}, 422),
        ("execute", "helper", {"input": ""}, 422),
        ("execute", "helper", {"input": "hi", "surprise": 1}, 422),
        (None, "helper", {"input": "hi"}, 401),
    ],
)
async def test_it_validates_like_execute_and_queues_nothing_when_refused(
    keys: dict[str, str], worker: Worker, key: str | None, agent: str, body: Any, status: int
) -> None:
    response = await _post(keys[key] if key else None, f"/api/v1/agents/{agent}/executions", body)
    assert response.status_code == status
    assert "error" in response.json()
    assert await Execution.objects.acount() == 0
    assert worker.handed() == 0


async def test_an_idempotency_key_queues_one_execution_and_replays_its_id(
    keys: dict[str, str], worker: Worker
) -> None:
    path = "/api/v1/agents/helper/executions"
    header = {"Idempotency-Key": f"k-{uuid.uuid4()}"}  # Redis outlives the test database
    first = await _post(keys["execute"], path, {"input": "hi"}, **header)
    again = await _post(keys["execute"], path, {"input": "hi"}, **header)
    other = await _post(keys["execute"], path, {"input": "yo"}, **header)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert other.status_code == 422
    await wait_for(first.json()["execution_id"], FINAL, worker)
    assert await Execution.objects.acount() == 1


# --- claiming ------------------------------------------------------------------------------


def _queued(agent: str = "helper", api_key_id: int | None = None) -> str:
    """A queued execution whose message has not reached any worker."""
    return str(
        Execution.objects.create(
            agent_name=agent,
            status="queued",
            input=[{"role": "user", "content": "hi"}],
            api_key_id=api_key_id,
        ).pk
    )


@pytest.mark.dbmatrix
def test_a_queued_execution_is_claimed_once_and_a_second_delivery_finds_it_busy(
    agents_config: None,
) -> None:
    execution_id = _queued()
    first = executions.execution_claim(execution_id=execution_id)
    second = executions.execution_claim(execution_id=execution_id)
    assert first.outcome == "claimed"
    assert not first.reclaimed
    assert second.outcome == "busy"
    assert 5 < second.wait_s <= 5 + executions.execution_claim_grace_s() + 0.1
    assert Execution.objects.get(pk=execution_id).status == "running"


@pytest.mark.dbmatrix
def test_a_claim_older_than_the_timeout_and_grace_belongs_to_a_dead_delivery(
    agents_config: None,
) -> None:
    execution_id = _queued()
    claimed_at = timezone.now() - timedelta(seconds=5 + executions.execution_claim_grace_s() + 1)
    Execution.objects.filter(pk=execution_id).update(status="running", started_at=claimed_at)
    claim = executions.execution_claim(execution_id=execution_id)
    assert claim.outcome == "claimed"
    assert claim.reclaimed
    started = Execution.objects.get(pk=execution_id).started_at
    assert started is not None
    assert started > claimed_at


@pytest.mark.dbmatrix
def test_the_claim_sets_started_at_and_the_execution_keeps_the_time_it_was_accepted(
    agents_config: None,
) -> None:
    execution_id = _queued()
    accepted = timezone.now() - timedelta(minutes=10)
    Execution.objects.filter(pk=execution_id).update(created_at=accepted)
    claimed_at = timezone.now()
    claim = executions.execution_claim(execution_id=execution_id, now=claimed_at)
    assert claim.outcome == "claimed"
    row = Execution.objects.get(pk=execution_id)
    assert (row.created_at, row.started_at) == (accepted, claimed_at)
    assert row.queue_wait_ms is None  # queued_at: run now (this row was made without it)


@pytest.mark.dbmatrix
def test_a_released_claim_is_queued_again_without_a_start(agents_config: None) -> None:
    execution_id = _queued()
    claim = executions.execution_claim(execution_id=execution_id)
    assert executions.execution_release(
        execution_id=execution_id, claimed_at=claim.execution.started_at
    )
    row = Execution.objects.get(pk=execution_id)
    assert (row.status, row.started_at) == ("queued", None)


@pytest.mark.dbmatrix
def test_the_reaper_goes_by_the_start_so_a_long_wait_in_the_queue_is_not_a_dead_run(
    agents_config: None, settings: Any
) -> None:
    waited, stuck = _queued(), _queued()
    long_ago = timezone.now() - timedelta(seconds=settings.BREAKWATER_STALE_EXECUTION_S + 60)
    Execution.objects.filter(pk=waited).update(
        status="running", created_at=long_ago, started_at=timezone.now()
    )
    Execution.objects.filter(pk=stuck).update(
        status="running", created_at=long_ago, started_at=long_ago
    )
    assert executions.executions_reap_stale() == 1
    assert Execution.objects.get(pk=waited).status == "running"
    assert Execution.objects.get(pk=stuck).status == "failed"


@pytest.mark.dbmatrix
@pytest.mark.parametrize("status", ["succeeded", "degraded", "failed", "cancelled"])
def test_a_finished_execution_is_never_claimed_again(agents_config: None, status: str) -> None:
    execution_id = _queued()
    Execution.objects.filter(pk=execution_id).update(status=status)
    assert executions.execution_claim(execution_id=execution_id).outcome == "finished"
    assert executions.execution_claim(execution_id=str(uuid.uuid4())).outcome == "missing"


def test_concurrent_deliveries_claim_an_execution_exactly_once(
    agents_config: None, postgres: None
) -> None:
    from django.db import connection

    execution_ids = [_queued() for _ in range(10)]
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def deliver() -> None:
        barrier.wait()
        try:
            for execution_id in execution_ids:
                outcomes.append(executions.execution_claim(execution_id=execution_id).outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("claimed") == 10
    assert outcomes.count("busy") == 50


async def test_a_redelivered_finished_execution_neither_runs_nor_charges_again(
    keys: dict[str, str], worker: Worker
) -> None:
    execution_id = await _enqueue(keys["execute"], worker)
    done = await wait_for(execution_id, FINAL, worker)
    outcome = await asyncio.to_thread(runner.execution_run, execution_id=execution_id)
    assert outcome == "finished"
    again = await _row(execution_id)
    assert again is not None
    assert (again.output, again.cost_usd, again.finished_at) == (
        done.output,
        done.cost_usd,
        done.finished_at,
    )
    assert await SpendEntry.objects.filter(execution_id=execution_id).acount() == 1


async def test_a_reclaimed_execution_runs_once_and_is_charged_once(
    keys: dict[str, str], worker: Worker
) -> None:
    """A delivery died after its claim (the row is ``running``, stale): the next one runs it."""
    execution_id = await sync_to_async(_queued)()
    stale = timezone.now() - timedelta(seconds=5 + executions.execution_claim_grace_s() + 1)
    await Execution.objects.filter(pk=execution_id).aupdate(status="running", started_at=stale)
    worker.worker.submit("agents.tasks.execution_run", execution_id=execution_id)
    row = await wait_for(execution_id, FINAL, worker)
    assert row.status == "succeeded"
    assert await SpendEntry.objects.filter(execution_id=execution_id).acount() == 1


# --- cancel --------------------------------------------------------------------------------


async def _key_id(name: str) -> int:
    from agents.models import ApiKey

    return (await ApiKey.objects.aget(name=name)).pk


async def test_cancelling_a_queued_execution_ends_it_and_its_late_delivery_does_nothing(
    keys: dict[str, str], worker: Worker
) -> None:
    """Its message is still on the way (the row is queued, no worker has it yet)."""
    execution_id = await sync_to_async(_queued)(api_key_id=await _key_id("exec"))
    response = await _post(keys["execute"], f"/api/v1/executions/{execution_id}/cancel")
    assert response.status_code == 200
    assert response.json() == {
        "execution_id": execution_id,
        "status": "cancelled",
        "cancel_requested": False,
    }
    late = worker.worker.submit("agents.tasks.execution_run", execution_id=execution_id)
    assert await asyncio.wrap_future(late) == "finished"
    row = await _row(execution_id)
    assert row is not None
    assert row.status == "cancelled"
    assert row.output == ""
    again = await _post(keys["execute"], f"/api/v1/executions/{execution_id}/cancel")
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"


async def test_cancelling_a_running_execution_stops_it_and_settles_it_cancelled(
    keys: dict[str, str], worker: Worker
) -> None:
    execution_id = await _enqueue(keys["execute"], worker, agent="sleepy")
    await wait_for(execution_id, {"running"}, worker)
    await asyncio.sleep(0.3)  # into the provider call (4 s of simulated latency)
    response = await _post(keys["execute"], f"/api/v1/executions/{execution_id}/cancel")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    row = await wait_for(execution_id, FINAL, worker)
    assert row.status == "cancelled"  # an answer that had arrived would have been "succeeded"
    assert row.output == ""
    assert row.cost_usd == 0  # cut short before the provider produced anything
    assert row.finished_at is not None
    assert await SpendEntry.objects.filter(execution_id=execution_id).acount() == 0


async def test_cancel_is_404_for_another_keys_execution_and_409_once_it_finished(
    keys: dict[str, str], worker: Worker
) -> None:
    execution_id = await _enqueue(keys["execute"], worker)
    await wait_for(execution_id, FINAL, worker)
    path = f"/api/v1/executions/{execution_id}/cancel"
    assert (await _post(keys["execute-2"], path)).status_code == 404
    assert (await _post(keys["read"], path)).status_code == 403
    assert (
        await _post(keys["execute"], f"/api/v1/executions/{uuid.uuid4()}/cancel")
    ).status_code == 404
    assert (await _post(keys["execute"], "/api/v1/executions/nope/cancel")).status_code == 404
    finished = await _post(keys["execute"], path)
    assert finished.status_code == 409
    assert finished.json()["error"]["type"] == "conflict"
    operator = await _post(keys["operate"], path)  # operators may cancel any execution
    assert operator.status_code == 409
