from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import DatabaseError, connection, connections
from django.test import override_settings
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.executions.recording import (
    GROUP,
    DrainResult,
    FileJournal,
    RecordDrainer,
    RedisJournal,
    drain_files_once,
    drain_redis_once,
    ensure_group,
    file_drain,
    prune_consumers,
    redis_drain,
)
from agents.executions.recording.drainer import with_fresh_connections
from agents.executions.recording.events import encode_finished, encode_started
from agents.models import ApiKey, Execution
from agents.runtime.executor import Executor
from agents.runtime.types import (
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    Message,
    Step,
    Usage,
)
from tests.agents.runtime.support import harness
from tests.conftest import ROOT

pytestmark = pytest.mark.dbmatrix
# Drains do their database work in worker threads, which only see committed data.
threaded_db = pytest.mark.django_db(transaction=True)

CREATED = 1_750_000_000.25


def request_for(execution_id: str | None = None, **overrides: Any) -> ExecutionRequest:
    fields: dict[str, Any] = {
        "agent": "support",
        "messages": (Message("user", "where is my parcel?"),),
        "execution_id": execution_id or str(uuid.uuid4()),
        "session_id": "s-1",
        "metadata": {"ticket": 42},
    }
    return ExecutionRequest(**{**fields, **overrides})


def result_for(request: ExecutionRequest, **overrides: Any) -> ExecutionResult:
    fields: dict[str, Any] = {
        "execution_id": request.execution_id,
        "agent": request.agent,
        "status": ExecutionStatus.DEGRADED,
        "output": "Sorry, try again later.",
        "model": "gpt-4o-mini",
        "deployment": 7,
        "attempts": 2,
        "fallback_used": True,
        "fallback_reason": "timeout",
        "cached": False,
        "usage": Usage(120, 30),
        "cost_usd": Decimal("0.00003600"),
        "latency_ms": 812.6,
        "created_at": CREATED,
        "finished_at": CREATED + 0.8126,
        "steps": (Step("attempt", model="gpt-4o-mini", deployment=7, outcome="timeout"),),
        "error": {"type": "timeout", "message": "deadline passed"},
        "session_id": request.session_id,
        "api_key_id": request.api_key_id,
        "metadata": request.metadata,
        "input": request.messages,
    }
    return ExecutionResult(**{**fields, **overrides})


@dataclass
class Rig:
    kind: str
    sink: FileJournal | RedisJournal
    drain: Callable[[], Awaitable[DrainResult]]
    target: str  # the journal directory, or the Redis URL

    async def drain_all(self) -> int:
        events = 0
        while True:
            result = await self.drain()
            events += result.events
            if not result.full:
                return events


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def stream(redis_client: aioredis.Redis, async_orm_connections: None) -> AsyncIterator[str]:
    name = f"bw:test:journal:{uuid.uuid4().hex}"
    yield name
    await redis_client.delete(name, f"{name}:rejected")


@pytest.fixture(params=["file", "redis"])
async def rig(
    request: pytest.FixtureRequest, tmp_path: Path, async_orm_connections: None
) -> AsyncIterator[Rig]:
    if request.param == "file":
        sink = FileJournal(tmp_path / "journal")
        directory = tmp_path / "journal"
        yield Rig("file", sink, file_drain(directory, batch_size=50), str(directory))
        sink.close()
        return
    url: str = request.getfixturevalue("redis_url")
    client = aioredis.Redis.from_url(url)
    name = f"bw:test:journal:{uuid.uuid4().hex}"
    yield Rig(
        "redis",
        RedisJournal(client, name),
        redis_drain(client, name, consumer="test-recorder", batch_size=50),
        url,
    )
    await client.delete(name, f"{name}:rejected")
    await client.aclose()


@pytest.fixture
async def async_orm_connections() -> AsyncIterator[None]:
    """Close what the async ORM opened in asgiref's thread, so the test database can be dropped."""
    yield
    await sync_to_async(connections.close_all)()


