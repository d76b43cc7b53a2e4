"""Run an agent now: the one implementation of ``POST /api/v1/agents/{name}/execute``, and the
one check every door runs before an execution is admitted.

Two front doors call :func:`execute_now` with the body already parsed into :class:`ExecuteIn`:
the lean ASGI handler (``agents.doors.rest``, the hot path) and the django-ninja route
(``agents.api.agent_execute``, which documents the endpoint in OpenAPI and answers the requests
the lean handler hands to Django). Everything after parsing lives here, so the two cannot drift:
the scope check, the agent allow-list, the agent's ``max_tokens`` cap, the execution request,
``Idempotency-Key``, and what the result tells this caller (``agents.access.disclosure``: provider
error text only for operate and admin scopes).

:func:`executable_agent` is also the OpenAI door's check (and the queue's). Its refusals are
typed (:class:`core.errors.ApplicationError` subclasses that keep what a door needs to word
them): the REST doors render them with the API's one format, the OpenAI door in OpenAI's.
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


class UnknownAgent(NotFound):
    """No agent by this name runs here (none was ever made, or it is disabled): 404."""

    def __init__(self, agent: str) -> None:
        super().__init__(f"agent {agent!r} does not exist")
        self.agent = agent


class AgentNotAllowed(UnknownAgent):
    """An agent the key may not use: answered as :class:`UnknownAgent`, word for word, so a
    restricted key cannot learn which agents exist."""


class TokensOverCap(ValidationFailed):
    """``max_tokens`` over the agent's own cap: 422 on the REST doors."""

    def __init__(self, agent: str, cap: int) -> None:
        super().__init__([f"max_tokens: must be <= {cap} for agent {agent}"])
        self.agent = agent
        self.cap = cap


def executable_agent(principal: Principal, name: str, *, max_tokens: int | None) -> AgentConfig:
    """The agent ``principal`` may run now, asking for ``max_tokens``, or the refusal, in this
    order: :class:`PermissionDenied` (403) without the execute scope; :class:`AgentUnavailable`
    (503) for an agent the key may use that cannot run with this process's configuration (a
    provider's key does not decrypt); :class:`UnknownAgent` / :class:`AgentNotAllowed` (404);
    :class:`TokensOverCap` (422). The checks every execute and enqueue request passes, on every
    door, before anything is reserved or stored."""
    principal.require("execute")
    config = get_engine().config
    agent = config.agent(name)
    allowed = principal.may_use(name)
    if allowed and (problem := config.unavailable(name)) is not None:
        raise AgentUnavailable(problem)  # 503: it exists, but cannot run here now
    if not allowed:
        raise AgentNotAllowed(name)
    if agent is None:
        raise UnknownAgent(name)
    if max_tokens is not None and max_tokens > agent.max_tokens:
        raise TokensOverCap(name, agent.max_tokens)
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
    executable_agent(principal, name, max_tokens=payload.max_tokens)

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
