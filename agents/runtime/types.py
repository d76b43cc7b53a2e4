"""The runtime's vocabulary: frozen configs in, frozen results out."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from agents.runtime.errors import FallbackReason
from agents.runtime.state import BreakerConfig

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the provider sent it


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call. ``python`` and ``webhook`` tools are the agent's own and run
    server-side in the tool loop; ``client`` tools come with one request (OpenAI's ``tools``):
    a call to one ends the execution and goes back to the caller, who runs it."""

    name: str
    kind: Literal["python", "webhook", "client"]
    description: str
    parameters: Mapping[str, Any]
    function: str | None = None
    url: str | None = None
    timeout_s: float = 10.0
    max_response_bytes: int = 65_536
    strict: bool | None = None  # client tools: OpenAI's strict schema adherence, forwarded


@dataclass(frozen=True)
class ToolChoice:
    """How the caller lets the model use tools (OpenAI's ``tool_choice``).

    ``auto``: the model decides; ``none``: no tool call; ``required``: at least one tool call;
    ``function``: a call to the tool ``name``. ``required`` and ``function`` apply until the
    first server-side tool round (forcing again after it would loop to the step cap).
    """

    mode: Literal["auto", "none", "required", "function"]
    name: str | None = None


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: Literal["openai", "anthropic", "simulated"]
    base_url: str
    api_key: str | None  # resolved at config-load time (env var or decrypted secret)
    simulation: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    id: int
    model: str  # the logical model name
    provider: ProviderConfig
    upstream_model: str
    input_usd_per_mtok: Decimal | None  # None: price unknown (refused under a budget)
    output_usd_per_mtok: Decimal | None
    max_concurrency: int
    weight: int
    cached_input_usd_per_mtok: Decimal | None = None

    @property
    def priced(self) -> bool:
        return self.input_usd_per_mtok is not None and self.output_usd_per_mtok is not None


@dataclass(frozen=True)
class RateLimits:
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class BudgetRule:
    """A budget that applies to an execution (global, its agent's, its API key's)."""

    id: int
    scope: Literal["global", "agent", "api_key"]
    target: str  # "*", the agent name, or the key's id
    window: Literal["daily", "monthly"]
    limit_usd: Decimal
    timezone: str = "UTC"
    paused: bool = False
    raise_usd: Decimal | None = None
    raise_until: float | None = None  # epoch seconds

    def effective_limit(self, now: float) -> Decimal:
        if self.paused:
            return Decimal(0)
        if self.raise_usd is not None and self.raise_until is not None and now < self.raise_until:
            return self.limit_usd + self.raise_usd
        return self.limit_usd


@dataclass(frozen=True)
class AgentConfig:
    name: str
    model: str
    fallback_models: tuple[str, ...] = ()
    cheap_model: str | None = None
    system_prompt: str = ""
    timeout_s: float = 30.0  # the whole execution: retries, fallbacks and tool rounds
    # One provider attempt (a stream: until its first token), so that a hang leaves time for
    # retries and fallbacks. None: only the deadline and the fallbacks' shares bound it. Each
    # attempt may also never eat into the share of the deadline kept for the models after it
    # (timeout_s / models in the chain, or attempt_timeout_s if shorter).
    attempt_timeout_s: float | None = None
    max_retries: int = 3
    max_tokens: int = 1024
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    cache_ttl_s: int = 0
    tools: tuple[ToolSpec, ...] = ()
    fallback_messages: Mapping[str, str] = field(default_factory=dict)
    max_tool_steps: int = 8
    session_max_messages: int = 20
    session_max_tokens: int = 8000
    # Cost-aware model choice: a task this short (prompt tokens) is "simple"; below this share
    # of a budget left, the cheap model is used for everything.
    cheap_max_input_tokens: int = 50
    cheap_below_budget_pct: float = 20.0
    # A bulkhead: at most this many of its synchronous executions in flight in this process
    # (the serving process); one more is refused at once, before admission, as when every
    # deployment is full. None: no cap. Queued executions are bounded by their worker pool.
    max_concurrency: int | None = None


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True)
class ChatRequest:
    model: str  # upstream model name
    messages: tuple[Message, ...]
    max_tokens: int
    tools: tuple[ToolSpec, ...] = ()
    temperature: float | None = None
    tool_choice: ToolChoice | None = None  # None: the provider's default (auto with tools)


@dataclass(frozen=True)
class ChatResponse:
    content: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    finish_reason: str


class ExecutionStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEGRADED = "degraded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ExecutionRequest:
    agent: str
    messages: tuple[Message, ...]
    execution_id: str
    max_tokens: int | None = None
    session_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    api_key_id: int | None = None
    api_key_limits: RateLimits = field(default_factory=RateLimits)
    bypass_cache: bool = False
    # Client tools (kind "client") offered next to the agent's own; see ToolSpec.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    # Run by a worker for a queued execution: not counted against the agent's max_concurrency.
    queued: bool = False


@dataclass(frozen=True)
class Step:
    """One thing that happened during an execution (an attempt, a tool call, a refusal)."""

    kind: str  # attempt, tool, fallback, refused, cache
    model: str | None = None
    deployment: int | None = None
    outcome: str = ""
    detail: str = ""
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    wait_ms: float = 0.0  # a failed attempt that was retried: the backoff waited after it

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "model": self.model,
            "deployment": self.deployment,
            "outcome": self.outcome,
            "detail": self.detail,
            "latency_ms": round(self.latency_ms, 2),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.wait_ms:
            out["wait_ms"] = round(self.wait_ms, 2)
        return out


@dataclass(frozen=True)
class ExecutionResult:
    execution_id: str
    agent: str
    status: ExecutionStatus
    output: str
    model: str | None
    deployment: int | None
    attempts: int
    fallback_used: bool
    fallback_reason: FallbackReason | None
    cached: bool
    usage: Usage
    cost_usd: Decimal
    latency_ms: float
    created_at: float
    finished_at: float
    steps: tuple[Step, ...] = ()
    error: Mapping[str, str] | None = None
    session_id: str | None = None
    api_key_id: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    input: tuple[Message, ...] = ()
    retry_after: float | None = None
    model_choice: str = "standard"  # standard | cheap:simple | cheap:hint | cheap:budget_low
    finish_reason: str = "stop"  # the answering call's: stop, length, tool_calls
    saved_usd: Decimal = Decimal(0)  # for cache hits: what the call would have cost
    tool_calls: tuple[ToolCall, ...] = ()  # calls to client tools, for the caller to run

    def as_dict(self) -> dict[str, Any]:
        """The execution result of docs/INTERFACES.md §4."""
        return {
            "execution_id": self.execution_id,
            "agent": self.agent,
            "status": self.status.value,
            "output": self.output,
            "model": self.model,
            "deployment": self.deployment,
            "attempts": self.attempts,
            "fallback_used": self.fallback_used,
            "fallback_reason": self.fallback_reason,
            "cached": self.cached,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
            },
            "cost_usd": float(self.cost_usd),
            "latency_ms": round(self.latency_ms, 2),
            "created_at": self.created_at,
            "started_at": self.created_at,  # the runtime's created_at is when it started
            "model_choice": self.model_choice,
            "steps": [step.as_dict() for step in self.steps],
        }
