"""Run an agent now: the one implementation of ``POST /api/v1/agents/{name}/execute``.

Two front doors call :func:`execute_now` with the body already parsed into :class:`ExecuteIn`:
the lean ASGI handler (``agents.doors.rest``, the hot path) and the django-ninja route
(``agents.api.agent_execute``, which documents the endpoint in OpenAPI and answers the requests
the lean handler hands to Django). Everything after parsing lives here, so the two cannot drift:
the scope check, the agent allow-list, the agent's ``max_tokens`` cap, the execution request,
``Idempotency-Key``, and what the result tells this caller (``agents.access.disclosure``: provider error
text only for operate and admin scopes). Refusals are raised as
:class:`core.errors.ApplicationError`; both front doors render them with the API's one set of
exception handlers (``console/api.py``).
"""

from __future__ import annotations

import uuid

from agents.access.auth import Principal
from agents.access.disclosure import render_execution, sees_provider_text
from agents.backends import idempotency_store
from agents.config.live import AgentUnavailable
from agents.engine import get_engine
from agents.executions.idempotency import run_idempotently
from agents.runtime.types import AgentConfig, ExecutionRequest, Message
from agents.schemas import ExecuteIn
from core.errors import NotFound, ServiceUnavailable, ValidationFailed

# Executions refused because a dependency did not answer (DependencyUnavailable.kind).
UNAVAILABLE = frozenset({"state_unavailable", "recording_unavailable", "budgets_unavailable"})


def execute_messages(payload: ExecuteIn) -> tuple[Message, ...]:
    if isinstance(payload.input, str):
        return (Message("user", payload.input),)
    return tuple(Message(m.role, m.content) for m in payload.input)


def executable_agent(principal: Principal, name: str, payload: ExecuteIn) -> AgentConfig:
    """The agent ``principal`` may run now with ``payload``, or the refusal: 403 without the
    execute scope, 404 for an agent it may not see, 503 for one that cannot run with this
    process's configuration (a provider's key does not decrypt), 422 for ``max_tokens`` over the
    agent's cap.
    The checks every execute and enqueue request passes before anything is reserved or stored."""
    principal.require("execute")
    config = get_engine().config
    agent = config.agent(name)
    if principal.may_use(name) and (problem := config.unavailable(name)) is not None:
        raise AgentUnavailable(problem)  # 503: it exists, but cannot run here now
    if agent is None or not principal.may_use(name):
        raise NotFound(f"agent {name!r} does not exist")
    if payload.max_tokens is not None and payload.max_tokens > agent.max_tokens:
        raise ValidationFailed([f"max_tokens: must be <= {agent.max_tokens} for agent {name}"])
    return agent


async def execute_now(
    *,
    principal: Principal,
    name: str,
    payload: ExecuteIn,
    idempotency_key: str | None,
    method: str,
    path: str,
    body: bytes,
) -> dict[str, object]:
    """The execution result (``ExecutionResult.as_dict``), or the stored one for a replayed
    ``Idempotency-Key``. ``method``, ``path`` and ``body`` are the raw request's: together they
    are the idempotency fingerprint, the same whichever front door answered."""
    engine = get_engine()
    executable_agent(principal, name, payload)

    async def run() -> dict[str, object]:
        result = await engine.execute(
            ExecutionRequest(
                agent=name,
                messages=execute_messages(payload),
                execution_id=str(uuid.uuid4()),
                max_tokens=payload.max_tokens,
                session_id=payload.session_id,
                metadata=payload.metadata or {},
                api_key_id=principal.key_id,
                api_key_limits=principal.limits,
            )
        )
        if result.error is not None and result.error.get("type") in UNAVAILABLE:
            # Nothing was admitted: a typed 503 the client may retry, not an execution result.
            raise ServiceUnavailable(result.error["message"], type=result.error["type"])
        return result.as_dict()

    # A retried request answers the first one's result, without running again.
    result = await run_idempotently(
        store=idempotency_store(),
        header=idempotency_key,
        key_id=principal.key_id,
        method=method,
        path=path,
        body=body,
        produce=run,
    )
    # Rendered for this caller after the replay store: it keeps the full result, as the record.
    return render_execution(result, full=sees_provider_text(principal.scopes))
