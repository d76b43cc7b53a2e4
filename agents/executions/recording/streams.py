"""Distributed mode: the journal is a Redis stream read by the consumer group ``bw-recorders``.

Claim loop of :func:`drain_redis_once`, one pipelined round trip to read and one to acknowledge:

1. ``XAUTOCLAIM`` entries idle longer than ``claim_idle_s``: those a consumer read and never
   acknowledged (it died, or its database write failed) move to this consumer;
2. ``XREADGROUP ... 0``: this consumer's own pending entries (the ones just claimed, and any
   left by one of its earlier drains that failed);
3. ``XREADGROUP ... >``: new entries.

The events are stored in one transaction (in a thread), and only then ``XACK`` + ``XDEL`` remove
them (one group reads the stream, so an acknowledged entry is needed by no one). The stream is
capped by ``MAXLEN ~`` as a last resort: entries trimmed before any drainer stored them are
lost, and reported as such; size the cap to outlast a drainer outage.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.executions.recording.drainer import DrainResult, with_fresh_connections
from agents.executions.recording.events import Row, encode_finished, encode_started, row_from_event
from agents.executions.recording.store import StoreOutcome, store_rows
from agents.runtime.redis_wire import RedisCommands
from agents.runtime.state import RecordingUnavailable, StreamRecord
from agents.runtime.types import ExecutionRequest, ExecutionResult

log = logging.getLogger("breakwater.recording")

STREAM = "bw:journal"
GROUP = "bw-recorders"
MAXLEN = 1_000_000
FIELD = "e"


REPLAY_S = 60.0  # how long a writer keeps the events it wrote, to write them again (see below)
KEPT_MAX = 50_000  # events kept for a replay or a resend, at most (each a few hundred bytes)


class RedisJournal:
    """A :class:`~agents.runtime.ports.RecordSink` doing one ``XADD`` per event.

    Returns once Redis acknowledged the entry: it then survives the death of this process. Its
    survival of a Redis restart is Redis's persistence setting (AOF ``everysec`` loses at most
    about a second). Errors (Redis unreachable) are raised, not swallowed.

    Two more guards, run by :meth:`maintain` every second (the engine's loop):

    * **an event that could not be written is written again** once Redis answers: a
      ``finished`` whose ``XADD`` timed out in a stall (its caller already had the answer) is
      not lost, and its row does not stay ``running``;
    * **a Redis that lost its data gets this writer's recent events again.** The stream has an
      epoch (a random value in ``<stream>:epoch``); when it is gone or changed, Redis lost the
      stream and the entries not yet drained with it, so every event written in the last
      ``REPLAY_S`` seconds is written again. Events are idempotent (the drainer upserts), so a
      replay of events already stored changes nothing.

    Events of a process that died together with Redis's data are lost: production Redis needs
    AOF (docs/RELIABILITY.md).
    """

    def __init__(
        self,
        client: RedisCommands,
        stream: str = STREAM,
        *,
        maxlen: int = MAXLEN,
        owner: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.owner = owner  # the process identity written on "started" events
        self._client = client
        self.stream = stream
        self._maxlen = maxlen
        self._clock = clock
        # (written at, entry id, event) not yet known to be drained: what a replay writes again
        self._recent: collections.deque[tuple[float, bytes, bytes]] = collections.deque(
            maxlen=KEPT_MAX
        )
        self._unsent: collections.deque[bytes] = collections.deque(maxlen=KEPT_MAX)
        self._epoch: bytes | None = None  # the stream's epoch as this writer last saw it
        self._replay: tuple[Any, Any] | None = None  # the entry ids of the last replay
        self.replayed = 0  # events written again (a Redis that lost its data, or unsent ones)

    async def _add(self, payload: bytes) -> None:
        try:
            entry_id = await self._xadd(payload)
        except (RedisConnectionError, RedisTimeoutError):
            self._unsent.append(payload)  # written again by maintain() once Redis answers
            raise
        self._recent.append((self._clock(), _stream_id(entry_id), payload))

    async def _xadd(self, payload: bytes) -> Any:
        return await self._client.execute_command(
            "XADD", self.stream, "MAXLEN", "~", self._maxlen, "*", FIELD, payload
        )

    async def started(
        self,
        request: ExecutionRequest,
        created_at: float,
        *,
        reserved_micros: int = 0,
        budget_keys: tuple[str, ...] = (),
    ) -> None:
        try:
            await self._add(
                encode_started(
                    request, created_at, owner=self.owner, reserved_micros=reserved_micros
                )
            )
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RecordingUnavailable(f"Redis journal: {exc}") from exc

    def started_record(
        self, request: ExecutionRequest, created_at: float, *, reserved_micros: int
    ) -> StreamRecord:
        """``started`` as the entry the state's admission appends (``AdmissionRecords``)."""
        return StreamRecord(
            stream=self.stream,
            maxlen=self._maxlen,
            field=FIELD,
            value=encode_started(
                request, created_at, owner=self.owner, reserved_micros=reserved_micros
            ),
        )

    def record_written(self, record: StreamRecord, entry_id: bytes) -> None:
        self._recent.append((self._clock(), _stream_id(entry_id), record.value))

    async def finished(self, result: ExecutionResult) -> None:
        await self._add(encode_finished(result))

    async def maintain(self) -> int:
        """Write again what Redis did not take or lost (see the class doc); returns the events
        written. Raises what Redis raises (still unreachable): call it again later."""
        epoch_key = f"{self.stream}:epoch"
        seen = await self._client.execute_command("GET", epoch_key)
        if seen is None:
            await self._client.execute_command(
                "SET", epoch_key, secrets.token_hex(8).encode(), "NX"
            )
            seen = await self._client.execute_command("GET", epoch_key)
        lost = self._epoch is not None and seen != self._epoch
        self._epoch = seen
        now = self._clock()
        while self._recent and self._recent[0][0] < now - REPLAY_S:
            self._recent.popleft()
        if not lost:
            await self._forget_drained()
        again: list[bytes] = list(self._unsent)
        if lost:
            again += [payload for _, _, payload in self._recent]
            log.warning(
                "Redis lost the journal stream %s (its epoch changed): writing the last %d "
                "event(s) of this process again",
                self.stream,
                len(self._recent),
            )
            self._recent.clear()
        if not again:
            return 0
        unsent = len(self._unsent)
        ids = await asyncio.gather(*(self._xadd(payload) for payload in again))  # one write
        for _ in range(min(unsent, len(self._unsent))):
            self._unsent.popleft()
        for entry_id, payload in zip(ids, again, strict=True):
            self._recent.append((now, _stream_id(entry_id), payload))
        self._replay = (ids[0], ids[-1])
        self.replayed += len(again)
        return len(again)

    async def _forget_drained(self) -> None:
        """Drop the kept events that are drained: the stream holds only undrained entries (the
        drainers delete what they stored), so everything older than its first entry is stored.
        One round trip."""
        if not self._recent:
            return
        first = await self._client.execute_command("XRANGE", self.stream, "-", "+", "COUNT", 1)
        oldest = _stream_id(first[0][0]) if first else None
        while self._recent and (oldest is None or _id_key(self._recent[0][1]) < _id_key(oldest)):
            self._recent.popleft()

    async def wait_replay_stored(self, timeout_s: float = 2.0) -> bool:
        """Wait until the drainers stored (and deleted) what the last :meth:`maintain` wrote
        again; False if they had not within ``timeout_s``. A budget window rebuilt from the
        database after Redis lost its data must see those executions' records."""
        if self._replay is None:
            return True
        first, last = self._replay
        give_up = self._clock() + timeout_s
        while await self._client.execute_command("XRANGE", self.stream, first, last, "COUNT", 1):
            if self._clock() > give_up:
                return False
            await asyncio.sleep(0.02)
        self._replay = None
        return True

    def close(self) -> None:
        """Nothing to release: the client is shared (``core.redis``). For symmetry with
        :meth:`FileJournal.close <agents.executions.recording.files.FileJournal.close>`."""


def _stream_id(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _id_key(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a sortable pair."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def consumer_name() -> str:
    """Distinct per drainer (host, pid and a random tag): two drainers of one process never
    read each other's pending entries, and a dead one's are claimed by the others."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> Iterable[tuple[Any, dict[Any, Any]]]:
    """Entries of an XREADGROUP reply, whichever shape the client parsed it into."""
    streams = reply.values() if isinstance(reply, dict) else (r[1] for r in reply or ())
    for entries in streams:
        # RESP3 wraps each stream's entries in one more list.
        if entries and isinstance(entries[0], list):
            entries = entries[0]
        yield from entries


async def ensure_group(client: aioredis.Redis, stream: str = STREAM, group: str = GROUP) -> None:
    """Create the group reading from the stream's start (entries written before it count)."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _read(
    client: aioredis.Redis, stream: str, group: str, consumer: str, count: int, idle_ms: int
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    pipe.xautoclaim(stream, group, consumer, min_idle_time=idle_ms, start_id="0-0", count=count)
    pipe.xreadgroup(group, consumer, {stream: "0"}, count=count)
    pipe.xreadgroup(group, consumer, {stream: ">"}, count=count)
    result: list[Any] = await pipe.execute()
    return result


async def drain_redis_once(
    client: aioredis.Redis,
    stream: str = STREAM,
    *,
    group: str = GROUP,
    consumer: str | None = None,
    batch_size: int = 500,
    claim_idle_s: float = 30.0,
) -> DrainResult:
    """Store one batch of stream entries, then acknowledge and delete them (see module doc)."""
    consumer = consumer or consumer_name()
    idle_ms = max(1, int(claim_idle_s * 1000))
    try:
        claimed, own, new = await _read(client, stream, group, consumer, batch_size, idle_ms)
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        await ensure_group(client, stream, group)
        claimed, own, new = await _read(client, stream, group, consumer, batch_size, idle_ms)
    own_entries, new_entries = list(_entries(own)), list(_entries(new))
    full = batch_size <= max(len(claimed[1]), len(own_entries), len(new_entries))
    # Redis 7 lists entries that were trimmed away while pending in XAUTOCLAIM's third part
    # (and drops them from the pending list); Redis 6.2 and history reads show them empty.
    trimmed = len(claimed[2]) if len(claimed) > 2 else 0
    ids: list[str] = []
    payloads: list[Any] = []
    seen: set[str] = set()
    for entry_id, fields in (*own_entries, *new_entries):
        if entry_id is None:
            continue
        key = _text(entry_id)
        if key in seen:  # claimed entries are also in the pending list just read
            continue
        seen.add(key)
        payload = (fields or {}).get(FIELD.encode(), (fields or {}).get(FIELD))
        trimmed += payload is None
        ids.append(key)
        payloads.append(payload)
    if trimmed:
        log.error("%d journal entries were trimmed (MAXLEN) before they were stored", trimmed)
    rows: list[tuple[int, Row]] = []
    bad: list[tuple[int, str]] = []
    for index, payload in enumerate(payloads):
        if payload is None:
            continue
        try:
            rows.append((index, row_from_event(payload)))
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            bad.append((index, repr(exc)))
    outcome = StoreOutcome()
    if rows:
        outcome = await asyncio.to_thread(with_fresh_connections, store_rows, rows)
    rejected = sorted(bad + outcome.rejected)
    if ids:
        pipe = client.pipeline(transaction=True)
        for index, reason in rejected:
            log.error("journal entry %s set aside: %s", ids[index], reason)
            pipe.xadd(
                f"{stream}:rejected",
                {FIELD: payloads[index], "id": ids[index], "error": reason},
                maxlen=100_000,
                approximate=True,
            )
        pipe.xack(stream, group, *ids)
        pipe.xdel(stream, *ids)
        await pipe.execute()
    return DrainResult(events=len(ids), rows=outcome.rows, rejected=len(rejected), full=full)


async def prune_consumers(
    client: aioredis.Redis, stream: str = STREAM, group: str = GROUP, *, idle_s: float = 3600
) -> int:
    """Forget consumers (dead processes) with nothing pending and silent for ``idle_s``.

    A live drainer polls every fraction of a second, so it is never that idle; if it were, it
    would simply be re-created by its next read.
    """
    pruned = 0
    for consumer in await client.xinfo_consumers(stream, group):
        if consumer["pending"] == 0 and consumer["idle"] > idle_s * 1000:
            await client.xgroup_delconsumer(stream, group, consumer["name"])
            pruned += 1
    return pruned


def redis_drain(
    client: aioredis.Redis,
    stream: str = STREAM,
    *,
    consumer: str | None = None,
    batch_size: int = 500,
    claim_idle_s: float = 30.0,
    prune_every_s: float = 300.0,
) -> Callable[[], Awaitable[DrainResult]]:
    """:func:`drain_redis_once` bound to its arguments, for :class:`RecordDrainer`; every
    ``prune_every_s`` it also forgets long-gone consumers (:func:`prune_consumers`)."""
    name = consumer or consumer_name()
    next_prune = 0.0

    async def drain() -> DrainResult:
        nonlocal next_prune
        result = await drain_redis_once(
            client, stream, consumer=name, batch_size=batch_size, claim_idle_s=claim_idle_s
        )
        now = asyncio.get_running_loop().time()
        if now >= next_prune:
            next_prune = now + prune_every_s
            try:
                await prune_consumers(client, stream)
            except Exception:
                log.warning("pruning idle journal consumers failed", exc_info=True)
        return result

    return drain


async def stream_lag_s(client: RedisCommands, stream: str = STREAM) -> float:
    """Age in seconds of the stream's oldest entry (0 when empty), by Redis's own clock.

    The drainers delete what they stored, so the oldest entry is the oldest event not yet in
    the database (pending ones included: read by a drainer that has not stored them yet). Its
    id is the time ``XADD`` accepted it. Two commands, sent together (one round trip on a
    pipelining client)."""
    first, now = await asyncio.gather(
        client.execute_command("XRANGE", stream, "-", "+", "COUNT", 1),
        client.execute_command("TIME"),
    )
    if not first:
        return 0.0
    accepted_ms, _ = _id_key(_stream_id(first[0][0]))
    now_s = int(_text(now[0])) + int(_text(now[1])) / 1_000_000
    return max(0.0, now_s - accepted_ms / 1000)
