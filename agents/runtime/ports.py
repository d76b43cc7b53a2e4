"""Ports the executor depends on besides state and providers (adapters live outside runtime/)."""

from __future__ import annotations

from typing import Protocol

from agents.runtime.state import BudgetHold, StateStore, StreamRecord, Transition, WindowInit
from agents.runtime.types import (
    AgentConfig,
    BudgetRule,
    Deployment,
    ExecutionRequest,
    ExecutionResult,
    Message,
)


class ConfigSource(Protocol):
    """Agents and deployments, cached in memory by the adapter (no database on the hot path)."""

    def agent(self, name: str) -> AgentConfig | None: ...

    def deployments(self, model: str) -> tuple[Deployment, ...]:
        """Enabled deployments of a logical model."""
        ...

    def budgets(self, agent: str, api_key_id: int | None) -> tuple[BudgetRule, ...]:
        """Every budget that applies to an execution of ``agent`` under ``api_key_id``."""
        ...


class EventSink(Protocol):
    """Live events for the console, metrics and incidents. Must not block or raise."""

    def breaker_transition(self, transition: Transition) -> None: ...

    def execution_started(self, execution_id: str, agent: str) -> None: ...

    def execution_token(self, execution_id: str, text: str) -> None: ...

    def execution_finished(self, result: ExecutionResult) -> None: ...

    def dependency_changed(self, kind: str, available: bool, detail: str) -> None:
        """A dependency every execution needs (``kind``: ``state_unavailable``,
        ``recording_unavailable``) stopped answering, or answers again; reported by each process
        once per change."""
        ...


class RecordSink(Protocol):
    """Durable, write-behind recording of executions (idempotent on execution_id).

    ``started`` and ``finished`` return once the event is durable (journal file or Redis
    stream), never after a database round trip; a drainer moves events into the database.
    An execution whose process dies after ``started`` is still found (and failed) later.
    """

    async def started(
        self,
        request: ExecutionRequest,
        created_at: float,
        *,
        reserved_micros: int = 0,
        budget_keys: tuple[str, ...] = (),
    ) -> None:
        """``reserved_micros``: what admission reserves against ``budget_keys`` (the first
        attempt's worst case), so that a process that dies mid-call can be charged for it.
        Raises :class:`~agents.runtime.state.RecordingUnavailable` when it cannot be made
        durable."""
        ...

    async def finished(self, result: ExecutionResult) -> None: ...


class AdmissionRecords(Protocol):
    """A :class:`RecordSink` whose ``started`` event the state store can append itself, in the
    admission that admits (``AdmitRequest.record``): a journal on the state's own Redis. Then a
    process killed between admission and journal cannot leave a reservation without a record
    (whose budget counters would count money the ledger never hears of)."""

    def started_record(
        self, request: ExecutionRequest, created_at: float, *, reserved_micros: int
    ) -> StreamRecord:
        """The ``started`` event as the stream entry admission appends."""
        ...

    def record_written(self, record: StreamRecord, entry_id: bytes) -> None:
        """Admission appended ``record`` as ``entry_id``: kept like an event of its own (a
        replay after Redis lost its data writes it again)."""
        ...


class BudgetWindows(Protocol):
    """Rebuilds budget windows the state store does not know (a new window, a restarted
    process, a Redis that lost its data) before admission counts against them."""

    async def prepare(self, holds: tuple[BudgetHold, ...]) -> None:
        """Make the windows of ``holds`` known to the store; raises
        :class:`~agents.runtime.state.BudgetsUnavailable` (or ``StateUnavailable``) when that
        cannot be done now."""
        ...


class NewBudgetWindows:
    """Windows start empty: for a runtime without a durable ledger (tests, benchmarks). The
    Django side rebuilds them from the ledger instead (``budgets.windows``)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    async def prepare(self, holds: tuple[BudgetHold, ...]) -> None:
        await self._state.budget_prepare(tuple(WindowInit(h.key, 0, h.ttl_s) for h in holds))


class SessionStore(Protocol):
    """Conversation memory for ``session_id``, scoped to the API key that holds it.

    A conversation is (``api_key_id``, agent, ``session_id``): another key reusing a session id
    sees none of it. ``api_key_id=None`` (no key: console, internal callers) is a scope of its
    own, never readable with a key.
    """

    async def history(
        self, agent: str, session_id: str, *, api_key_id: int | None
    ) -> tuple[Message, ...]: ...

    async def append(
        self,
        agent: str,
        session_id: str,
        messages: tuple[Message, ...],
        *,
        api_key_id: int | None,
    ) -> None: ...


class NullEvents:
    def breaker_transition(self, transition: Transition) -> None:
        return None

    def execution_started(self, execution_id: str, agent: str) -> None:
        return None

    def execution_token(self, execution_id: str, text: str) -> None:
        return None

    def execution_finished(self, result: ExecutionResult) -> None:
        return None

    def dependency_changed(self, kind: str, available: bool, detail: str) -> None:
        return None


class ListRecords:
    """Keeps events in memory (tests, benchmarks)."""

    def __init__(self) -> None:
        self.started_ids: list[str] = []
        self.results: list[ExecutionResult] = []

    async def started(
        self,
        request: ExecutionRequest,
        created_at: float,
        *,
        reserved_micros: int = 0,
        budget_keys: tuple[str, ...] = (),
    ) -> None:
        self.started_ids.append(request.execution_id)

    async def finished(self, result: ExecutionResult) -> None:
        self.results.append(result)
