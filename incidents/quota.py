"""Upstream quota incidents: a deployment whose provider answers ``insufficient_quota`` or a
billing error (``agents.runtime.errors.QuotaExhausted``) opens ``quota:<deployment>``.

The executor reports nothing itself: :class:`QuotaWatch` reads the steps of each finished
execution (the incident sink's ``execution_finished``), in memory, and hands the incident
writes to the sink's background thread. A storm of quota errors is folded: the first one opens
(or adds to) the incident, then at most one timeline entry per ``REPORT_EVERY_S`` per process
carries the count since the last one. The incident resolves when the deployment answers
successfully again, at least ``RECOVERED_AFTER_S`` after its last quota error in this process
(an answer squeezed between two errors does not resolve it), or, whichever process saw the
errors, after ``QUIET_S`` without any quota error reported (:func:`quota_incidents_sweep`, a
periodic job).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agents.runtime.types import ExecutionResult, ExecutionStatus

QUOTA_OUTCOME = "QuotaExhausted"  # the step outcome of a QuotaExhausted failure
KIND = "upstream_quota"
REPORT_EVERY_S = 60.0
RECOVERED_AFTER_S = 60.0
QUIET_S = 600.0

Submit = Callable[..., None]


def quota_key(deployment: int) -> str:
    return f"quota:{deployment}"


@dataclass
class _Seen:
    model: str
    first_detail: str
    last_error: float
    reported_at: float
    errors: int = 0  # since the last report
    agents: set[str] = field(default_factory=set)


class QuotaWatch:
    """Per process: the deployments seen answering with exhausted quota. ``submit(fn, *args)``
    runs ``fn(*args)`` off the calling thread (the incident sink's writer)."""

    def __init__(self, submit: Submit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._submit = submit
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[int, _Seen] = {}

    def observe(self, result: ExecutionResult) -> None:
        """No query, no write: a quota error needs a fallback or degrades the execution, so a
        plain success is skipped at once unless a deployment is being watched."""
        if (
            not self._seen
            and result.status is ExecutionStatus.SUCCEEDED
            and not result.fallback_used
        ):
            return
        for step in result.steps:
            if step.kind != "attempt" or step.deployment is None:
                continue
            if step.outcome == QUOTA_OUTCOME:
                self._error(step.deployment, step.model or "", step.detail, result.agent)
            elif step.outcome == "ok" and step.deployment in self._seen:
                self._answered(step.deployment)

    def _error(self, deployment: int, model: str, detail: str, agent: str) -> None:
        now = self._clock()
        with self._lock:
            seen = self._seen.get(deployment)
            if seen is None:
                seen = self._seen[deployment] = _Seen(model, detail, now, now - REPORT_EVERY_S)
            seen.errors += 1
            seen.last_error = now
            seen.agents.add(agent)
            if now - seen.reported_at < REPORT_EVERY_S:
                return
            window = now - seen.reported_at if seen.errors > 1 else 0.0
            report = {
                "deployment": deployment,
                "model": seen.model,
                "errors": seen.errors,
                "window_s": round(min(window, 86_400.0), 1),
                "agents": sorted(seen.agents),
                "detail": detail[:300],
            }
            seen.reported_at, seen.errors, seen.agents = now, 0, set()
        self._submit(quota_report, report)

    def _answered(self, deployment: int) -> None:
        now = self._clock()
        with self._lock:
            seen = self._seen.get(deployment)
            if seen is None or now - seen.last_error < RECOVERED_AFTER_S:
                return
            del self._seen[deployment]
            since = round(now - seen.last_error, 1)
            unreported = seen.errors
        self._submit(quota_recovered, deployment, seen.model, since, unreported)


def _describe(deployment: int, model: str) -> str:
    from agents.models import ModelDeployment

    row = ModelDeployment.objects.filter(pk=deployment).select_related("provider").first()
    if row is None:
        return f"deployment {deployment} ({model})"
    return f"deployment {deployment} ({row.name} on {row.provider.name}, {row.upstream_model})"


def quota_report(report: dict[str, Any]) -> None:
    """Open ``quota:<deployment>`` or add the errors since the last report to its timeline."""
    from incidents.models import Severity
    from incidents.services import incident_open

    deployment = report["deployment"]
    subject = _describe(deployment, report["model"])
    count = report["errors"]
    over = f" in {report['window_s']:.0f}s" if report["window_s"] else ""
    message = (
        f"{count} insufficient-quota answer{'s' if count != 1 else ''}{over} "
        f"(agents: {', '.join(report['agents'])}): {report['detail']}"
    )
    incident_open(
        kind=KIND,
        dedup_key=quota_key(deployment),
        title=f"Upstream quota exhausted: {subject}",
        message=message[:1000],
        severity=Severity.MAJOR,
        data=report,
    )


def quota_recovered(deployment: int, model: str, since_s: float, unreported: int) -> None:
    from incidents.services import incident_resolve_by_key

    incident_resolve_by_key(
        dedup_key=quota_key(deployment),
        message=f"deployment {deployment} answered successfully again, {since_s:.0f}s after its "
        "last insufficient-quota answer",
        data={
            "deployment": deployment,
            "model": model,
            "since_last_error_s": since_s,
            "errors_unreported": unreported,
        },
    )


def quota_incidents_sweep(*, now: datetime | None = None, quiet_s: float = QUIET_S) -> list[int]:
    """Resolve the ``upstream_quota`` incidents nothing has reported a quota error to for
    ``quiet_s``; returns their ids. Two queries when there is nothing to resolve."""
    from django.db.models import Max, Q
    from django.utils import timezone

    from incidents.models import Incident, IncidentStatus
    from incidents.services import incident_resolve_by_key

    now = now or timezone.now()
    quiet = (
        Incident.objects.filter(kind=KIND)
        .exclude(status=IncidentStatus.RESOLVED)
        .annotate(last=Max("events__at", filter=Q(events__kind__in=("opened", "recurred"))))
        .filter(last__lt=now - timedelta(seconds=quiet_s))
        .values_list("dedup_key", "last")
    )
    resolved = []
    for key, last in quiet:
        incident = incident_resolve_by_key(
            dedup_key=key,
            message=f"no insufficient-quota answer reported for {quiet_s / 60:.0f} min",
            data={"last_report": last.isoformat(), "quiet_s": quiet_s},
        )
        if incident is not None:
            resolved.append(incident.pk)
    return resolved
