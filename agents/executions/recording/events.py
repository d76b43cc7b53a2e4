"""The journal's wire format: one JSON object per event, and how an event becomes a row.

Both journals carry the same bytes (a line in a file, the ``e`` field of a stream entry), so one
decoder serves both drainers. Encoding never raises on odd metadata (``default=str``): it is
orjson's UTF-8 (about 14 times faster than ``json`` on the hot path), and ``json``'s escaped ASCII
for the rare text that is not valid UTF-8 (a lone surrogate in a prompt), which cannot fail it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any

import orjson

from agents.runtime.types import ExecutionRequest, ExecutionResult, Message

STARTED = "started"
FINISHED = "finished"
_CENT_FRACTION = Decimal("0.00000001")  # Execution.cost_usd has 8 decimal places
_CHOICE_MAX = 32  # Execution.model_choice
_INT_MAX = 2**31 - 1  # PositiveIntegerField's range on PostgreSQL
_OWNER_MAX = 36  # Execution.owner
_MICROS = Decimal(1_000_000)
_RESERVED_MAX = 10**16  # Execution.reserved_usd: 16 digits, 8 places, in micro-USD
_STATUSES = frozenset({"queued", "running", "succeeded", "degraded", "failed", "cancelled"})


def _messages(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _dumps(event: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(event, default=str)  # UTF-8: a line of it never holds a b"\n"
    except orjson.JSONEncodeError:  # a lone surrogate in a prompt (not UTF-8): escape it
        return json.dumps(event, separators=(",", ":"), default=str).encode("ascii")


def encode_started(
    request: ExecutionRequest, created_at: float, *, owner: str = "", reserved_micros: int = 0
) -> bytes:
    """``owner``: the process running it (``agents.executions.processes``); ``reserved_micros``: what its
    admission reserves, charged if that process dies before saying what it spent."""
    return _dumps(
        {
            "event": STARTED,
            "id": request.execution_id,
            "agent": request.agent,
            "api_key_id": request.api_key_id,
            "input": _messages(request.messages),
            "session_id": request.session_id,
            "metadata": dict(request.metadata),
            "created_at": created_at,
            "owner": owner,
            "reserved_micros": reserved_micros,
        }
    )


def encode_finished(result: ExecutionResult) -> bytes:
    return _dumps(
        {
            "event": FINISHED,
            "id": result.execution_id,
            "agent": result.agent,
            "api_key_id": result.api_key_id,
            "status": result.status.value,
            "input": _messages(result.input),
            "output": result.output,
            "model": result.model,
            "deployment_id": result.deployment,
            "attempts": result.attempts,
            "fallback_used": result.fallback_used,
            "fallback_reason": result.fallback_reason,
            "cached": result.cached,
            "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens,
            "cost_usd": str(result.cost_usd),
            "model_choice": result.model_choice,
            "saved_usd": str(result.saved_usd),
            "latency_ms": result.latency_ms,
            "session_id": result.session_id,
            "metadata": dict(result.metadata),
            "steps": [step.as_dict() for step in result.steps],
            "error": dict(result.error) if result.error is not None else None,
            "created_at": result.created_at,
            "finished_at": result.finished_at,
        }
    )


@dataclass(frozen=True)
class Row:
    """One event, validated and converted to ``Execution`` field values."""

    id: uuid.UUID
    finished: bool
    fields: dict[str, Any]


def _when(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), tz=UTC)


def _count(value: Any) -> int:
    number = int(value)
    if not 0 <= number <= _INT_MAX:
        raise ValueError(f"count out of range: {number}")
    return number


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _money(value: Any) -> Decimal:
    """USD to the columns' 8 places, rounded up: the ledger then charges, to the micro-dollar,
    what the runtime settled on the budget counters (``to_micros(cost, up=True)``)."""
    amount = Decimal(str(value or "0"))
    if not amount.is_finite():
        raise ValueError(f"amount is not finite: {value!r}")
    return amount.quantize(_CENT_FRACTION, rounding=ROUND_CEILING)


def _without_nul(value: Any) -> Any:
    """``value`` with every NUL character in its strings (keys included) made U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def row_from_event(raw: bytes | str) -> Row:
    """Parse and validate one event. Raises ``ValueError`` (or ``KeyError``/``TypeError``) for
    an event that can never be stored: the drainers set such an event aside instead of retrying.
    """
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:  # e.g. an escaped lone surrogate, which only json reads
        event = json.loads(raw)
    if not isinstance(event, Mapping):
        raise ValueError("event is not a JSON object")
    if "\\u0000" in raw if isinstance(raw, str) else b"\\u0000" in raw:
        # PostgreSQL's text and jsonb refuse NUL; a prompt or a provider's answer may hold one.
        event = _without_nul(event)
    kind = event["event"]
    execution_id = uuid.UUID(str(event["id"]))
    fields: dict[str, Any] = {
        "agent_name": str(event["agent"]),
        "api_key_id": _optional_int(event.get("api_key_id")),
        "input": list(event.get("input") or []),
        "session_id": str(event.get("session_id") or ""),
        "metadata": dict(event.get("metadata") or {}),
        # The runtime's created_at is when the execution started: the accepted time of a run
        # now, the claim of a queued one, whose row keeps its own created_at (FINISHED_FIELDS).
        "created_at": _when(event["created_at"]),
        "started_at": _when(event["created_at"]),
    }
    if kind == STARTED:
        fields["status"] = "running"
        fields["owner"] = str(event.get("owner") or "")[:_OWNER_MAX]
        reserved = int(event.get("reserved_micros") or 0)
        if not 0 <= reserved < _RESERVED_MAX:
            raise ValueError(f"reserved_micros out of range: {reserved}")
        fields["reserved_usd"] = Decimal(reserved) / _MICROS
        return Row(execution_id, finished=False, fields=fields)
    if kind != FINISHED:
        raise ValueError(f"unknown event kind {kind!r}")
    status = str(event["status"])
    if status not in _STATUSES:
        raise ValueError(f"unknown status {status!r}")
    latency = event.get("latency_ms")
    fields.update(
        status=status,
        output=str(event.get("output") or ""),
        model=str(event.get("model") or ""),
        deployment_id=_optional_int(event.get("deployment_id")),
        attempts=min(_count(event.get("attempts") or 0), 32767),
        fallback_used=bool(event.get("fallback_used")),
        fallback_reason=event.get("fallback_reason"),
        cached=bool(event.get("cached")),
        input_tokens=_count(event.get("input_tokens") or 0),
        output_tokens=_count(event.get("output_tokens") or 0),
        cost_usd=_money(event.get("cost_usd")),
        # Events journaled before these fields existed carry neither: the defaults apply.
        model_choice=str(event.get("model_choice") or "standard")[:_CHOICE_MAX],
        saved_usd=_money(event.get("saved_usd")),
        latency_ms=None if latency is None else _count(round(float(latency))),
        steps=list(event.get("steps") or []),
        error=event.get("error"),
        finished_at=_when(event["finished_at"]),
    )
    return Row(execution_id, finished=True, fields=fields)


# What a ``started`` event writes over a row that exists already (a queued execution, claimed;
# a ``finished`` that arrived first): who runs it and what it reserved.
STARTED_FIELDS = ("owner", "reserved_usd")

# Every Execution column but the primary key, STARTED_FIELDS and ``created_at`` (the time it
# was accepted is never rewritten: a queued execution's row has it from its enqueue): what a
# redelivered ``finished`` rewrites.
FINISHED_FIELDS = (
    "agent_name",
    "api_key_id",
    "status",
    "input",
    "output",
    "model",
    "deployment_id",
    "attempts",
    "fallback_used",
    "fallback_reason",
    "cached",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "model_choice",
    "saved_usd",
    "latency_ms",
    "session_id",
    "metadata",
    "steps",
    "error",
    "started_at",
    "finished_at",
)
