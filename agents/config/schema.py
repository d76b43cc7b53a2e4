"""The config-as-code document (docs/INTERFACES.md §2), as pydantic models.

Shape, types and ranges are checked here; references between entries (an agent's model exists,
a budget's target exists) are checked in :mod:`agents.config.apply` against the document plus
the database. Every error is reported as ``path: message``, e.g.
``agents[2].breaker.failure_threshold: must be >= 1``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agents.models import (
    ATTEMPT_TIMEOUT_MIN_S,
    DEFAULT_QUEUE,
    ENV_NAME_RE,
    MODEL_NAME_RE,
    MONEY_MAX,
    PRICE_MAX,
    QUEUE_NAME_RE,
    SLO_DEFAULT_AVAILABILITY,
    SLO_DEFAULT_LATENCY_MS,
    SLO_DEFAULT_LATENCY_QUANTILE,
    SLO_LATENCY_MS_MAX,
    SLO_OBJECTIVE_MAX,
    SLO_OBJECTIVE_MIN,
    SLUG_RE,
)
from agents.runtime.addresses import provider_host_refusal
from agents.runtime.fallbacks import FALLBACK_KINDS
from agents.runtime.schemas import schema_problem

_PARAMETERS_DEPTH = 100

Slug = Annotated[str, StringConstraints(pattern=SLUG_RE)]
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_RE)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_RE)]
ToolName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$")]
# Money columns are DecimalField(max_digits=14, decimal_places=6): MONEY_MAX itself (10^8) does
# not fit (PostgreSQL: "numeric field overflow"), so the bound is strict.
# Lax where every other field is strict (Spec): YAML and JSON give money as a float, an int or
# a string, never a Decimal. A bool is still refused (pydantic's Decimal never takes one).
Money = Annotated[
    Decimal, Field(ge=0, lt=MONEY_MAX, allow_inf_nan=False, decimal_places=6, strict=False)
]
Price = Annotated[
    Decimal, Field(ge=0, le=PRICE_MAX, allow_inf_nan=False, decimal_places=6, strict=False)
]

# Sane minimums (docs/OPERATIONS.md, "Config as code"): a positive float as small as 1e-300 is
# no deadline at all (every call times out at once, or a breaker never stays open), so each
# duration and rate has a floor a real deployment never goes under.
MIN_TIMEOUT_S = 0.1  # an execution's deadline: no provider call finishes sooner
MIN_TOOL_TIMEOUT_S = 0.01  # a tool call's (a Python tool may take microseconds)
MIN_RECOVERY_S = 0.1  # a breaker's open period
MIN_SLOW_CALL_S = 0.01  # what counts as a slow call
MIN_RATE = 0.001  # a breaker rate threshold: one call in the largest window (1000)
Seconds = Annotated[float, Field(ge=MIN_TIMEOUT_S, allow_inf_nan=False)]

# Keys Celery's Redis transport and Celery itself keep in the broker's database: a queue of that
# name would be the same Redis key (WRONGTYPE errors, or messages read as bookkeeping).
RESERVED_QUEUES = frozenset({"unacked", "unacked_index", "unacked_mutex"})
RESERVED_QUEUE_PREFIXES = ("celeryev", "celery-task-meta-", "celery-taskset-meta-", "chord-unlock")
RESERVED_QUEUE_SUFFIXES = (".pidbox", ".reply.celery.pidbox")


def queue_refusal(name: str) -> str | None:
    """Why ``name`` cannot be an agent's Celery queue (None: it can)."""
    if re.fullmatch(QUEUE_NAME_RE, name) is None:
        return (
            "must be a Celery queue name: 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (no spaces, commas or colons)"
        )
    if (
        name in RESERVED_QUEUES
        or name.startswith(RESERVED_QUEUE_PREFIXES)
        or name.endswith(RESERVED_QUEUE_SUFFIXES)
    ):
        return "is a name Celery's Redis transport uses for its own keys; choose another"
    return None


DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}


class Spec(BaseModel):
    # Strict: an integer field takes an integer, not true (bools are ints in Python), 10.0 or
    # "10"; a number field a number; a flag true or false. Money alone is lax (above).
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True, strict=True)


URL_MAX = 500  # Provider.base_url is a varchar(500); PostgreSQL refuses longer values

# PositiveIntegerField is a 32-bit integer on PostgreSQL: a larger value passes SQLite and then
# fails on PostgreSQL at write time, so the schema caps it where the column does.
INT32_MAX = 2_147_483_647


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    value = value.rstrip("/")
    if len(value) > URL_MAX:
        raise ValueError(f"must be at most {URL_MAX} characters")
    return value


def base_url_refusal(url: str) -> str | None:
    """Why a provider may not use ``url`` (None: it may): a literal cloud metadata address,
    unless its host is in ``BREAKWATER_PROVIDER_ALLOW_HOSTS``. A name that resolves to one is
    refused when it is resolved (agents/runtime/addresses.py); apply, the API and the admin all
    ask this."""
    from django.conf import settings

    reason = provider_host_refusal(
        urlsplit(url).hostname or "", settings.BREAKWATER_PROVIDER_ALLOW_HOSTS
    )
    if reason is None:
        return None
    return f"{reason}; refused unless the host is in BREAKWATER_PROVIDER_ALLOW_HOSTS"


def checked_url(value: str) -> str:
    """``value`` as an http(s) URL a provider or a notification channel may use: normalized,
    bounded, and not a cloud metadata address (:func:`base_url_refusal`)."""
    value = _http_url(value)
    refusal = base_url_refusal(value)
    if refusal is not None:
        raise ValueError(refusal)
    return value


class SimulationSpec(Spec):
    """Behaviour of a ``simulated`` provider: deterministic for a given seed."""

    latency_ms: float = Field(default=800, ge=0, le=600_000, allow_inf_nan=False)
    jitter_ms: float = Field(default=0, ge=0, le=600_000, allow_inf_nan=False)
    error_rate: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class ProviderSpec(Spec):
    name: Slug
    kind: Literal["openai", "anthropic", "simulated"]
    base_url: str | None = None
    api_key_env: EnvName | None = None
    simulation: SimulationSpec | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else checked_url(value)

    @model_validator(mode="after")
    def _kind_rules(self) -> ProviderSpec:
        if self.kind != "simulated" and self.simulation is not None:
            raise ValueError("simulation: only allowed for kind simulated")
        return self

    def resolved_base_url(self) -> str:
        return self.base_url or DEFAULT_BASE_URLS.get(self.kind, "")


class ModelSpec(Spec):
    name: ModelName
    provider: Slug
    upstream_model: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    # Omit both for an unknown price: allowed only where no budget applies (fail closed).
    input_usd_per_mtok: Price | None = None
    output_usd_per_mtok: Price | None = None
    cached_input_usd_per_mtok: Price | None = None
    max_concurrency: int = Field(default=64, ge=1, le=100_000)
    weight: int = Field(default=1, ge=1, le=1000)
    enabled: bool = True

    @model_validator(mode="after")
    def _prices(self) -> ModelSpec:
        if (self.input_usd_per_mtok is None) != (self.output_usd_per_mtok is None):
            raise ValueError("set both input_usd_per_mtok and output_usd_per_mtok, or neither")
        if self.cached_input_usd_per_mtok is not None and self.input_usd_per_mtok is None:
            raise ValueError("cached_input_usd_per_mtok: needs input_usd_per_mtok")
        return self


