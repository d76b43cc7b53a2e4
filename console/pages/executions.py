"""``/executions/`` (the explorer) and ``/executions/{id}/`` (one execution's timeline).

The explorer is a GET form (agent, status, fallback reason, model, cached, time range) over
:func:`agents.selectors.execution_explore`: a keyset page of one index read, newest first, with
"Older" / "Newer" cursors. The combinations it allows are the ones an index serves
(:func:`agents.selectors.execution_filters_check`); others get a message naming what to change.

The detail page renders the steps the executor records (``agents.runtime.types.Step``:
attempts, retries, fallbacks, tool calls, cache hits, refusals) as a timeline with tokens and,
where the deployment's prices are known, each attempt's cost. A queued or running execution is
followed live by ``static/js/execution.js`` over ``WS /ws/executions/{id}/``, which reloads
the body partial (``/executions/{id}/body/``) when it completes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render

from agents.access.disclosure import render_execution
from agents.models import Execution, ExecutionStatus, FallbackReason
from agents.selectors import (
    ExecutionFilters,
    deployment_prices,
    execution_explore,
    execution_filter_choices,
    execution_row,
)
from console.roles import has_role, role_required
from core.errors import ValidationFailed

PAGE_SIZE = 50
RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
CACHED = {"": None, "yes": True, "no": False}
LIVE = frozenset({"queued", "running"})
LONG_TEXT = 600  # characters: longer input/output is collapsed in <details>
_MICRO = Decimal(1_000_000)


@dataclass
class ParsedFilters:
    filters: ExecutionFilters
    values: dict[str, str]  # as the form shows them again
    errors: list[str] = field(default_factory=list)


def _choice(values: dict[str, str], name: str, allowed: Any, label: str, errors: list[str]) -> Any:
    raw = values[name]
    if raw == "":
        return None
    if raw not in allowed:
        errors.append(f"{label}: {raw!r} is not one of {', '.join(sorted(allowed))}")
        return None
    return raw


def _moment(raw: str, offset_min: int, label: str, errors: list[str]) -> datetime | None:
    """A ``datetime-local`` value in the viewer's zone (``offset_min`` = JavaScript's
    ``getTimezoneOffset()``, minutes behind UTC; 0 = the value is UTC) as a UTC moment."""
    if raw == "":
        return None
    try:
        local = datetime.fromisoformat(raw)
    except ValueError:
        errors.append(f"{label}: {raw!r} is not a date and time (YYYY-MM-DDTHH:MM)")
        return None
    if local.tzinfo is not None:
        return local.astimezone(UTC)
    return (local + timedelta(minutes=offset_min)).replace(tzinfo=UTC)


def filters_parse(query: QueryDict, now: datetime) -> ParsedFilters:
    """The explorer's filters from the query string; every bad value named in ``errors``."""
    names = ("agent", "status", "reason", "model", "cached", "range", "from", "to", "tz")
    values = {name: query.get(name, "").strip() for name in names}
    errors: list[str] = []
    agent = values["agent"] or None
    if agent is not None and len(agent) > 64:
        errors.append("agent: at most 64 characters")
    model = values["model"] or None
    if model is not None and len(model) > 128:
        errors.append("model: at most 128 characters")
    status = _choice(values, "status", ExecutionStatus.values, "status", errors)
    reason = _choice(values, "reason", FallbackReason.values, "fallback reason", errors)
    cached = None
    if values["cached"] not in CACHED:
        errors.append(f"cached: {values['cached']!r} is not one of yes, no (or any)")
    else:
        cached = CACHED[values["cached"]]
    offset = 0
    if values["tz"]:
        try:
            offset = int(values["tz"])
        except ValueError:
            errors.append(f"tz: {values['tz']!r} is not a whole number of minutes")
        else:
            if not -900 <= offset <= 900:
                errors.append("tz: must be between -900 and 900 minutes")
                offset = 0
    since = until = None
    span = values["range"]
    if span in RANGES:
        since = now - RANGES[span]
    elif span == "custom":
        since = _moment(values["from"], offset, "from", errors)
        until = _moment(values["to"], offset, "to", errors)
    elif span != "":
        errors.append(f"range: {span!r} is not one of 1h, 24h, 7d, 30d, custom (or any time)")
    filters = ExecutionFilters(
        agent=agent,
        status=status,
        fallback_reason=reason,
        model=model,
        cached=cached,
        since=since,
        until=until,
    )
    return ParsedFilters(filters, values, errors)


def _filtered(values: dict[str, str]) -> bool:
    return any(values[name] for name in ("agent", "status", "reason", "model", "cached", "range"))


def _page_link(values: dict[str, str], **cursor: str) -> str:
    kept = {name: value for name, value in values.items() if value}
    return "?" + urlencode(kept | cursor)


@role_required("viewer")
def explorer(request: HttpRequest) -> HttpResponse:
    parsed = filters_parse(request.GET, datetime.now(UTC))
    after = request.GET.get("after") or None
    before = request.GET.get("before") or None
    page: dict[str, Any] = {"items": [], "older": None, "newer": None}
    errors = list(parsed.errors)
    if not errors:
        try:
            page = execution_explore(
                filters=parsed.filters, after=after, before=before, limit=PAGE_SIZE
            )
        except ValidationFailed as exc:
            errors = exc.errors
    context = {
        "values": parsed.values,
        "choices": execution_filter_choices(),
        "statuses": ExecutionStatus.values,
        "reasons": FallbackReason.values,
        "ranges": list(RANGES),
        "errors": errors,
        "rows": page["items"],
        "older": _page_link(parsed.values, after=page["older"]) if page["older"] else None,
        "newer": _page_link(parsed.values, before=page["newer"]) if page["newer"] else None,
        "filtered": _filtered(parsed.values),
        "paged": bool(after or before),
    }
    return render(request, "console/executions.html", context, status=400 if errors else 200)


