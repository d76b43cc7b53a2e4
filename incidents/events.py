"""Breaker transitions become incidents: an opened breaker opens (or adds to) an incident, a
half-open probe is a timeline entry, a recovered breaker resolves it. So do the outages of the
dependencies every execution needs (``dependency:<kind>``) and a provider's exhausted quota
(``quota:<deployment>``, :mod:`incidents.quota`).

Writes run on one background thread, in order, so the event sink never blocks the hot path.
Each transition is reported by exactly one process (the one whose atomic state call made it),
so incidents are not duplicated across processes; the database's one-open-per-key constraint
covers the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections
from django.db.models import Q

from agents.runtime.state import BreakerState, Transition
from agents.runtime.types import ExecutionResult
from incidents.models import Severity
from incidents.quota import QuotaWatch

log = logging.getLogger("breakwater.incidents")

_OPEN = {BreakerState.OPEN, BreakerState.FORCED_OPEN}
_CLOSED = {BreakerState.CLOSED, BreakerState.FORCED_CLOSED, BreakerState.DISABLED}


def _describe(key: str) -> tuple[str, str, str]:
    """(title subject, severity, agent name) for a breaker key."""
    kind, _, name = key.partition(":")
    if kind == "agent":
        return f"agent {name}", Severity.CRITICAL, name
    return f"deployment {name}", Severity.MAJOR, ""


def transition_to_incident(transition: Transition) -> None:
    from incidents.services import incident_event_add, incident_open, incident_resolve_by_key

    subject, severity, agent = _describe(transition.key)
    dedup_key = f"breaker:{transition.key}"
    data = {
        "key": transition.key,
        "from": transition.from_state.value,
        "to": transition.to_state.value,
        "at": transition.at,
    }
    if transition.to_state in _OPEN:
        incident_open(
            kind="breaker_open",
            dedup_key=dedup_key,
            title=f"Circuit breaker open: {subject}",
            message=f"breaker opened ({transition.reason})",
            severity=severity,
            agent_name=agent,
            data=data,
        )
    elif transition.to_state == BreakerState.HALF_OPEN:
        from incidents.models import Incident, IncidentStatus

        incident = (
            Incident.objects.filter(dedup_key=dedup_key)
            .exclude(status=IncidentStatus.RESOLVED)
            .first()
        )
        if incident is not None:
            incident_event_add(
                incident=incident, kind="half_open", message="probing recovery", data=data
            )
    elif transition.to_state in _CLOSED:
        incident_resolve_by_key(
            dedup_key=dedup_key, message=f"breaker closed ({transition.reason})", data=data
        )


_DEPENDENCIES = {
    "state_unavailable": "Shared state (Redis) unreachable: executions are refused",
    "recording_unavailable": "Execution journal unavailable: executions are refused",
    "budgets_unavailable": "Budget windows cannot be rebuilt from the ledger: budgeted "
    "executions are refused",
}


def dependency_to_incident(
    kind: str, available: bool, detail: str, *, process: str | None = None
) -> None:
    """One incident per outage of a dependency every execution needs, whichever processes
    report it (the dedup key is the dependency's); resolved when one reports it back. Each
    entry names the reporting process (``process``: its heartbeat id, this process's by
    default), so that :func:`dependency_incidents_sweep` can tell when none is left."""
    from agents.executions.processes import process_owner_id
    from incidents.services import incident_open, incident_resolve_by_key

    dedup_key = f"dependency:{kind}"
    reporter = process if process is not None else process_owner_id()
    if available:
        incident_resolve_by_key(
            dedup_key=dedup_key,
            message=f"answering again ({detail})"[:500],
            data={"dependency": kind, "process": reporter},
        )
        return
    incident_open(
        kind="dependency_down",
        dedup_key=dedup_key,
        title=_DEPENDENCIES.get(kind, f"{kind}: executions are refused"),
        message=detail[:500],
        severity=Severity.CRITICAL,
        data={"dependency": kind, "process": reporter},
    )


def dependency_incidents_sweep() -> list[int]:
    """Resolve the ``dependency_down`` incidents every reporting process of which is gone
    (stopped, or judged dead by its heartbeat: ``agents.executions.processes``): a process
    reports an outage once and only it reports the recovery, so without it nothing would. A
    dependency still down is reported again by the first execution of a live process, as a new
    incident. Returns the ids resolved; two queries per open outage."""
    from agents.models import WorkerProcess
    from incidents.models import Incident, IncidentEvent, IncidentStatus
    from incidents.services import incident_resolve_by_key

    resolved = []
    for incident in Incident.objects.filter(kind="dependency_down").exclude(
        status=IncidentStatus.RESOLVED
    ):
        reporters = {
            (event.data or {}).get("process")
            for event in IncidentEvent.objects.filter(
                incident=incident, kind__in=("opened", "recurred")
            ).only("data")
        }
        if not reporters or None in reporters:
            continue  # reported before processes were named: left to an operator
        gone = WorkerProcess.objects.filter(id__in=reporters).filter(
            Q(dead_at__isnull=False) | Q(stopped_at__isnull=False)
        )
        if gone.count() < len(reporters):
            continue
        if incident_resolve_by_key(
            dedup_key=incident.dedup_key,
            message=f"every process that reported it is gone ({len(reporters)}); a live "
            "process reports the dependency again if it is still down",
            data={"processes": sorted(reporters)},
        ):
            resolved.append(incident.pk)
    return resolved


class IncidentEvents:
    """An :class:`~agents.runtime.ports.EventSink` that turns breaker transitions, dependency
    outages and upstream quota errors (from the steps of finished executions,
    :mod:`incidents.quota`) into incidents."""

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bw-incidents")
        self.quota = QuotaWatch(self._submit, **({"clock": clock} if clock else {}))

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        future = self._thread.submit(self._call, fn, *args)
        future.add_done_callback(self._report)

    @staticmethod
    def _call(fn: Callable[..., None], *args: Any) -> None:
        close_old_connections()
        try:
            fn(*args)
        finally:
            close_old_connections()

    def breaker_transition(self, transition: Transition) -> None:
        future = self._thread.submit(self._run, transition)
        future.add_done_callback(self._report)

    @staticmethod
    def _run(transition: Transition) -> None:
        close_old_connections()
        try:
            transition_to_incident(transition)
        finally:
            close_old_connections()

    @staticmethod
    def _report(future: Future[Any]) -> None:
        if future.exception() is not None:
            log.error("incident update failed", exc_info=future.exception())

    def execution_started(self, execution_id: str, agent: str) -> None:
        return None

    def execution_token(self, execution_id: str, text: str) -> None:
        return None

    def execution_finished(self, result: ExecutionResult) -> None:
        try:
            self.quota.observe(result)
        except Exception:  # the port never raises
            log.exception("incidents: reading the steps of %s failed", result.execution_id)

    def dependency_changed(self, kind: str, available: bool, detail: str) -> None:
        future = self._thread.submit(self._dependency, kind, available, detail)
        future.add_done_callback(self._report)

    @staticmethod
    def _dependency(kind: str, available: bool, detail: str) -> None:
        close_old_connections()
        try:
            dependency_to_incident(kind, available, detail)
        finally:
            close_old_connections()

    def close(self, *, wait: bool = True) -> None:
        self._thread.shutdown(wait=wait)