class BreakerSpec(Spec):
    """Opens on ``failure_threshold`` consecutive failures, or when over the last
    ``window_size`` calls (at least ``minimum_calls`` of them) the failure rate reaches
    ``failure_rate_threshold`` or the share slower than ``slow_call_s`` reaches
    ``slow_call_rate_threshold``."""

    failure_threshold: int = Field(default=5, ge=1, le=10_000)
    recovery_timeout_s: float = Field(default=60, ge=MIN_RECOVERY_S, le=86_400, allow_inf_nan=False)
    half_open_max_calls: int = Field(default=1, ge=1, le=1000)
    window_size: int = Field(default=20, ge=1, le=1000)
    minimum_calls: int = Field(default=10, ge=1, le=1000)
    failure_rate_threshold: float = Field(default=0.5, ge=MIN_RATE, le=1, allow_inf_nan=False)
    slow_call_s: float | None = Field(
        default=None, ge=MIN_SLOW_CALL_S, le=3600, allow_inf_nan=False
    )
    slow_call_rate_threshold: float = Field(default=1.0, ge=MIN_RATE, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _window(self) -> BreakerSpec:
        if self.minimum_calls > self.window_size:
            raise ValueError("minimum_calls: must be <= window_size")
        return self


class RateLimitSpec(Spec):
    rpm: int | None = Field(default=None, ge=1, le=10_000_000)
    tpm: int | None = Field(default=None, ge=1, le=INT32_MAX)


Objective = Annotated[float, Field(ge=SLO_OBJECTIVE_MIN, le=SLO_OBJECTIVE_MAX, allow_inf_nan=False)]


class SloSpec(Spec):
    """The agent's service level objectives (docs/OPERATIONS.md, "SLOs"): ``availability`` of
    the valid requests are answered by a model (the primary, a fallback model or the cache), and
    ``latency_quantile`` of them within ``latency_ms``. Both over 30 days."""

    availability: Objective = SLO_DEFAULT_AVAILABILITY
    latency_ms: int = Field(default=SLO_DEFAULT_LATENCY_MS, ge=1, le=SLO_LATENCY_MS_MAX)
    latency_quantile: Objective = SLO_DEFAULT_LATENCY_QUANTILE


class ToolSpec(Spec):
    """A tool the agent may call: an allow-listed Python callable or an HTTP webhook."""

    name: ToolName
    kind: Literal["python", "webhook"]
    description: str = Field(default="", max_length=1000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    function: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    url: str | None = None
    timeout_s: float = Field(default=10, ge=MIN_TOOL_TIMEOUT_S, le=300, allow_inf_nan=False)
    max_response_bytes: int = Field(default=65_536, ge=1, le=10 * 1024 * 1024)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="after")
    def _kind_fields(self) -> ToolSpec:
        if self.kind == "python" and (self.function is None or self.url is not None):
            raise ValueError("a python tool needs `function` (module:callable) and no `url`")
        if self.kind == "webhook" and (self.url is None or self.function is not None):
            raise ValueError("a webhook tool needs `url` and no `function`")
        if self.parameters.get("type") != "object":
            raise ValueError("parameters: must be a JSON schema of type object")
        # The YAML reader's own depth limit (apply.MAX_YAML_DEPTH): only JSON from the REST API
        # can come this deep.
        problem = schema_problem(self.parameters, max_depth=_PARAMETERS_DEPTH)
        if problem is not None:
            raise ValueError(f"{problem.at('parameters')}: {problem.reason}")
        return self


class AgentSpec(Spec):
    name: Slug
    description: str = Field(default="", max_length=500)
    model: ModelName
    fallback_models: list[ModelName] = Field(default_factory=list, max_length=10)
    cheap_model: ModelName | None = None
    system_prompt: str = Field(default="", max_length=100_000)
    timeout_s: Seconds = Field(default=30, le=3600)
    # One provider attempt (a stream: until its first token); see docs/OPERATIONS.md. None: the
    # deadline and the share kept for each fallback model bound it.
    attempt_timeout_s: Seconds | None = Field(
        default=None, ge=ATTEMPT_TIMEOUT_MIN_S, le=3600, strict=True
    )
    max_retries: int = Field(default=3, ge=0, le=10)
    max_tokens: int = Field(default=1024, ge=1, le=1_000_000)
    breaker: BreakerSpec = Field(default_factory=BreakerSpec)
    rate_limit: RateLimitSpec = Field(default_factory=RateLimitSpec)
    cache_ttl_s: int = Field(default=0, ge=0, le=30 * 86_400)
    daily_budget_usd: Money | None = None
    tools: list[ToolSpec] = Field(default_factory=list, max_length=64)
    fallback_messages: dict[
        str, Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    ] = Field(default_factory=dict)
    slo: SloSpec = Field(default_factory=SloSpec)
    # The Celery queue of its queued executions (docs/SCALING.md, "Per-agent pools"); `default`
    # is BREAKWATER_EXECUTION_QUEUE.
    # Its bulkhead in each serving process: at most this many synchronous executions in flight
    # there; one more is refused at once (rate limited, Retry-After 1). None: no cap.
    max_concurrency: int | None = Field(default=None, ge=1, le=100_000)
    queue: str = Field(
        default=DEFAULT_QUEUE,
        description="The Celery queue (worker pool) of its queued executions; `default` is "
        "BREAKWATER_EXECUTION_QUEUE.",
        # Documented here, checked by _queue_name (whose message names the agent).
        json_schema_extra={"pattern": QUEUE_NAME_RE, "maxLength": 64},
    )
    enabled: bool = True

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str, info: ValidationInfo) -> str:
        refusal = queue_refusal(value)
        if refusal is not None:
            agent = info.data.get("name")
            of = f" (agent {agent})" if agent else ""
            raise ValueError(f"{value!r} {refusal}{of}")
        return value

    @field_validator("fallback_messages")
    @classmethod
    def _known_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - FALLBACK_KINDS)
        if unknown:
            raise ValueError(
                f"unknown kind {unknown[0]!r}; expected one of {', '.join(sorted(FALLBACK_KINDS))}"
            )
        return value

    @model_validator(mode="after")
    def _chain(self) -> AgentSpec:
        if self.attempt_timeout_s is not None and self.attempt_timeout_s > self.timeout_s:
            raise ValueError(
                f"attempt_timeout_s: must be <= timeout_s ({self.timeout_s:g}), "
                f"got {self.attempt_timeout_s:g}"
            )
        if self.model in self.fallback_models:
            raise ValueError("fallback_models: must not contain the agent's own model")
        if len(set(self.fallback_models)) != len(self.fallback_models):
            raise ValueError("fallback_models: must not repeat a model (a cycle)")
        if self.cheap_model is not None and self.cheap_model == self.model:
            raise ValueError("cheap_model: must differ from model")
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("tools: tool names must be unique")
        return self


