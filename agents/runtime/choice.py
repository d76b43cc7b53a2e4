"""Which models an execution uses: the cost-aware choice and the conversation window."""

from __future__ import annotations

from agents.runtime.providers.base import estimate_messages
from agents.runtime.types import AgentConfig, ExecutionRequest, Message


def choose_models(
    agent: AgentConfig,
    request: ExecutionRequest,
    messages: tuple[Message, ...],
    budget_left: list[tuple[int, int]],
) -> tuple[tuple[str, ...], str]:
    """The model chain for this execution and why (the reference ``_select_model``).

    Rules, in order, only for agents with a ``cheap_model``: a ``complexity`` hint of
    "simple" in the metadata, or a prompt of at most ``cheap_max_input_tokens``, picks the
    cheap model first (the standard one stays as the first fallback); a "complex" hint
    never does. With less than ``cheap_below_budget_pct`` of any budget left, the cheap
    model is used for everything and the standard model is dropped.
    """
    standard = (agent.model, *agent.fallback_models)
    cheap = agent.cheap_model
    if not cheap:
        return standard, "standard"
    hint = str(request.metadata.get("complexity", "")).lower()
    low = any(
        limit > 0 and remaining * 100 < agent.cheap_below_budget_pct * limit
        for remaining, limit in budget_left
    )
    if low:
        rest = tuple(m for m in agent.fallback_models if m not in (cheap, agent.model))
        return (cheap, *rest), "cheap:budget_low"
    if hint == "complex":
        return standard, "standard"
    if hint == "simple" or estimate_messages(messages) <= agent.cheap_max_input_tokens:
        rest = tuple(m for m in standard if m != cheap)
        return (cheap, *rest), "cheap:hint" if hint == "simple" else "cheap:simple"
    return standard, "standard"


def window(
    messages: tuple[Message, ...], *, max_messages: int, max_tokens: int
) -> tuple[Message, ...]:
    """The most recent messages that fit both limits (a conversation's memory window)."""
    kept: list[Message] = []
    tokens = 0
    for message in reversed(messages):
        cost = estimate_messages((message,))
        if len(kept) >= max_messages or tokens + cost > max_tokens:
            break
        kept.append(message)
        tokens += cost
    return tuple(reversed(kept))
