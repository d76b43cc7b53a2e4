"""Alerts from Prometheus, through Alertmanager's webhook (``POST /api/v1/alerts/alertmanager``),
land in the incident list.

Each alert is one incident, ``kind`` ``alert``, keyed ``alertmanager:<alertname>:<fingerprint>``
(the fingerprint is Alertmanager's hash of the alert's labels):

- a firing alert opens it: title from ``annotations.summary`` (else the alert name), severity
  from ``labels.severity`` (:func:`alert_severity`), agent from ``labels.agent`` when that names
  a known agent, a timeline entry with the labels, annotations, ``startsAt`` and the generator
  URL;
- Alertmanager repeats a firing alert every ``repeat_interval`` and sends the whole group again
  when any alert of it changes: a repeat of what the incident already holds adds nothing; a
  change (new annotation values, a new ``startsAt``) adds one ``updated`` entry;
- a firing alert whose episode (its ``startsAt``) already has a resolved incident (resolved by
  hand while Prometheus still fires) does not reopen it; a new episode opens a new incident;
- a resolved alert resolves the open incident with its ``endsAt``, unless it is about an older
  episode than the one open (notifications delivered out of order).

An alert that mirrors a condition Breakwater detects itself (its breaker, budget, quota, SLO and
spend-spike alerts: deploy/prometheus) names Breakwater's own incident in the label
``breakwater_incident`` (that incident's dedup key; a budget may be named by its ``scope`` label,
``budget:<scope>:exhausted|forecast``). While that incident is open, the alert joins its timeline
(one ``alert`` entry per episode and change, one ``alert_resolved`` entry) instead of opening a
second incident for the same cause; Breakwater's detector still resolves it. When that incident
is not open (the alert came first, or the detector missed it), the alert opens its own as above.

A key restricted to some agents may only send alerts that name one of them in ``labels.agent``;
anything else refuses the whole notification (403) before anything is written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agents.access.auth import PermissionDenied
from agents.models import Agent
from budgets.models import Budget
from budgets.selectors import budget_scope_label
from incidents.models import Incident, IncidentEvent, IncidentStatus, Severity
from incidents.schemas import AlertmanagerAlertIn, AlertmanagerIn
from incidents.services import incident_event_add, incident_open, incident_resolve_by_key

KIND = "alert"
ALERTNAME_IN_KEY_MAX = 120
MIRROR_LABEL = "breakwater_incident"
MIRROR_EVENTS = ("alert", "alert_resolved")

# labels.severity (lower-cased) -> incident severity; missing or anything else: major.
SEVERITY_LABELS = {
    "critical": Severity.CRITICAL,
    "page": Severity.CRITICAL,
    "emergency": Severity.CRITICAL,
    "fatal": Severity.CRITICAL,
    "p1": Severity.CRITICAL,
    "major": Severity.MAJOR,
    "error": Severity.MAJOR,
    "high": Severity.MAJOR,
    "warning": Severity.MAJOR,
    "p2": Severity.MAJOR,
    "minor": Severity.MINOR,
    "low": Severity.MINOR,
    "info": Severity.MINOR,
    "ticket": Severity.MINOR,
    "none": Severity.MINOR,
    "p3": Severity.MINOR,
    "p4": Severity.MINOR,
}


def alert_severity(labels: dict[str, str]) -> str:
    return SEVERITY_LABELS.get(labels.get("severity", "").strip().lower(), Severity.MAJOR)


def alert_key(alert: AlertmanagerAlertIn) -> str:
    return f"alertmanager:{alert.labels['alertname'][:ALERTNAME_IN_KEY_MAX]}:{alert.fingerprint}"


def _when(value: datetime | None) -> str | None:
    """UTC ISO 8601; None for Alertmanager's zero time (a firing alert's ``endsAt``)."""
    if value is None or value.year <= 1:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def _snapshot(alert: AlertmanagerAlertIn, payload: AlertmanagerIn) -> dict[str, Any]:
    return {
        "status": alert.status,
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": _when(alert.startsAt),
        "endsAt": _when(alert.endsAt),
        "generatorURL": alert.generatorURL,
        "fingerprint": alert.fingerprint,
        "receiver": payload.receiver,
        "groupKey": payload.groupKey[:500],
        "externalURL": payload.externalURL,
    }


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return all(old.get(k) == new[k] for k in ("labels", "annotations", "startsAt"))


def _last_alert_entry(incident: Incident) -> dict[str, Any]:
    event = (
        incident.events.filter(kind__in=("opened", "updated", "recurred"))
        .order_by("-at", "-id")
        .first()
    )
    return dict(event.data) if event is not None else {}


def _refuse_outsiders(payload: AlertmanagerIn, allowed: frozenset[str]) -> None:
    if not allowed:
        return
    for index, alert in enumerate(payload.alerts):
        agent = alert.labels.get("agent")
        if agent not in allowed:
            about = f"agent {agent!r}" if agent else "no agent (labels.agent is missing)"
            raise PermissionDenied(
                f"alerts[{index}] ({alert.labels['alertname']}) is about {about}; a key "
                "restricted to some agents may only send alerts whose labels.agent is one of "
                "them"
            )


def _description(alert: AlertmanagerAlertIn) -> str:
    text = alert.annotations.get("description") or alert.annotations.get("summary") or ""
    return f": {text}" if text else ""


def alertmanager_receive(
    *, payload: AlertmanagerIn, allowed: frozenset[str], actor: str
) -> dict[str, Any]:
    """Apply one notification; returns the incidents it opened, updated and resolved, and how
    many alerts changed nothing."""
    _refuse_outsiders(payload, allowed)
    named = {a.labels["agent"] for a in payload.alerts if a.labels.get("agent")}
    known = set(Agent.objects.filter(name__in=named).values_list("name", flat=True))
    out: dict[str, Any] = {
        "opened": [],
        "updated": [],
        "resolved": [],
        "attached": [],
        "unchanged": 0,
    }
    for alert in payload.alerts:
        snapshot = _snapshot(alert, payload)
        key = alert_key(alert)
        current = (
            Incident.objects.filter(dedup_key=key).exclude(status=IncidentStatus.RESOLVED).first()
        )
        mirrored = _mirrored(alert, allowed) if current is None else None
        if mirrored is not None:
            action, incident_id = _attach(alert, snapshot, mirrored, actor)
        elif alert.status == "firing":
            action, incident_id = _fire(alert, snapshot, key, current, known, actor)
        else:
            action, incident_id = _resolve(alert, snapshot, key, current, actor)
        if action == "unchanged":
            out["unchanged"] += 1
        else:
            out[action].append(incident_id)
    return out


def _mirror_keys(name: str) -> list[str]:
    """The dedup keys a ``breakwater_incident`` label names: itself, or for a budget named by
    its scope label (``budget:global:monthly:exhausted``) the keys of the budgets with it."""
    kind, _, rest = name.partition(":")
    scope, _, which = rest.rpartition(":")
    if kind != "budget" or scope.isdigit() or which not in {"exhausted", "forecast"}:
        return [name]
    return [
        f"budget:{budget.pk}:{which}"
        for budget in Budget.objects.select_related("agent", "api_key")
        if budget_scope_label(budget) == scope
    ]


def _mirrored(alert: AlertmanagerAlertIn, allowed: frozenset[str]) -> Incident | None:
    """Breakwater's own incident this alert mirrors: the latest incident under the key its
    ``breakwater_incident`` label names if it is open, or if this alert episode (its
    fingerprint and ``startsAt``) is on its timeline already (a repeat after it resolved).
    A key restricted to some agents only reaches incidents of those agents."""
    name = alert.labels.get(MIRROR_LABEL, "").strip()
    if not name:
        return None
    keys = _mirror_keys(name)
    latest = (
        Incident.objects.filter(dedup_key__in=keys).exclude(kind=KIND).order_by("-opened_at", "-id")
    ).first()
    if latest is None or (allowed and latest.agent_name not in allowed):
        return None
    if latest.status != IncidentStatus.RESOLVED:
        return latest
    seen = _last_mirror_entry(latest, alert.fingerprint)
    if seen is not None and seen.data.get("startsAt") == _when(alert.startsAt):
        return latest
    return None


def _last_mirror_entry(incident: Incident, fingerprint: str) -> IncidentEvent | None:
    return (
        incident.events.filter(kind__in=MIRROR_EVENTS, data__fingerprint=fingerprint)
        .order_by("-at", "-id")
        .first()
    )


def _attach(
    alert: AlertmanagerAlertIn, snapshot: dict[str, Any], incident: Incident, actor: str
) -> tuple[str, int | None]:
    """Put the alert on Breakwater's own incident's timeline: one ``alert`` entry per episode
    or change while it fires, one ``alert_resolved`` entry when it resolves; nothing for a
    repeat, nothing on an incident that is resolved already."""
    name = alert.labels["alertname"]
    last = _last_mirror_entry(incident, alert.fingerprint)
    kind = "alert" if alert.status == "firing" else "alert_resolved"
    if last is not None and last.kind == kind and _same(dict(last.data), snapshot):
        return "unchanged", incident.pk
    if incident.status == IncidentStatus.RESOLVED or (kind == "alert_resolved" and last is None):
        return "unchanged", incident.pk
    if kind == "alert":
        message = f"{name} firing in Prometheus since {snapshot['startsAt']}{_description(alert)}"
    else:
        message = f"{name} resolved in Alertmanager (ended {snapshot['endsAt'] or 'now'})"
    incident_event_add(
        incident=incident, kind=kind, message=message[:2000], data=snapshot, actor=actor
    )
    return "attached", incident.pk


def _fire(
    alert: AlertmanagerAlertIn,
    snapshot: dict[str, Any],
    key: str,
    current: Incident | None,
    known: set[str],
    actor: str,
) -> tuple[str, int | None]:
    name = alert.labels["alertname"]
    if current is not None:
        if _same(_last_alert_entry(current), snapshot):
            return "unchanged", current.pk
        incident_event_add(
            incident=current,
            kind="updated",
            message=f"{name} still firing since {snapshot['startsAt']}{_description(alert)}"[:2000],
            data=snapshot,
            actor=actor,
        )
        return "updated", current.pk
    latest = Incident.objects.filter(dedup_key=key).order_by("-opened_at", "-id").first()
    if latest is not None and _last_alert_entry(latest).get("startsAt") == snapshot["startsAt"]:
        return "unchanged", latest.pk  # this episode was resolved already (by hand, say)
    agent = alert.labels.get("agent", "")
    incident, _ = incident_open(
        kind=KIND,
        dedup_key=key,
        title=alert.annotations.get("summary") or name,
        message=f"{name} firing since {snapshot['startsAt']}{_description(alert)}"[:2000],
        severity=alert_severity(alert.labels),
        agent_name=agent if agent in known else "",
        data=snapshot,
        actor=actor,
    )
    return "opened", incident.pk


def _resolve(
    alert: AlertmanagerAlertIn,
    snapshot: dict[str, Any],
    key: str,
    current: Incident | None,
    actor: str,
) -> tuple[str, int | None]:
    if current is None:
        return "unchanged", None
    open_since = _last_alert_entry(current).get("startsAt")
    if (
        open_since is not None
        and snapshot["startsAt"] is not None
        and datetime.fromisoformat(snapshot["startsAt"]) < datetime.fromisoformat(open_since)
    ):
        return "unchanged", current.pk  # about an earlier episode, delivered late
    ended = snapshot["endsAt"] or "now"
    incident = incident_resolve_by_key(
        dedup_key=key,
        message=f"{alert.labels['alertname']} resolved in Alertmanager (ended {ended})",
        data=snapshot,
        actor=actor,
    )
    if incident is None:
        return "unchanged", None
    return "resolved", incident.pk