def rows() -> list[dict[str, Any]]:
    return [dict(row) for row in Execution.objects.order_by("id").values()]


# --- both journals ---------------------------------------------------------------------------


@threaded_db
async def test_started_and_finished_drain_into_one_complete_row(rig: Rig) -> None:
    request = request_for()
    result = result_for(request)
    await rig.sink.started(request, CREATED)
    await rig.sink.finished(result)

    assert await rig.drain_all() == 2

    row = await Execution.objects.aget()
    assert str(row.id) == request.execution_id
    assert row.agent_name == "support"
    assert row.status == "degraded"
    assert row.input == [{"role": "user", "content": "where is my parcel?"}]
    assert row.output == "Sorry, try again later."
    assert (row.model, row.deployment_id, row.attempts) == ("gpt-4o-mini", 7, 2)
    assert (row.fallback_used, row.fallback_reason, row.cached) == (True, "timeout", False)
    assert (row.input_tokens, row.output_tokens) == (120, 30)
    assert row.cost_usd == Decimal("0.000036")
    assert row.latency_ms == 813
    assert (row.session_id, row.metadata) == ("s-1", {"ticket": 42})
    assert row.steps == [result.steps[0].as_dict()]
    assert row.error == {"type": "timeout", "message": "deadline passed"}
    assert row.created_at == datetime.fromtimestamp(CREATED, tz=UTC)
    assert row.finished_at == datetime.fromtimestamp(CREATED + 0.8126, tz=UTC)
    assert row.api_key_id is None


@threaded_db
async def test_the_same_events_drained_twice_leave_the_rows_unchanged(rig: Rig) -> None:
    requests = [request_for() for _ in range(3)]
    for request in requests:
        await rig.sink.started(request, CREATED)
    for request in requests[:2]:
        await rig.sink.finished(result_for(request))
    await rig.drain_all()
    before = await asyncio.to_thread(with_fresh_connections, rows)

    for request in reversed(requests):  # redelivery: every event once more, finished first
        if request in requests[:2]:
            await rig.sink.finished(result_for(request))
        await rig.sink.started(request, CREATED)
    assert await rig.drain_all() == 5

    assert await asyncio.to_thread(with_fresh_connections, rows) == before
    assert [r["status"] for r in before].count("running") == 1


@threaded_db
async def test_an_execution_with_only_a_started_event_is_a_running_row(rig: Rig) -> None:
    request = request_for(metadata={"k": "v"})
    await rig.sink.started(request, CREATED)
    await rig.drain_all()

    row = await Execution.objects.aget()
    assert row.status == "running"
    assert row.input == [{"role": "user", "content": "where is my parcel?"}]
    assert (row.agent_name, row.session_id, row.metadata) == ("support", "s-1", {"k": "v"})
    assert row.created_at == datetime.fromtimestamp(CREATED, tz=UTC)
    assert row.finished_at is None


@pytest.mark.parametrize("separate_drains", [False, True])
@threaded_db
async def test_finished_before_started_in_the_journal_still_ends_finished(
    rig: Rig, separate_drains: bool
) -> None:
    request = request_for()
    await rig.sink.finished(result_for(request, status=ExecutionStatus.SUCCEEDED))
    if separate_drains:
        await rig.drain_all()
    await rig.sink.started(request, CREATED)
    await rig.drain_all()

    row = await Execution.objects.aget()
    assert row.status == "succeeded"
    assert row.finished_at is not None


@threaded_db
async def test_a_row_failed_by_the_reaper_takes_the_late_finished_result(rig: Rig) -> None:
    request = request_for()
    await rig.sink.started(request, CREATED)
    await rig.drain_all()
    await Execution.objects.filter(id=request.execution_id).aupdate(status="failed")

    await rig.sink.finished(result_for(request, status=ExecutionStatus.SUCCEEDED))
    await rig.drain_all()
    assert (await Execution.objects.aget()).status == "succeeded"


