"""Agent execution endpoints (CONTRACT section 4)."""

from __future__ import annotations

import uuid

from django.http import HttpRequest
from ninja import Router

from agents.auth import ApiKeyAuth, Principal
from agents.engine import get_engine
from agents.idempotency import run_idempotently
from agents.runtime.types import ExecutionRequest, Message
from agents.schemas import ExecuteIn, ExecutionOut
from console.errors import NotFound, ValidationFailed

router = Router(tags=["executions"], auth=ApiKeyAuth())


def _messages(payload: ExecuteIn) -> tuple[Message, ...]:
    if isinstance(payload.input, str):
        return (Message("user", payload.input),)
    return tuple(Message(m.role, m.content) for m in payload.input)


@router.post("/agents/{name}/execute", response={200: ExecutionOut})
async def agent_execute(request: HttpRequest, name: str, payload: ExecuteIn) -> dict[str, object]:
    """Run the agent now through every safeguard. Degraded answers are 200 with the agent's
    fallback message as ``output`` (graceful degradation)."""
    principal: Principal = request.auth  # type: ignore[attr-defined]
    principal.require("execute")
    engine = get_engine()
    agent = engine.config.agent(name)
    if agent is None or not principal.may_use(name):
        raise NotFound(f"agent {name!r} does not exist")
    if payload.max_tokens is not None and payload.max_tokens > agent.max_tokens:
        raise ValidationFailed([f"max_tokens: must be <= {agent.max_tokens} for agent {name}"])
    cache_control = request.headers.get("Cache-Control", "").lower()

    async def run() -> dict[str, object]:
        result = await engine.execute(
            ExecutionRequest(
                agent=name,
                messages=_messages(payload),
                execution_id=str(uuid.uuid4()),
                max_tokens=payload.max_tokens,
                session_id=payload.session_id,
                metadata=payload.metadata or {},
                api_key_id=principal.key_id,
                api_key_limits=principal.limits,
                bypass_cache="no-cache" in cache_control or "no-store" in cache_control,
            )
        )
        return result.as_dict()

    return await run_idempotently(  # type: ignore[no-any-return]
        header=request.headers.get("Idempotency-Key"),
        key_id=principal.key_id,
        method=request.method or "POST",
        path=request.path,
        body=request.body,
        produce=run,
    )
