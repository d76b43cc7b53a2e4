"""Fan-out of runtime events to several sinks (metrics, live console events, incidents)."""

from __future__ import annotations

import logging

from agents.access.disclosure import log_failed_attempts
from agents.runtime.ports import EventSink
from agents.runtime.state import Transition
from agents.runtime.types import ExecutionResult

logger = logging.getLogger(__name__)


class CompositeEvents:
    """An ``EventSink`` that passes every event to each sink in order.

    The port promises never to raise, so a failing sink is logged and skipped: the others still
    receive the event and the execution is unaffected.
    """

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks: tuple[EventSink, ...] = sinks

    def breaker_transition(self, transition: Transition) -> None:
        for sink in self.sinks:
            try:
                sink.breaker_transition(transition)
            except Exception:
                logger.exception("event sink %r failed on breaker_transition", sink)

    def execution_started(self, execution_id: str, agent: str) -> None:
        for sink in self.sinks:
            try:
                sink.execution_started(execution_id, agent)
            except Exception:
                logger.exception("event sink %r failed on execution_started", sink)

    def execution_token(self, execution_id: str, text: str) -> None:
        for sink in self.sinks:
            try:
                sink.execution_token(execution_id, text)
            except Exception:
                logger.exception("event sink %r failed on execution_token", sink)

    def execution_finished(self, result: ExecutionResult) -> None:
        try:
            # Every finished execution passes here once: the log keeps the full text of its
            # failed attempts, which execute-scoped callers see summarized (agents.access.disclosure).
            log_failed_attempts(result)
        except Exception:
            logger.exception("logging the failed attempts of %s failed", result.execution_id)
        for sink in self.sinks:
            try:
                sink.execution_finished(result)
            except Exception:
                logger.exception("event sink %r failed on execution_finished", sink)

    def dependency_changed(self, kind: str, available: bool, detail: str) -> None:
        for sink in self.sinks:
            try:
                sink.dependency_changed(kind, available, detail)
            except Exception:
                logger.exception("event sink %r failed on dependency_changed", sink)