@threaded_db
async def test_a_run_of_the_real_executor_is_recorded_as_its_result(rig: Rig) -> None:
    h = harness()
    executor = Executor(
        config=h.config,
        state=h.state,
        providers=h.provider,
        clock=h.clock,
        records=rig.sink,
        rng=random.Random(7),
    )
    result = await executor.execute(request_for())
    await rig.drain_all()

    row = await Execution.objects.aget()
    assert str(row.id) == result.execution_id
    assert (row.status, row.output, row.model) == ("succeeded", "ok", "primary")
    assert (row.input_tokens, row.output_tokens) == (10, 5)
    assert row.cost_usd == result.cost_usd


@threaded_db
async def test_an_event_that_cannot_be_stored_is_set_aside_and_the_rest_go_in(rig: Rig) -> None:
    good = [request_for() for _ in range(2)]
    bad = request_for()
    await rig.sink.started(good[0], CREATED)
    # Breaks a CHECK constraint (a fallback needs its reason): refused by the database.
    await rig.sink.finished(result_for(bad, fallback_reason=None))
    await rig.sink.started(good[1], CREATED)

    assert await rig.drain_all() == 3
    assert await Execution.objects.acount() == 2
    assert not await Execution.objects.filter(id=bad.execution_id).aexists()
    assert await rig.drain_all() == 0  # acknowledged: it does not come back


@threaded_db
async def test_a_deleted_api_key_leaves_the_record_without_it(rig: Rig) -> None:
    key = await ApiKey.objects.acreate(
        name="k", prefix="bw_abcdefgh", secret_hash="0" * 64, scopes="execute"
    )
    kept, orphaned = request_for(api_key_id=key.id), request_for(api_key_id=key.id + 1000)
    await rig.sink.started(kept, CREATED)
    await rig.sink.started(orphaned, CREATED)
    await rig.drain_all()

    assert (await Execution.objects.aget(id=kept.execution_id)).api_key_id == key.id
    assert (await Execution.objects.aget(id=orphaned.execution_id)).api_key_id is None


