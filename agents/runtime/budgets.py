"""Budget windows and reservation sizes (pure functions: the state store does the counting).

Money crosses into shared state as integer micro-USD. Conveniently, tokens x (USD per million
tokens) is exactly micro-USD, so a reservation is ``input_tokens * input_price + max_tokens *
output_price``, rounded up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from agents.runtime.providers.base import estimate_messages
from agents.runtime.state import BudgetHold
from agents.runtime.types import AgentConfig, BudgetRule, Deployment, Message, Usage

MICROS = Decimal(1_000_000)
MTOK = Decimal(1_000_000)
SLACK_S = 2 * 86_400.0  # counters outlive their window a little, for reports and reconcile


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# (time zone, window) -> the last window computed: most calls fall in it (about 20 µs saved).
_LAST_WINDOW: dict[tuple[str, str], tuple[str, float, float]] = {}


def window_bounds(rule: BudgetRule, now: float) -> tuple[str, float, float]:
    """``(window id, start, end)`` of the window containing ``now`` (epoch seconds), in the
    budget's time zone: a calendar day or a calendar month. Windows roll over by themselves:
    a new window is simply a new key."""
    cache_key = (rule.timezone, rule.window)
    last = _LAST_WINDOW.get(cache_key)
    if last is not None and last[1] <= now < last[2]:
        return last
    bounds = _window_bounds(rule, now)
    _LAST_WINDOW[cache_key] = bounds
    return bounds


def _window_bounds(rule: BudgetRule, now: float) -> tuple[str, float, float]:
    zone = _zone(rule.timezone)
    local = datetime.fromtimestamp(now, zone)
    if rule.window == "daily":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        # Aware-datetime arithmetic is wall-clock: +1 day is the next local midnight, even
        # across a DST change (a 23 h or 25 h day).
        following = start + timedelta(days=1)
        return start.date().isoformat(), start.timestamp(), following.timestamp()
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (start + timedelta(days=32)).replace(day=1)
    return f"{start:%Y-%m}", start.timestamp(), following.timestamp()


def window_span(rule: BudgetRule, window_id: str) -> tuple[float, float] | None:
    """``(start, end)`` of the window named ``window_id`` (as :func:`window_bounds` names
    them), or None when it names no window of ``rule``."""
    zone = _zone(rule.timezone)
    try:
        if rule.window == "daily":
            day = date.fromisoformat(window_id)
            start = datetime(day.year, day.month, day.day, tzinfo=zone)
        else:
            year, month = window_id.split("-")
            start = datetime(int(year), int(month), 1, tzinfo=zone)
    except ValueError:
        return None
    named, begins, ends = _window_bounds(rule, start.timestamp() + 3600)  # well inside it
    return (begins, ends) if named == window_id else None


def to_micros(usd: Decimal, *, up: bool) -> int:
    rounding = ROUND_CEILING if up else ROUND_FLOOR
    return int((usd * MICROS).to_integral_value(rounding=rounding))


def worst_case_micros(
    deployments: tuple[Deployment, ...], input_tokens: int, max_tokens: int
) -> int:
    """The most one call may cost on any of ``deployments`` (all must be priced)."""
    worst = Decimal(0)
    for d in deployments:
        if d.input_usd_per_mtok is None or d.output_usd_per_mtok is None:
            raise ValueError(f"deployment {d.id} of {d.model} has no price")
        worst = max(worst, d.input_usd_per_mtok * input_tokens + d.output_usd_per_mtok * max_tokens)
    return math.ceil(worst)


def holds_for(rules: tuple[BudgetRule, ...], now: float, amount: int) -> tuple[BudgetHold, ...]:
    holds = []
    for rule in rules:
        window, _, end = window_bounds(rule, now)
        holds.append(
            BudgetHold(
                key=f"budget:{rule.id}:{window}",
                limit=to_micros(rule.effective_limit(now), up=False),
                amount=amount,
                ttl_s=max(1.0, end - now) + SLACK_S,
            )
        )
    return tuple(holds)


def price(deployment: Deployment, usage: Usage) -> Decimal:
    """What ``usage`` costs on ``deployment`` (0 when its price is unknown: such deployments
    are refused wherever a budget applies, so an unknown price never spends budgeted money)."""
    if deployment.input_usd_per_mtok is None or deployment.output_usd_per_mtok is None:
        return Decimal(0)
    return (
        deployment.input_usd_per_mtok * usage.input_tokens
        + deployment.output_usd_per_mtok * usage.output_tokens
    ) / MTOK


def agent_call_floor_micros(
    agent: AgentConfig, deployments: Callable[[str], tuple[Deployment, ...]]
) -> int | None:
    """The agent's worst-case call: what admission reserves for a call at its ``max_tokens``
    with its system prompt alone as input, over its models and fallbacks (None: a deployment
    has no price, or the agent has none). A budget with less than this left is exceeded for
    the agent (docs/INTERFACES.md §4: ``exceeded`` once it cannot admit the agent's worst-case
    call)."""
    chain = tuple(d for model in (agent.model, *agent.fallback_models) for d in deployments(model))
    if not chain or not all(d.priced for d in chain):
        return None
    prompt = (
        estimate_messages((Message("system", agent.system_prompt),)) if agent.system_prompt else 0
    )
    return worst_case_micros(chain, prompt, agent.max_tokens)