class BudgetSpec(Spec):
    scope: Literal["global", "agent", "api_key"]
    target: str | None = None  # agent name or API key prefix; none for global
    daily_limit_usd: Money | None = None
    monthly_limit_usd: Money | None = None
    timezone: str = "UTC"
    warn_at_pct: int = Field(default=50, ge=1, le=99)
    alert_at_pct: int = Field(default=80, ge=2, le=100)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _shape(self) -> BudgetSpec:
        if self.scope == "global" and self.target is not None:
            raise ValueError("target: not allowed for a global budget")
        if self.scope != "global" and not self.target:
            raise ValueError(f"target: required for scope {self.scope}")
        if self.daily_limit_usd is None and self.monthly_limit_usd is None:
            raise ValueError("set daily_limit_usd, monthly_limit_usd or both")
        if self.warn_at_pct >= self.alert_at_pct:
            raise ValueError("warn_at_pct: must be below alert_at_pct")
        return self


NOTIFY_TO_MAX = 50
# Addresses as an on-call list holds them: a local part, one @, a dotted domain; no spaces,
# commas or angle brackets (one address per item, no display names).
EmailAddress = Annotated[
    str,
    StringConstraints(max_length=254, pattern=r"^[^@\s,<>\"]{1,64}@[^@\s,<>\"]+\.[^@\s,<>\"]+$"),
]


