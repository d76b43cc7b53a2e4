"""Live events of queued executions over the channel layer, and the cancel signal they obey.

:class:`LiveEvents` is an :class:`~agents.runtime.ports.EventSink` added to an engine's
``CompositeEvents``. It publishes only the executions it was asked to :meth:`~LiveEvents.watch`
(those run by ``agents.tasks.execution_run``); a synchronous execution costs it one dict look-up
per event. For a watched execution the sink methods only append to a per-execution queue (no I/O,
no await): one sender task per execution does the ``group_send`` calls in order, so the hot path
never waits for the channel layer and a client sees ``status``, the tokens, then ``completed``
in that order. Tokens arriving within ``coalesce_s`` of each other travel as one message (a
simulated 200-word answer is one message instead of 200; see docs/ASYNC.md for figures).

Messages sent to the group ``execution.<id>`` (``type`` names the consumer handler):

* ``execution.status`` ``{"execution_id", "status", "seq"}``
* ``execution.token`` ``{"execution_id", "text", "seq"}``
* ``execution.completed`` ``{"execution_id", "result", "seq"}`` (the stored execution, as the
  API returns it)

:class:`CancelFlags` carries a cancel request from the API process to the process running the
execution: a Redis key in distributed mode, a process-wide set in embedded mode (where the API
and the in-process worker share the process). The runner polls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from agents.runtime.state import Transition
from agents.runtime.types import ExecutionResult

log = logging.getLogger("breakwater.live")

COALESCE_S = 0.05
CLOSE_TIMEOUT_S = 5.0


def group_name(execution_id: str) -> str:
    return f"execution.{execution_id}"


def _layer() -> Any:
    from channels.layers import get_channel_layer

    return get_channel_layer()


@dataclass
class _Stream:
    execution_id: str
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    tokens: list[str] = field(default_factory=list)
    flush_handle: asyncio.TimerHandle | None = None
    sender: asyncio.Task[None] | None = None
    seq: int = 0
    result: ExecutionResult | None = None
    sent: int = 0  # messages handed to the channel layer (for tests and measurements)

    def put(self, message: dict[str, Any]) -> None:
        self.seq += 1
        message["seq"] = self.seq
        message["execution_id"] = self.execution_id
        self.queue.put_nowait(message)


class LiveEvents:
    """Publishes watched executions' status and tokens to their channel-layer group."""

    def __init__(self, layer: Any = None, *, coalesce_s: float = COALESCE_S) -> None:
        self._layer = layer
        self._coalesce_s = coalesce_s
        self._streams: dict[str, _Stream] = {}

    @property
    def layer(self) -> Any:
        if self._layer is None:
            self._layer = _layer()
        return self._layer

    # --- control (from the runner, in the engine's loop) -------------------------------------

    def watch(self, execution_id: str) -> None:
        """Publish this execution's events from now on (call in the engine's running loop)."""
        if execution_id in self._streams:
            return
        stream = _Stream(execution_id)
        stream.sender = asyncio.get_running_loop().create_task(
            self._send_loop(stream), name=f"bw-live-{execution_id[:8]}"
        )
        self._streams[execution_id] = stream

    def result(self, execution_id: str) -> ExecutionResult | None:
        """The result the executor reported for a watched execution (cancelled ones included)."""
        stream = self._streams.get(execution_id)
        return None if stream is None else stream.result

    async def complete(self, execution_id: str, result: dict[str, Any] | None) -> int:
        """Send the pending tokens, then ``completed`` (unless ``result`` is None), and stop
        watching. Waits up to ``CLOSE_TIMEOUT_S`` for the sends; returns how many were sent."""
        stream = self._streams.pop(execution_id, None)
        if stream is None:
            return 0
        self._flush(stream)
        if result is not None:
            stream.put({"type": "execution.completed", "result": result})
        stream.queue.put_nowait(None)
        if stream.sender is not None:
            try:
                await asyncio.wait_for(asyncio.shield(stream.sender), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning(
                    "live events of %s not all sent in %.0fs", execution_id, CLOSE_TIMEOUT_S
                )
                stream.sender.cancel()
        return stream.sent

    async def _send_loop(self, stream: _Stream) -> None:
        group = group_name(stream.execution_id)
        while True:
            message = await stream.queue.get()
            if message is None:
                return
            try:
                await self.layer.group_send(group, message)
                stream.sent += 1
            except Exception:  # the channel layer is down: the execution goes on regardless
                log.warning("live event for %s not sent", stream.execution_id, exc_info=True)

    def _flush(self, stream: _Stream) -> None:
        if stream.flush_handle is not None:
            stream.flush_handle.cancel()
            stream.flush_handle = None
        if stream.tokens:
            text = "".join(stream.tokens)
            stream.tokens.clear()
            stream.put({"type": "execution.token", "text": text})

    # --- EventSink (called by the executor; must not block or raise) -------------------------

    def breaker_transition(self, transition: Transition) -> None:
        return None

    def dependency_changed(self, kind: str, available: bool, detail: str) -> None:
        return None

    def execution_started(self, execution_id: str, agent: str) -> None:
        stream = self._streams.get(execution_id)
        if stream is not None:
            stream.put({"type": "execution.status", "status": "running"})

    def execution_token(self, execution_id: str, text: str) -> None:
        stream = self._streams.get(execution_id)
        if stream is None:
            return
        stream.tokens.append(text)
        if stream.flush_handle is None:
            stream.flush_handle = asyncio.get_running_loop().call_later(
                self._coalesce_s, self._flush, stream
            )

    def execution_finished(self, result: ExecutionResult) -> None:
        stream = self._streams.get(result.execution_id)
        if stream is not None:
            stream.result = result
            self._flush(stream)


def live_events_for(engine: Any) -> LiveEvents:
    """The engine's :class:`LiveEvents` sink, added to its ``CompositeEvents`` on first use."""
    for sink in engine.events.sinks:
        if isinstance(sink, LiveEvents):
            return sink
    sink = LiveEvents()
    engine.events.sinks = (*engine.events.sinks, sink)
    return sink


async def publish(execution_id: str, message: dict[str, Any]) -> None:
    """One message to an execution's group, outside a run (a queued execution cancelled)."""
    try:
        await _layer().group_send(group_name(execution_id), message)
    except Exception:
        log.warning("live event for %s not sent", execution_id, exc_info=True)


# --- cancel requests -----------------------------------------------------------------------


class MemoryCancelFlags:
    """Embedded mode: the API and the in-process worker share this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def request(self, execution_id: str, ttl_s: float) -> None:
        with self._lock:
            self._ids.add(execution_id)

    async def requested(self, execution_id: str) -> bool:
        return execution_id in self._ids

    def clear(self, execution_id: str) -> None:
        with self._lock:
            self._ids.discard(execution_id)


class RedisCancelFlags:
    """Distributed mode: ``bw:cancel:<id>``, set by the API (sync client, in a request thread),
    polled by the worker running the execution (async client, in its loop)."""

    PREFIX = "bw:cancel:"

    def request(self, execution_id: str, ttl_s: float) -> None:
        from core.redis import get_redis

        get_redis().set(self.PREFIX + execution_id, b"1", ex=max(1, int(ttl_s)))

    async def requested(self, execution_id: str) -> bool:
        from core.redis import get_async_redis

        return bool(await get_async_redis().exists(self.PREFIX + execution_id))

    def clear(self, execution_id: str) -> None:
        from core.redis import get_redis

        with contextlib.suppress(Exception):
            get_redis().delete(self.PREFIX + execution_id)
