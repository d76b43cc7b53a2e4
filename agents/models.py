"""Providers, model deployments, agents, API keys and executions.

Invariants live in the database as CHECK/UNIQUE constraints, so a bad row is refused however it
is written (ORM, admin, raw SQL, another service). ``agents.config`` validates the same rules
earlier, with messages that name the field path, before anything touches the database.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

SLUG_RE = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
MODEL_NAME_RE = r"^[A-Za-z0-9](?:[A-Za-z0-9._:/-]{0,126}[A-Za-z0-9])?$"
ENV_NAME_RE = r"^[A-Z_][A-Z0-9_]{0,127}$"
SCOPES_RE = r"^(read|execute|operate|admin)(,(read|execute|operate|admin)){0,3}$"
MONEY_MAX = Decimal(
    "100000000"
)  # exclusive: $100M is a typo, not a budget (and overflows the columns)
PRICE_MAX = Decimal("100000")  # $100k per 1M tokens
# No provider call (connect, TLS, a first token) fits in less: a smaller attempt timeout is a
# typo, and would turn every attempt into a timeout.
ATTEMPT_TIMEOUT_MIN_S = 0.1
# An agent's SLO (config `slo:`): the defaults are the reference deployment's non-negotiables
# (99.9% available, p95 under 2 s). An objective is a share strictly between 0 and 1: below
# one half it is no objective, and above 0.99999 the 30-day error budget is under a request in
# 100,000 (26 s of a 30-day month), finer than the rollups' minute buckets resolve.
SLO_DEFAULT_AVAILABILITY = 0.999
SLO_DEFAULT_LATENCY_MS = 2000
SLO_DEFAULT_LATENCY_QUANTILE = 0.95
SLO_OBJECTIVE_MIN = 0.5
SLO_OBJECTIVE_MAX = 0.99999
SLO_LATENCY_MS_MAX = 3_600_000  # an execution's deadline is at most an hour
# An agent's queue (config `queue:`; docs/SCALING.md, "Per-agent pools"): the Celery queue its
# queued executions go to. `default` is the deployment's execution queue
# (BREAKWATER_EXECUTION_QUEUE); any other name is a Celery queue of that name, which a worker
# consumes with `-Q name`. A name is a Redis key and a `-Q a,b` item: no spaces, commas or
# colons (agents.config.schema refuses the names Celery's Redis transport uses itself).
DEFAULT_QUEUE = "default"
QUEUE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ProviderKind(models.TextChoices):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    SIMULATED = "simulated"


class Provider(models.Model):
    """An upstream LLM API. Its key is a reference to an env var or a Fernet token, never plain."""

    name = models.CharField(max_length=64, unique=True, validators=[RegexValidator(SLUG_RE)])
    kind = models.CharField(max_length=16, choices=ProviderKind.choices)
    base_url = models.URLField(max_length=500, blank=True, default="")
    api_key_env = models.CharField(max_length=128, blank=True, default="")
    api_key_encrypted = models.TextField(blank=True, default="", editable=False)
    # For `simulated` providers: latency_ms, jitter_ms, error_rate, seed (see agents.config).
    simulation = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(name__regex=SLUG_RE), name="provider_name_slug"),
            models.CheckConstraint(
                condition=Q(kind__in=ProviderKind.values), name="provider_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(kind=ProviderKind.SIMULATED) | ~Q(base_url=""),
                name="provider_base_url_required",
                violation_error_message="base_url is required for openai and anthropic providers",
            ),
            models.CheckConstraint(
                condition=Q(api_key_env="") | Q(api_key_env__regex=ENV_NAME_RE),
                name="provider_api_key_env_name",
            ),
            models.CheckConstraint(
                condition=Q(api_key_env="") | Q(api_key_encrypted=""),
                name="provider_one_key_source",
                violation_error_message="use either api_key_env or a stored secret, not both",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def has_stored_secret(self) -> bool:
        return bool(self.api_key_encrypted)


class ModelDeployment(models.Model):
    """One upstream model on one provider; deployments sharing ``name`` form a logical model."""

    name = models.CharField(max_length=128, validators=[RegexValidator(MODEL_NAME_RE)])
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="deployments")
    upstream_model = models.CharField(max_length=128)
    # Both null = the price is unknown: allowed only where no budget applies (fail closed).
    input_usd_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    output_usd_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True
    )
    cached_input_usd_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True
    )
    max_concurrency = models.PositiveIntegerField(default=64, validators=[MinValueValidator(1)])
    weight = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["name", "provider", "upstream_model"], name="deployment_identity_unique"
            ),
            models.CheckConstraint(
                condition=Q(name__regex=MODEL_NAME_RE), name="deployment_name_valid"
            ),
            models.CheckConstraint(condition=~Q(upstream_model=""), name="deployment_upstream"),
            models.CheckConstraint(
                condition=Q(input_usd_per_mtok__isnull=True)
                | Q(input_usd_per_mtok__gte=0, input_usd_per_mtok__lte=PRICE_MAX),
                name="deployment_input_price_range",
            ),
            models.CheckConstraint(
                condition=Q(output_usd_per_mtok__isnull=True)
                | Q(output_usd_per_mtok__gte=0, output_usd_per_mtok__lte=PRICE_MAX),
                name="deployment_output_price_range",
            ),
            models.CheckConstraint(
                condition=Q(input_usd_per_mtok__isnull=True, output_usd_per_mtok__isnull=True)
                | Q(input_usd_per_mtok__isnull=False, output_usd_per_mtok__isnull=False),
                name="deployment_price_complete",
                violation_error_message="set both input and output prices, or neither",
            ),
            models.CheckConstraint(
                condition=Q(cached_input_usd_per_mtok__isnull=True)
                | Q(
                    cached_input_usd_per_mtok__gte=0,
                    cached_input_usd_per_mtok__lte=PRICE_MAX,
                    input_usd_per_mtok__isnull=False,
                ),
                name="deployment_cached_price_range",
            ),
            models.CheckConstraint(
                condition=Q(max_concurrency__gte=1, max_concurrency__lte=100000),
                name="deployment_concurrency_range",
            ),
            models.CheckConstraint(
                condition=Q(weight__gte=1, weight__lte=1000), name="deployment_weight_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} @ {self.provider_id}:{self.upstream_model}"


class Agent(models.Model):
    """An agent config: the config-as-code fields (docs/INTERFACES.md §2), one column per scalar."""

    name = models.CharField(max_length=64, unique=True, validators=[RegexValidator(SLUG_RE)])
    description = models.CharField(max_length=500, blank=True, default="")
    model = models.CharField(max_length=128)
    fallback_models = models.JSONField(default=list, blank=True)
    cheap_model = models.CharField(max_length=128, blank=True, default="")
    system_prompt = models.TextField(blank=True, default="")
    timeout_s = models.FloatField(default=30.0)
    attempt_timeout_s = models.FloatField(null=True, blank=True)  # null: derived (OPERATIONS.md)
    max_retries = models.PositiveSmallIntegerField(default=3)
    max_tokens = models.PositiveIntegerField(default=1024)
    breaker_failure_threshold = models.PositiveIntegerField(default=5)
    breaker_recovery_timeout_s = models.FloatField(default=60.0)
    breaker_half_open_max_calls = models.PositiveIntegerField(default=1)
    breaker_window_size = models.PositiveIntegerField(default=20)
    breaker_minimum_calls = models.PositiveIntegerField(default=10)
    breaker_failure_rate = models.FloatField(default=0.5)
    breaker_slow_call_s = models.FloatField(null=True, blank=True)
    breaker_slow_call_rate = models.FloatField(default=1.0)
    rate_limit_rpm = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_tpm = models.PositiveIntegerField(null=True, blank=True)
    cache_ttl_s = models.PositiveIntegerField(default=0)
    tools = models.JSONField(default=list, blank=True)
    fallback_messages = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    # The agent's SLO (config `slo:`; docs/OPERATIONS.md, "SLOs"): the share of valid requests
    # answered by a model, and the share answered within slo_latency_ms.
    slo_availability = models.FloatField(default=SLO_DEFAULT_AVAILABILITY)
    slo_latency_ms = models.PositiveIntegerField(default=SLO_DEFAULT_LATENCY_MS)
    slo_latency_quantile = models.FloatField(default=SLO_DEFAULT_LATENCY_QUANTILE)
    max_concurrency = models.PositiveIntegerField(null=True, blank=True)  # null: no cap
    queue = models.CharField(
        max_length=64, default=DEFAULT_QUEUE, validators=[RegexValidator(QUEUE_NAME_RE)]
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(name__regex=SLUG_RE), name="agent_name_slug"),
            models.CheckConstraint(
                condition=Q(queue__regex=QUEUE_NAME_RE), name="agent_queue_name"
            ),
            models.CheckConstraint(
                condition=Q(max_concurrency__isnull=True)
                | Q(max_concurrency__gte=1, max_concurrency__lte=100_000),
                name="agent_max_concurrency_range",
            ),
            models.CheckConstraint(
                condition=Q(
                    slo_availability__gte=SLO_OBJECTIVE_MIN,
                    slo_availability__lte=SLO_OBJECTIVE_MAX,
                    slo_latency_quantile__gte=SLO_OBJECTIVE_MIN,
                    slo_latency_quantile__lte=SLO_OBJECTIVE_MAX,
                    slo_latency_ms__gte=1,
                    slo_latency_ms__lte=SLO_LATENCY_MS_MAX,
                ),
                name="agent_slo_range",
            ),
            models.CheckConstraint(condition=~Q(model=""), name="agent_model_required"),
            # Upper bounds also reject NaN and infinity (PostgreSQL sorts NaN above every number).
            models.CheckConstraint(
                condition=Q(timeout_s__gt=0, timeout_s__lte=3600), name="agent_timeout_range"
            ),
            models.CheckConstraint(
                condition=Q(attempt_timeout_s__isnull=True)
                | Q(
                    attempt_timeout_s__gte=ATTEMPT_TIMEOUT_MIN_S,
                    attempt_timeout_s__lte=models.F("timeout_s"),
                ),
                name="agent_attempt_timeout_range",
            ),
            models.CheckConstraint(
                condition=Q(max_retries__gte=0, max_retries__lte=10), name="agent_retries_range"
            ),
            models.CheckConstraint(
                condition=Q(max_tokens__gte=1, max_tokens__lte=1_000_000),
                name="agent_max_tokens_range",
            ),
            models.CheckConstraint(
                condition=Q(breaker_failure_threshold__gte=1, breaker_failure_threshold__lte=10000),
                name="agent_breaker_threshold_range",
            ),
            models.CheckConstraint(
                condition=Q(
                    breaker_recovery_timeout_s__gt=0, breaker_recovery_timeout_s__lte=86400
                ),
                name="agent_breaker_recovery_range",
            ),
            models.CheckConstraint(
                condition=Q(
                    breaker_half_open_max_calls__gte=1, breaker_half_open_max_calls__lte=1000
                ),
                name="agent_breaker_half_open_range",
            ),
            models.CheckConstraint(
                condition=Q(breaker_window_size__gte=1, breaker_window_size__lte=1000)
                & Q(breaker_minimum_calls__gte=1)
                & Q(breaker_minimum_calls__lte=models.F("breaker_window_size")),
                name="agent_breaker_window_valid",
            ),
            models.CheckConstraint(
                condition=Q(breaker_failure_rate__gt=0, breaker_failure_rate__lte=1)
                & Q(breaker_slow_call_rate__gt=0, breaker_slow_call_rate__lte=1),
                name="agent_breaker_rates_valid",
            ),
            models.CheckConstraint(
                condition=Q(breaker_slow_call_s__isnull=True)
                | Q(breaker_slow_call_s__gt=0, breaker_slow_call_s__lte=3600),
                name="agent_breaker_slow_call_valid",
            ),
            models.CheckConstraint(
                condition=Q(rate_limit_rpm__isnull=True) | Q(rate_limit_rpm__gte=1),
                name="agent_rpm_positive",
            ),
            models.CheckConstraint(
                condition=Q(rate_limit_tpm__isnull=True) | Q(rate_limit_tpm__gte=1),
                name="agent_tpm_positive",
            ),
            models.CheckConstraint(
                condition=Q(cache_ttl_s__gte=0, cache_ttl_s__lte=30 * 86400),
                name="agent_cache_ttl_range",
            ),
            models.CheckConstraint(
                condition=~Q(cheap_model=models.F("model")) | Q(cheap_model=""),
                name="agent_cheap_model_differs",
                violation_error_message="cheap_model must differ from model",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Scope(models.TextChoices):
    READ = "read"
    EXECUTE = "execute"
    OPERATE = "operate"
    ADMIN = "admin"


class ApiKey(models.Model):
    """An API key: the public ``prefix`` finds the row, the SHA-256 of the whole key proves it.

    Keys carry 190 bits of randomness, so a fast hash is safe (no offline guessing is feasible)
    and keeps authentication cheap; comparison is constant-time (see ``agents.access.keys``).
    """

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = models.CharField(max_length=64)  # comma-separated, checked by the database
    agents = models.ManyToManyField(Agent, blank=True, related_name="api_keys")
    rate_limit_rpm = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_tpm = models.PositiveIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(scopes__regex=SCOPES_RE), name="apikey_scopes_valid"
            ),
            models.CheckConstraint(condition=Q(prefix__startswith="bw_"), name="apikey_prefix"),
            models.CheckConstraint(
                condition=Q(secret_hash__regex=r"^[0-9a-f]{64}$"),  # noqa: S106 - a pattern
                name="apikey_hash_sha256",
            ),
            models.CheckConstraint(condition=~Q(name=""), name="apikey_name_required"),
            models.CheckConstraint(
                condition=(Q(rate_limit_rpm__isnull=True) | Q(rate_limit_rpm__gte=1))
                & (Q(rate_limit_tpm__isnull=True) | Q(rate_limit_tpm__gte=1)),
                name="apikey_rate_limits_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split(","))


class ExecutionStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEGRADED = "degraded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FallbackReason(models.TextChoices):
    CIRCUIT_OPEN = "circuit_open"
    BUDGET_EXCEEDED = "budget_exceeded"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    LLM_ERROR = "llm_error"
    TOOL_ERROR = "tool_error"


class Execution(models.Model):
    """One agent execution: the execution result of docs/INTERFACES.md §4, as stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent_name = models.CharField(max_length=64)
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=16, choices=ExecutionStatus.choices)
    input = models.JSONField(default=list)
    output = models.TextField(blank=True, default="")
    model = models.CharField(max_length=128, blank=True, default="")
    deployment_id = models.BigIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    fallback_used = models.BooleanField(default=False)
    fallback_reason = models.CharField(  # noqa: DJ001 - docs/INTERFACES.md §4 says null, not ""
        max_length=32, choices=FallbackReason.choices, null=True, blank=True
    )
    cached = models.BooleanField(default=False)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal(0))
    # standard | cheap:simple | cheap:hint | cheap:budget_low (the runtime's cost-aware choice)
    model_choice = models.CharField(max_length=32, default="standard")
    saved_usd = models.DecimalField(  # a cache hit: what the call would have cost
        max_digits=16, decimal_places=8, default=Decimal(0)
    )
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    session_id = models.CharField(max_length=128, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    # A queued execution's own cap on output tokens, when its request set one (None: the
    # agent's): kept on the row so that a requeued execution (its message lost) keeps it.
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    steps = models.JSONField(default=list, blank=True)
    error = models.JSONField(null=True, blank=True)
    # When it was accepted: never rewritten (a queued execution keeps it when a worker claims
    # it). The rollups, the explorer and the API's lists go by it.
    created_at = models.DateTimeField(default=timezone.now)
    # When it started running: the claim of a queued execution, the admission of one run now;
    # also the time its budget windows were chosen (``SpendEntry.at``). None: not started yet
    # (queued, cancelled while queued), or recorded before the column existed (agents
    # migration 0012; ``created_at`` was then the start).
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Which write last changed what the rollups count (a trigger sets it on every insert, and
    # on every update of a counted column; agents migration 0012): on PostgreSQL the writing
    # transaction's id, on SQLite a counter. ``budgets.rollups`` refolds the buckets of the
    # rows it has not seen yet (docs/DECISIONS.md #23). None: written before the column existed.
    seq = models.BigIntegerField(null=True, blank=True, editable=False)
    # Recovery (agents.executions.queue.executions_settle_dead): the process running it (a
    # WorkerProcess id), what its admission reserved, and when it was queued (None: run now).
    owner = models.CharField(max_length=36, blank=True, default="")
    reserved_usd = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal(0))
    queued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # Keyset pagination: WHERE agent_name = ? AND (created_at, id) < (?, ?) ORDER BY ...
            models.Index(fields=["agent_name", "-created_at", "-id"], name="execution_agent_time"),
            models.Index(fields=["status", "-created_at", "-id"], name="execution_status_time"),
            models.Index(fields=["-created_at", "-id"], name="execution_time"),
            # The console's explorer (console/pages/executions.py, docs/DECISIONS.md): each
            # filter it allows, alone or with an agent, seeks one index in time order, so a
            # page costs the same at 15M rows whatever matches. The partial ones hold only
            # the rows they serve (fallbacks, cache hits).
            models.Index(
                fields=["agent_name", "status", "-created_at", "-id"],
                name="execution_agent_status_time",
            ),
            models.Index(fields=["model", "-created_at", "-id"], name="execution_model_time"),
            models.Index(
                fields=["fallback_reason", "-created_at", "-id"],
                name="execution_reason_time",
                condition=Q(fallback_reason__isnull=False),
            ),
            models.Index(
                fields=["agent_name", "fallback_reason", "-created_at", "-id"],
                name="execution_agent_reason_time",
                condition=Q(fallback_reason__isnull=False),
            ),
            models.Index(
                fields=["-created_at", "-id"],
                name="execution_cached_time",
                condition=Q(cached=True),
            ),
            models.Index(
                fields=["agent_name", "-created_at", "-id"],
                name="execution_agent_cached_time",
                condition=Q(cached=True),
            ),
            # The rollups' watermark: the rows written since a refresh (budgets.rollups).
            models.Index(fields=["seq"], name="execution_seq", condition=Q(seq__isnull=False)),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ExecutionStatus.values), name="execution_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(fallback_reason__isnull=True)
                | Q(fallback_reason__in=FallbackReason.values),
                name="execution_fallback_reason_valid",
            ),
            models.CheckConstraint(
                condition=Q(cost_usd__gte=0, cost_usd__lt=MONEY_MAX),
                name="execution_cost_range",
            ),
            models.CheckConstraint(
                condition=~Q(fallback_used=True) | Q(fallback_reason__isnull=False),
                name="execution_fallback_has_reason",
            ),
            models.CheckConstraint(
                condition=Q(saved_usd__gte=0, saved_usd__lt=MONEY_MAX),
                name="execution_saved_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent_name}:{self.id}"

    @property
    def queue_wait_ms(self) -> float | None:
        """How long a queued execution waited for a worker (None: run now, or not started)."""
        if self.queued_at is None or self.started_at is None:
            return None
        return max(0.0, (self.started_at - self.created_at).total_seconds() * 1000)


class WorkerProcess(models.Model):
    """A process that runs executions (``serve``, a Celery worker), with its heartbeat.

    ``agents.executions.processes`` inserts the row when the process starts running executions and moves
    ``beat_at`` every few seconds; ``stopped_at`` is set on a clean stop. A process whose
    heartbeat stopped (or that stopped, or whose pid is gone on this host) is dead:
    ``agents.executions.queue.executions_settle_dead`` then settles the executions it left running and
    sets ``settled_at``.
    """

    id = models.CharField(primary_key=True, max_length=36)
    kind = models.CharField(max_length=16)  # serve | worker
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    beat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    dead_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["dead_at", "beat_at"], name="process_liveness")]

    def __str__(self) -> str:
        return f"{self.kind} {self.host}:{self.pid} ({self.id})"