class NotificationSpec(Spec):
    """A notification channel (docs/OPERATIONS.md, "Notifications"): incidents of at least
    ``min_severity`` are announced there when they open, escalate and resolve. Secrets are named
    by environment variable only: ``url_env`` (a Slack webhook URL is itself a secret) and a
    webhook's ``secret_env`` (its HMAC-SHA256 signing key)."""

    name: Slug
    kind: Literal["webhook", "slack", "email"]
    url: str | None = None
    url_env: EnvName | None = None
    secret_env: EnvName | None = None
    to: list[EmailAddress] = Field(default_factory=list, max_length=NOTIFY_TO_MAX)
    min_severity: Literal["minor", "major", "critical"] = "minor"
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else checked_url(value)

    @model_validator(mode="after")
    def _kind_fields(self) -> NotificationSpec:
        if self.kind == "email":
            if not self.to:
                raise ValueError("to: an email channel needs at least one address")
            if len({address.lower() for address in self.to}) != len(self.to):
                raise ValueError("to: must not repeat an address")
            for name in ("url", "url_env", "secret_env"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: not allowed for an email channel")
            return self
        if (self.url is None) == (self.url_env is None):
            raise ValueError(f"url: a {self.kind} channel needs exactly one of url and url_env")
        if self.to:
            raise ValueError(f"to: only allowed for an email channel, not {self.kind}")
        if self.kind == "slack" and self.secret_env is not None:
            raise ValueError("secret_env: only allowed for a webhook channel (Slack signs nothing)")
        return self


class ConfigDocument(Spec):
    providers: list[ProviderSpec] = Field(default_factory=list)
    models: list[ModelSpec] = Field(default_factory=list)
    agents: list[AgentSpec] = Field(default_factory=list)
    budgets: list[BudgetSpec] = Field(default_factory=list)
    notifications: list[NotificationSpec] = Field(default_factory=list)


_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "finite_number": "must be a finite number",
    "extra_forbidden": "unknown field",
    "missing": "is required",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "decimal_type": "must be a number",
    "decimal_parsing": "must be a number",
    "decimal_max_places": "must have at most {decimal_places} decimal places",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "string_pattern_mismatch": "invalid format (must match {pattern})",
    "string_too_long": "must be at most {max_length} characters",
    "string_too_short": "must not be empty",
    "list_type": "must be a list",
    "too_long": "must have at most {max_length} items",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "literal_error": "must be one of {expected}",
    "invalid_key": "keys must be strings",
}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]" or part.startswith("function-"):
            continue  # pydantic's markers for a mapping key / a validator, not document paths
        else:
            out += f".{part}" if out else part
    return out


def _plain(value: Any) -> Any:
    """``0`` rather than ``0.0`` in messages: the bound as a user would write it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def format_errors(exc: ValidationError) -> list[str]:
    """``path: message`` lines, in document order."""
    lines = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        ctx = {key: _plain(value) for key, value in (err.get("ctx") or {}).items()}
        if kind == "value_error":
            message = str(ctx.get("error", err["msg"]))
            # A validator may prefix its message with the sub-field it is about (a dotted path
            # into it, e.g. a tool's parameters.properties.city.type).
            prefix = message.split(": ", 1)[0]
            if ": " in message and " " not in prefix and prefix.split(".")[0].isidentifier():
                field, message = message.split(": ", 1)
                lines.append(f"{_path((*err['loc'], field))}: {message}")
                continue
        else:
            template = _MESSAGES.get(kind)
            message = template.format(**ctx) if template else err["msg"]
        lines.append(f"{_path(err['loc'])}: {message}" if err["loc"] else message)
    return lines