# --- one execution -------------------------------------------------------------------------


def _attempt_cost(step: dict[str, Any], prices: dict[int, Any]) -> Decimal | None:
    price = prices.get(step.get("deployment") or -1)
    if price is None or price[0] is None or price[1] is None:
        return None
    tokens_in, tokens_out = int(step.get("input_tokens") or 0), int(step.get("output_tokens") or 0)
    cost: Decimal = (tokens_in * Decimal(price[0]) + tokens_out * Decimal(price[1])) / _MICRO
    return cost


def timeline(steps: list[dict[str, Any]], prices: dict[int, Any]) -> list[dict[str, Any]]:
    """The steps as timeline entries: a title, a tone (ok/bad/warn) and what is known.

    An attempt on the same model right after a failed one is a retry; the failed attempt's
    ``wait_ms`` is the backoff the executor waited before it (``Retry-After`` or jittered)."""
    entries = []
    attempts = retries = 0
    previous: dict[str, Any] | None = None
    for step in steps:
        kind = str(step.get("kind") or "")
        outcome = str(step.get("outcome") or "")
        model = step.get("model")
        entry: dict[str, Any] = {
            "kind": kind,
            "outcome": outcome,
            "detail": str(step.get("detail") or ""),
            "model": model,
            "deployment": step.get("deployment"),
            "latency_ms": step.get("latency_ms") or None,
            "input_tokens": int(step.get("input_tokens") or 0),
            "output_tokens": int(step.get("output_tokens") or 0),
            "cost_usd": None,
            "wait_ms": float(step.get("wait_ms") or 0) or None,
        }
        if kind == "attempt":
            attempts += 1
            retry = (
                previous is not None
                and previous.get("kind") == "attempt"
                and previous.get("outcome") != "ok"
                and previous.get("model") == model
            )
            retries = retries + 1 if retry else 0
            entry["title"] = (
                f"Retry {retries} on {model}" if retry else f"Attempt {attempts} on {model}"
            )
            entry["tone"] = "ok" if outcome == "ok" else "bad"
            entry["cost_usd"] = _attempt_cost(step, prices)
        elif kind == "fallback":
            entry["title"] = f"Fallback to {model}"
            entry["tone"] = "warn"
        elif kind == "tool":
            name = entry["detail"].split(":", 1)[0]
            if outcome == "client":
                entry["title"] = "Tool call handed to the client"
                entry["tone"] = "ok"
            else:
                entry["title"] = f"Tool {name}"
                entry["tone"] = "ok" if outcome == "ok" else "bad"
        elif kind == "cache":
            entry["title"] = f"Cache hit ({model})" if model else "Cache hit"
            entry["tone"] = "ok"
        elif kind == "refused":
            entry["title"] = f"Refused: {outcome.replace('_', ' ')}"
            entry["tone"] = "bad"
        else:
            entry["title"] = kind or "step"
            entry["tone"] = ""
        entries.append(entry)
        previous = step
    return entries


def _messages(raw: Any) -> list[dict[str, Any]]:
    """The stored input as (role, text, long) rows; anything else as its JSON."""
    rows = []
    for item in raw if isinstance(raw, list) else [raw]:
        if isinstance(item, dict) and isinstance(item.get("content"), str):
            text, role = item["content"], str(item.get("role") or "")
        else:
            text, role = json.dumps(item, indent=2, ensure_ascii=False), ""
        rows.append({"role": role, "text": text, "long": len(text) > LONG_TEXT})
    return rows


def _body_context(row: Execution, request: HttpRequest) -> dict[str, Any]:
    # Provider error text as the API shows it: operators and admins read it, viewers (like
    # read keys) a typed summary (agents/access/disclosure.py).
    shown = render_execution(
        {"steps": list(row.steps or []), "error": row.error},
        full=has_role(request.user, "operator"),
    )
    steps = [step for step in (shown.get("steps") or []) if isinstance(step, dict)]
    error = shown.get("error")
    ids = {int(s["deployment"]) for s in steps if isinstance(s.get("deployment"), int)}
    prices = deployment_prices(ids)
    entries = timeline(steps, prices)
    return {
        "execution": row,
        "entries": entries,
        "live": row.status in LIVE,
        "input_rows": _messages(row.input),
        "output_long": len(row.output) > LONG_TEXT,
        "error_text": json.dumps(error, indent=2, ensure_ascii=False) if error else "",
        "step_tokens": sum(e["input_tokens"] + e["output_tokens"] for e in entries),
    }


def _load(execution_id: uuid.UUID) -> Execution:
    row = execution_row(execution_id=execution_id)
    if row is None:
        raise Http404(f"no execution {execution_id}")
    return row


@role_required("viewer")
def detail(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    return render(request, "console/execution.html", _body_context(_load(execution_id), request))


@role_required("viewer")
def detail_body(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    """The detail page's body alone (htmx reloads it when a live execution completes)."""
    return render(
        request, "console/_execution_body.html", _body_context(_load(execution_id), request)
    )