@threaded_db
async def test_events_stay_in_the_journal_while_the_database_fails(rig: Rig) -> None:
    request = request_for()
    await rig.sink.started(request, CREATED)
    await rig.sink.finished(result_for(request))
    table = Execution._meta.db_table

    def rename(old: str, new: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER TABLE "{old}" RENAME TO "{new}"')

    await asyncio.to_thread(with_fresh_connections, rename, table, f"{table}_away")
    try:
        with pytest.raises(DatabaseError):
            await rig.drain()
    finally:
        await asyncio.to_thread(with_fresh_connections, rename, f"{table}_away", table)

    assert await rig.drain_all() == 2
    assert (await Execution.objects.aget()).status == "degraded"


@threaded_db
async def test_a_session_id_longer_than_its_column_is_cut_not_refused(rig: Rig) -> None:
    await rig.sink.started(request_for(session_id="s" * 300), CREATED)
    await rig.drain_all()
    assert (await Execution.objects.aget()).session_id == "s" * 128


WRITER = """
import asyncio, os, signal, sys
from decimal import Decimal
from agents.executions.recording import FileJournal, RedisJournal
from agents.runtime.types import ExecutionRequest, ExecutionResult, ExecutionStatus, Message, Usage

async def main(kind, target, stream, n):
    if kind == "file":
        sink = FileJournal(target)
    else:
        import redis.asyncio as aioredis
        sink = RedisJournal(aioredis.Redis.from_url(target), stream)
    for i in range(n):
        request = ExecutionRequest("support", (Message("user", f"q{i}"),), f"{i:08d}-0000-4000-8000-000000000000")
        await sink.started(request, 1.0)
        await sink.finished(ExecutionResult(
            request.execution_id, "support", ExecutionStatus.SUCCEEDED, f"a{i}", "m", 1, 1,
            False, None, False, Usage(1, 1), Decimal("0.1"), 5.0, 1.0, 2.0, input=request.messages))
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


def run_writer_then_sigkill(kind: str, target: str, stream: str, n: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", WRITER, kind, target, stream, str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout == "written\n"


@threaded_db
async def test_a_writer_killed_right_after_finished_returned_loses_no_event(rig: Rig) -> None:
    n = 300
    stream = rig.sink.stream if isinstance(rig.sink, RedisJournal) else ""
    await asyncio.to_thread(run_writer_then_sigkill, rig.kind, rig.target, stream, n)

    assert await rig.drain_all() == 2 * n
    assert await Execution.objects.filter(status="succeeded").acount() == n
    assert await Execution.objects.acount() == n
    assert await Execution.objects.filter(output="a299").aexists()
    if isinstance(rig.sink, FileJournal):  # the dead writer's drained file is gone, ours stays
        assert rig.sink.path is not None
        assert sorted(p.name for p in rig.sink.directory.glob("*.jsonl")) == [rig.sink.path.name]


# --- the drainer loop and the command ----------------------------------------------------------


@threaded_db
async def test_the_drainer_stores_in_the_background_and_drains_once_more_on_stop(
    rig: Rig,
) -> None:
    drainer = RecordDrainer(rig.drain, interval_s=0.01)
    drainer.start()
    requests = [request_for() for _ in range(120)]
    for request in requests:
        await rig.sink.started(request, CREATED)
        await rig.sink.finished(result_for(request))
    await drainer.stop()

    assert await Execution.objects.filter(status="degraded").acount() == 120
    assert drainer.drained == 240


async def test_the_drainer_keeps_going_after_a_failed_drain() -> None:
    calls: list[str] = []
    second = asyncio.Event()

    async def drain() -> DrainResult:
        calls.append("call")
        if len(calls) == 1:
            raise RuntimeError("database went away")
        second.set()
        return DrainResult(events=1)

    drainer = RecordDrainer(drain, interval_s=0.001)
    drainer.start()
    await asyncio.wait_for(second.wait(), timeout=10)
    await drainer.stop()
    assert len(calls) >= 3  # the failure, a success, and the final drain
    assert drainer.drained == len(calls) - 1


async def test_a_store_that_did_not_answer_is_a_warning_until_it_keeps_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = [RedisTimeoutError("Timeout reading from 127.0.0.1:6379")] * 3 + [
        RuntimeError("a bug")
    ]
    done = asyncio.Event()

    async def drain() -> DrainResult:
        if failures:
            raise failures.pop(0)
        done.set()
        return DrainResult()

    drainer = RecordDrainer(drain, interval_s=0.001, max_backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="breakwater.recording"):
        drainer.start()
        await asyncio.wait_for(done.wait(), timeout=10)
        await drainer.stop()
    logged = [(r.levelname, r.exc_info is not None) for r in caplog.records]
    # Two timeouts: one line each. The third in a row, and any other error: the traceback.
    assert logged == [("WARNING", False), ("WARNING", False), ("ERROR", True), ("ERROR", True)]
    assert "TimeoutError: Timeout reading from 127.0.0.1:6379" in caplog.records[0].getMessage()


async def test_drain_now_while_the_loop_is_draining_waits_and_then_drains_itself() -> None:
    """A caller asking for a drain wants what was journaled before it asked: when the background
    loop is mid-drain (its batch read before that), drain_now waits for it, then drains again
    (it used to return at once, and the caller read a row still "running")."""
    calls: list[str] = []
    first_started, release_first = asyncio.Event(), asyncio.Event()

    async def drain() -> DrainResult:
        calls.append("loop" if not calls else "now")
        if len(calls) == 1:
            first_started.set()
            await release_first.wait()  # the loop's drain, in progress
        return DrainResult(events=1)

    drainer = RecordDrainer(drain, interval_s=60)
    drainer.start()
    await asyncio.wait_for(first_started.wait(), timeout=10)
    asked = asyncio.ensure_future(drainer.drain_now())
    await asyncio.sleep(0.05)
    assert not asked.done()  # waiting for the loop's drain, not answering "busy"
    assert calls == ["loop"]
    release_first.set()
    result = await asyncio.wait_for(asked, timeout=10)
    assert calls == ["loop", "now"]  # its own drain, after the loop's
    assert result.events == 1
    await drainer.stop()


@threaded_db
def test_drain_records_once_empties_the_embedded_journal(tmp_path: Path) -> None:
    with override_settings(EMBEDDED=True, VAR_DIR=tmp_path):
        sink = FileJournal(tmp_path / "journal")
        for _ in range(3):
            sink.append(encode_started(request_for(), CREATED) + b"\n")
        out = StringIO()
        call_command("drain_records", "--once", stdout=out)
    assert out.getvalue().strip() == "drained 3 events into 3 executions (0 set aside)"
    assert Execution.objects.filter(status="running").count() == 3


# --- file journal specifics --------------------------------------------------------------------


def journal_line(request: ExecutionRequest) -> bytes:
    return encode_started(request, CREATED) + b"\n"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.django_db
def test_a_torn_last_line_waits_while_its_writer_lives(tmp_path: Path) -> None:
    first, second = request_for(), request_for()
    path = tmp_path / f"{os.getpid()}-1.jsonl"  # this process: alive
    line = journal_line(second)
    path.write_bytes(journal_line(first) + line[:40])

    assert drain_files_once(tmp_path).events == 1
    assert Path(f"{path}.offset").read_text() == str(len(journal_line(first)))
    with path.open("ab") as fh:
        fh.write(line[40:])
    assert drain_files_once(tmp_path).events == 1
    assert Execution.objects.count() == 2
    assert path.exists()


@pytest.mark.django_db
def test_a_torn_last_line_of_a_dead_writer_is_skipped_and_its_file_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / f"{dead_pid()}-1.jsonl"
    path.write_bytes(journal_line(request_for()) + journal_line(request_for())[:40])

    with caplog.at_level(logging.WARNING, logger="breakwater.recording"):
        assert drain_files_once(tmp_path).events == 1
    assert "torn line" in caplog.text
    assert Execution.objects.count() == 1
    assert not path.exists()
    assert not Path(f"{path}.offset").exists()


@pytest.mark.django_db
def test_a_drainer_returns_at_once_while_another_holds_the_lock(tmp_path: Path) -> None:
    sink = FileJournal(tmp_path)
    sink.append(journal_line(request_for()))
    fd = os.open(tmp_path / "drain.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert drain_files_once(tmp_path) == DrainResult(locked=True)
        assert Execution.objects.count() == 0
    finally:
        os.close(fd)
    assert drain_files_once(tmp_path).events == 1
    sink.close()


@threaded_db
def test_concurrent_drainers_never_process_one_event_twice(tmp_path: Path) -> None:
    sink = FileJournal(tmp_path)
    for _ in range(600):
        sink.append(journal_line(request_for()))
    counted: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def drainer() -> None:
        start.wait()
        mine = 0
        try:
            for _ in range(5000):
                result = with_fresh_connections(drain_files_once, tmp_path, batch_size=25)
                mine += result.events
                if result.locked:
                    time.sleep(0.0005)
                elif not result.full and result.events == 0:
                    break
        except BaseException as exc:
            errors.append(exc)
        counted.append(mine)

    threads = [threading.Thread(target=drainer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(counted) == 2
    assert sum(counted) == 600
    assert Execution.objects.count() == 600
    sink.close()


@pytest.mark.django_db
def test_a_lost_offset_rereads_the_file_without_duplicating_rows(tmp_path: Path) -> None:
    sink = FileJournal(tmp_path)
    request = request_for()
    sink.append(journal_line(request))
    sink.append(encode_finished(result_for(request)) + b"\n")
    drain_files_once(tmp_path)
    before = rows()
    assert sink.path is not None
    Path(f"{sink.path}.offset").unlink()

    assert drain_files_once(tmp_path).events == 2
    assert rows() == before
    sink.close()


@pytest.mark.django_db
def test_rotated_files_are_deleted_once_drained_and_the_current_one_is_kept(
    tmp_path: Path,
) -> None:
    sink = FileJournal(tmp_path, max_bytes=1000)
    for _ in range(12):
        sink.append(journal_line(request_for()))
    assert len(list(tmp_path.glob("*.jsonl"))) > 2

    while drain_files_once(tmp_path, batch_size=5).full:
        pass
    assert Execution.objects.count() == 12
    assert sink.path is not None
    assert [p.name for p in tmp_path.glob("*.jsonl")] == [sink.path.name]
    sink.close()


@pytest.mark.django_db
def test_a_second_journal_in_the_process_does_not_end_the_first_ones_file(
    tmp_path: Path,
) -> None:
    """An embedded worker's engine opens a journal next to serve's, in the same process: the
    newer file must not make the older one look rotated and get it deleted while it is written."""
    serve = FileJournal(tmp_path)
    serve.append(journal_line(request_for()))
    worker = FileJournal(tmp_path)  # a newer file of the same pid
    worker.append(journal_line(request_for()))
    assert drain_files_once(tmp_path).events == 2
    assert serve.path is not None
    assert serve.path.exists()

    serve.append(journal_line(request_for()))  # still written, still drained
    assert drain_files_once(tmp_path).events == 1
    assert Execution.objects.count() == 3
    serve.close()  # now it is rotated-and-closed: drained, deleted
    drain_files_once(tmp_path)
    assert not serve.path.exists()
    worker.close()


@pytest.mark.django_db
def test_a_line_that_is_not_an_event_is_set_aside_in_rejected_jsonl(tmp_path: Path) -> None:
    sink = FileJournal(tmp_path)
    sink.append(b"{not json\n")
    sink.append(journal_line(request_for()))

    result = drain_files_once(tmp_path)
    assert (result.events, result.rows, result.rejected) == (2, 1, 1)
    [aside] = [json.loads(x) for x in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert aside["line"] == "{not json"
    assert aside["offset"] == 0
    sink.close()


# --- Redis journal specifics -------------------------------------------------------------------


@threaded_db
async def test_entries_a_dead_consumer_read_are_claimed_once_idle(
    redis_client: aioredis.Redis, stream: str
) -> None:
    sink = RedisJournal(redis_client, stream)
    requests = [request_for() for _ in range(5)]
    for request in requests:
        await sink.started(request, CREATED)
        await sink.finished(result_for(request))
    await ensure_group(redis_client, stream)
    read: Any = await redis_client.xreadgroup(GROUP, "dead-consumer", {stream: ">"}, count=100)
    assert len(read[0][1]) == 10  # read, never acknowledged

    patient = await drain_redis_once(redis_client, stream, consumer="live", claim_idle_s=60)
    assert patient.events == 0
    await asyncio.sleep(0.3)
    claimed = await drain_redis_once(redis_client, stream, consumer="live", claim_idle_s=0.2)

    assert (claimed.events, claimed.rows) == (10, 5)
    assert await Execution.objects.filter(status="degraded").acount() == 5
    assert (await redis_client.xpending(stream, GROUP))["pending"] == 0
    assert await redis_client.xlen(stream) == 0


@threaded_db
async def test_two_consumers_share_the_stream_without_overlap(
    redis_client: aioredis.Redis, stream: str
) -> None:
    sink = RedisJournal(redis_client, stream)
    for _ in range(40):
        await sink.started(request_for(), CREATED)
    seen = 0
    for _ in range(4):
        for consumer in ("a", "b"):
            seen += (
                await drain_redis_once(redis_client, stream, consumer=consumer, batch_size=5)
            ).events
    assert seen == 40
    assert await Execution.objects.acount() == 40


@threaded_db
async def test_a_malformed_entry_goes_to_the_rejected_stream(
    redis_client: aioredis.Redis, stream: str
) -> None:
    await redis_client.xadd(stream, {"e": b'{"event": "started"}'})
    await RedisJournal(redis_client, stream).started(request_for(), CREATED)

    result = await drain_redis_once(redis_client, stream, consumer="c")
    assert (result.events, result.rows, result.rejected) == (2, 1, 1)
    aside: Any = await redis_client.xrange(f"{stream}:rejected")
    [(_, fields)] = aside
    assert fields[b"e"] == b'{"event": "started"}'
    assert b"KeyError" in fields[b"error"]


@threaded_db
async def test_the_drainer_recreates_a_group_that_disappeared(
    redis_client: aioredis.Redis, stream: str
) -> None:
    sink = RedisJournal(redis_client, stream)
    await sink.started(request_for(), CREATED)
    await drain_redis_once(redis_client, stream, consumer="c")
    await redis_client.delete(stream)  # e.g. FLUSHALL, or the key evicted
    await sink.started(request_for(), CREATED)

    assert (await drain_redis_once(redis_client, stream, consumer="c")).rows == 1
    assert await Execution.objects.acount() == 2


async def test_consumers_long_gone_with_nothing_pending_are_forgotten(
    redis_client: aioredis.Redis, stream: str
) -> None:
    await RedisJournal(redis_client, stream).started(request_for(), CREATED)
    await ensure_group(redis_client, stream)
    await redis_client.xreadgroup(GROUP, "holds-one", {stream: ">"}, count=1)
    await redis_client.xgroup_createconsumer(stream, GROUP, "gone")
    await asyncio.sleep(0.05)

    assert await prune_consumers(redis_client, stream, idle_s=0.01) == 1
    names = {c["name"] for c in await redis_client.xinfo_consumers(stream, GROUP)}
    assert names == {b"holds-one"}


def test_encoded_events_are_single_utf8_lines_that_decode_to_what_was_said() -> None:
    request = request_for(messages=(Message("user", "naïve\ncafé 🙂"),), metadata={"x": {1}})
    for payload in (encode_started(request, CREATED), encode_finished(result_for(request))):
        assert b"\n" not in payload
        assert json.loads(payload)["input"] == [{"role": "user", "content": "naïve\ncafé 🙂"}]
        assert json.loads(payload)["metadata"] == {"x": "{1}"}  # odd metadata: its str()


def test_text_that_is_not_utf8_is_still_encoded_as_one_escaped_ascii_line() -> None:
    request = request_for(messages=(Message("user", "lone \udcff surrogate"),))
    for payload in (encode_started(request, CREATED), encode_finished(result_for(request))):
        assert b"\n" not in payload
        payload.decode("ascii")
        assert json.loads(payload)["input"][0]["content"] == "lone \udcff surrogate"


@pytest.mark.django_db(transaction=True)
def test_a_nul_in_a_prompt_or_an_answer_is_stored_as_a_replacement_character(
    tmp_path: Path,
) -> None:
    """PostgreSQL's text and jsonb refuse NUL: the event must still be stored, not set aside."""
    request = request_for(messages=(Message("user", "a\x00b"),), metadata={"k\x00": "v\x00"})
    result = result_for(request, output="answer\x00")
    (tmp_path / f"{dead_pid()}-1.jsonl").write_bytes(
        encode_started(request, CREATED) + b"\n" + encode_finished(result) + b"\n"
    )
    outcome = drain_files_once(tmp_path)
    assert (outcome.events, outcome.rejected) == (2, 0)
    row = Execution.objects.get(id=request.execution_id)
    assert row.input == [{"role": "user", "content": "a\ufffdb"}]
    assert row.output == "answer\ufffd"
    assert row.metadata == {"k\ufffd": "v\ufffd"}
