"""Queued executions: enqueue and cancel (docs/INTERFACES.md §4; design in docs/ASYNC.md).

Reading a queued execution is ``GET /executions/{id}`` (:mod:`agents.api`); following it live is
the websocket ``/ws/executions/{id}/`` (:mod:`agents.doors.consumers`).
"""

from __future__ import annotations

from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja import Router, Schema, Status

from agents.access.auth import PermissionDenied, Principal
from agents.backends import idempotency_store
from agents.doors.auth import ApiKeyAuth
from agents.doors.execute import executable_agent, execute_messages
from agents.engine import get_engine
from agents.executions import queue as executions
from agents.executions.idempotency import run_idempotently
from agents.schemas import ERRORS, ExecuteIn

router = Router(auth=ApiKeyAuth(), tags=["executions"])


class EnqueuedOut(Schema):
    execution_id: str
    status: Literal["queued"]


class CancelOut(Schema):
    execution_id: str
    status: Literal["queued", "running", "cancelled"]
    cancel_requested: bool


def _principal(request: HttpRequest) -> Principal:
    return request.auth  # type: ignore[attr-defined,no-any-return]


@router.post(
    "/agents/{name}/executions",
    response={202: EnqueuedOut, **ERRORS},
    summary="Queue an execution",
)
async def execution_enqueue(request: HttpRequest, name: str, payload: ExecuteIn) -> Status:
    """Validate like ``execute``, store the execution as ``queued`` and hand it to a worker once
    stored. Follow it with ``GET /executions/{id}`` or the websocket ``/ws/executions/{id}/``.
    ``Idempotency-Key`` is honoured: a retried request answers the same ``execution_id``."""
    principal = _principal(request)
    agent = executable_agent(principal, name, max_tokens=payload.max_tokens)
    cache_control = request.headers.get("Cache-Control", "").lower()
    messages = [{"role": m.role, "content": m.content} for m in execute_messages(payload)]
    queue = get_engine().config.queue(name)

    async def enqueue() -> dict[str, Any]:
        execution_id = await sync_to_async(executions.execution_enqueue)(
            agent=name,
            timeout_s=agent.timeout_s,
            queue=queue,
            messages=messages,
            session_id=payload.session_id,
            metadata=payload.metadata,
            max_tokens=payload.max_tokens,
            bypass_cache="no-cache" in cache_control or "no-store" in cache_control,
            api_key_id=principal.key_id,
        )
        return {"execution_id": execution_id, "status": "queued"}

    body = await run_idempotently(
        store=idempotency_store(),
        header=request.headers.get("Idempotency-Key"),
        key_id=principal.key_id,
        method=request.method or "POST",
        path=request.path,
        body=request.body,
        produce=enqueue,
    )
    return Status(202, body)


@router.post(
    "/executions/{execution_id}/cancel",
    response={200: CancelOut, 202: CancelOut, **ERRORS},
    summary="Cancel an execution",
)
async def execution_cancel(request: HttpRequest, execution_id: str) -> Status:
    """Cancel an execution this key queued (a key with ``operate`` may cancel any execution of
    the agents it may use). ``queued``: cancelled now (200). ``running``: asked to stop (202);
    it ends ``cancelled`` within a fraction of a second, with what it cost so far settled.
    Already finished otherwise: 409."""
    principal = _principal(request)
    operator_agents: frozenset[str] | None = None
    try:
        principal.require("operate")
    except PermissionDenied:
        principal.require("execute")
    else:
        operator_agents = principal.agents
    outcome = await sync_to_async(executions.execution_cancel)(
        execution_id=execution_id, key_id=principal.key_id, operator_agents=operator_agents
    )
    body = {
        "execution_id": outcome.execution_id,
        "status": outcome.status,
        "cancel_requested": outcome.cancel_requested,
    }
    return Status(202 if outcome.cancel_requested else 200, body)
