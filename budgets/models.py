"""Budgets and the spend ledger."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.utils.timezone import now as _now

from agents.models import MONEY_MAX, Agent, ApiKey
from core.models import AppendOnlyModel


class BudgetScope(models.TextChoices):
    GLOBAL = "global"
    AGENT = "agent"
    API_KEY = "api_key"


class BudgetWindow(models.TextChoices):
    DAILY = "daily"
    MONTHLY = "monthly"


class Budget(models.Model):
    """A hard spending limit over a calendar window (UTC midnight unless ``timezone`` says).

    An agent's ``daily_budget_usd`` in config as code is its agent-scope daily budget: this row.
    """

    scope = models.CharField(max_length=16, choices=BudgetScope.choices)
    agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    window = models.CharField(
        max_length=16, choices=BudgetWindow.choices, default=BudgetWindow.DAILY
    )
    limit_usd = models.DecimalField(max_digits=14, decimal_places=6)
    timezone = models.CharField(max_length=64, default="UTC")
    warn_at_pct = models.PositiveSmallIntegerField(default=50)
    alert_at_pct = models.PositiveSmallIntegerField(default=80)
    paused = models.BooleanField(default=False)
    raise_usd = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    raise_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=_now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(scope__in=BudgetScope.values), name="budget_scope_valid"
            ),
            models.CheckConstraint(
                condition=Q(window__in=BudgetWindow.values), name="budget_window_valid"
            ),
            models.CheckConstraint(
                condition=(
                    Q(scope=BudgetScope.GLOBAL, agent__isnull=True, api_key__isnull=True)
                    | Q(scope=BudgetScope.AGENT, agent__isnull=False, api_key__isnull=True)
                    | Q(scope=BudgetScope.API_KEY, agent__isnull=True, api_key__isnull=False)
                ),
                name="budget_target_matches_scope",
                violation_error_message="a budget targets exactly what its scope says",
            ),
            models.CheckConstraint(
                condition=Q(limit_usd__gte=0, limit_usd__lt=MONEY_MAX),
                name="budget_limit_range",
            ),
            models.CheckConstraint(
                condition=Q(raise_usd__isnull=True)
                | Q(raise_usd__gt=0, raise_usd__lt=MONEY_MAX, raise_until__isnull=False),
                name="budget_raise_valid",
            ),
            models.CheckConstraint(
                condition=Q(warn_at_pct__gte=1, warn_at_pct__lt=models.F("alert_at_pct"))
                & Q(alert_at_pct__lte=100),
                name="budget_thresholds_ordered",
            ),
            models.UniqueConstraint(
                fields=["window"],
                condition=Q(scope=BudgetScope.GLOBAL),
                name="budget_one_global_per_window",
            ),
            models.UniqueConstraint(
                fields=["agent", "window"],
                condition=Q(scope=BudgetScope.AGENT),
                name="budget_one_per_agent_window",
            ),
            models.UniqueConstraint(
                fields=["api_key", "window"],
                condition=Q(scope=BudgetScope.API_KEY),
                name="budget_one_per_key_window",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope}:{self.target} {self.window} ${self.limit_usd}"

    @property
    def target(self) -> str:
        if self.scope == BudgetScope.AGENT and self.agent is not None:
            return self.agent.name
        if self.scope == BudgetScope.API_KEY and self.api_key is not None:
            return self.api_key.prefix
        return "*"


class SpendEntry(AppendOnlyModel):
    """One charged execution. Append-only and unique per execution, so recording is idempotent.

    Written by the record drainer (``agents.executions.recording.store``) for every finished execution that
    cost something or was answered from the cache. ``at`` is the execution's ``created_at``: the
    moment its budget windows were chosen, so an entry lands in the same window as the counter
    it was settled against. ``cost_usd`` is the execution's cost rounded *up* to 8 places and
    ``charged_micros`` is ``to_micros(cost_usd, up=True)``: exactly what the runtime settled on
    each budget counter (``budgets.services.budgets_reconcile`` sums it). Prices are those of the
    deployment that answered, from the ``PriceVersion`` in force at ``at`` (null: none known).
    """

    execution_id = models.UUIDField(unique=True)
    at = models.DateTimeField(default=_now, db_index=True)
    agent_name = models.CharField(max_length=64)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    model = models.CharField(max_length=128)
    deployment_id = models.BigIntegerField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    input_usd_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, null=True)
    output_usd_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, null=True)
    cost_usd = models.DecimalField(max_digits=16, decimal_places=8)
    charged_micros = models.BigIntegerField(default=0)
    cached = models.BooleanField(default=False)
    saved_usd = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal(0))

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "spend entries"
        indexes = [
            models.Index(fields=["agent_name", "at"], name="spend_agent_time"),
            models.Index(fields=["api_key_id", "at"], name="spend_key_time"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(cost_usd__gte=0, cost_usd__lt=MONEY_MAX), name="spend_cost_range"
            ),
            models.CheckConstraint(
                condition=Q(input_usd_per_mtok__gte=0, output_usd_per_mtok__gte=0),
                name="spend_price_nonnegative",
            ),
            models.CheckConstraint(
                condition=Q(charged_micros__gte=0), name="spend_charged_nonnegative"
            ),
            models.CheckConstraint(
                condition=Q(saved_usd__gte=0, saved_usd__lt=MONEY_MAX), name="spend_saved_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.execution_id} ${self.cost_usd}"


class PriceVersion(AppendOnlyModel):
    """A deployment's price from ``effective_from`` on. A price change adds a row; history is
    never rewritten (each execution's ledger entry also carries the price it was charged)."""

    deployment_id = models.BigIntegerField(db_index=True)
    model = models.CharField(max_length=128)
    provider = models.CharField(max_length=64)
    upstream_model = models.CharField(max_length=128)
    input_usd_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, null=True)
    output_usd_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, null=True)
    cached_input_usd_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, null=True)
    effective_from = models.DateTimeField(default=_now)

    class Meta:
        ordering = ["deployment_id", "-effective_from", "-id"]
        indexes = [
            models.Index(fields=["deployment_id", "-effective_from"], name="price_deployment_time")
        ]

    def __str__(self) -> str:
        return f"{self.model}@{self.provider} from {self.effective_from:%Y-%m-%d %H:%M}"


# Upper bounds (ms) of the latency histogram buckets of ``SpendRollup``; one more bucket holds
# everything slower. Above 100 ms each bucket is at most 1.5x as wide as its lower bound (below,
# at most 25 ms wide); p95 is interpolated linearly inside its bucket, so it is off by less than
# that bucket's width. Changing the bounds invalidates the histograms of stored rollups: only
# today's and yesterday's are recomputed.
LATENCY_BUCKETS_MS: tuple[int, ...] = (
    10, 25, 50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 750, 1000, 1250, 1500, 2000,
    2500, 3000, 4000, 5000, 6000, 7500, 10000, 12500, 15000, 20000, 30000, 45000, 60000,
    90000, 120000,
)  # fmt: skip


class SpendCounts(models.Model):
    """The counts and sums of a set of finished executions, as the daily ``SpendRollup`` and
    its minute rows (``SpendMinute``) hold them."""

    requests = models.PositiveIntegerField(default=0)  # finished executions
    succeeded = models.PositiveIntegerField(default=0)
    degraded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    cached = models.PositiveIntegerField(default=0)
    fallbacks = models.PositiveIntegerField(default=0)  # executions with fallback_used
    fallback_reasons = models.JSONField(default=dict)  # {"timeout": n, ...}: of the fallbacks
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    saved_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    latency_sum_ms = models.BigIntegerField(default=0)
    latency_count = models.PositiveIntegerField(default=0)
    # len(LATENCY_BUCKETS_MS) + 1 counts: bucket i holds latencies <= LATENCY_BUCKETS_MS[i]
    # (and above the previous bound); the last one everything slower.
    latency_buckets = models.JSONField(default=list)
    model_choices = models.JSONField(default=dict)  # {"standard": n, "cheap:simple": m, ...}
    updated_at = models.DateTimeField(default=_now)

    class Meta:
        abstract = True


class SpendRollup(SpendCounts):
    """Executions of one UTC day (of their ``created_at``, the time they were accepted), per
    agent, model and API key: what the dashboards and ``/api/v1/stats/agents`` read (never the
    raw executions).

    Kept by ``budgets.rollups.rollups_advance`` (docs/DECISIONS.md #23): each minute the new
    records touch is recomputed from ``Execution`` into its ``SpendMinute`` rows, and the
    difference from what those rows held before is added here, so a late or redelivered record
    only ever makes a row more correct. A day older than the minute rows are kept is recomputed
    whole from ``Execution`` (``rollup_day_refresh``). ``api_key_id`` is 0 for executions without
    a key (console, loadgen, a deleted key), so the unique key has no NULLs; ``model`` is ""
    when no model answered.
    """

    day = models.DateField()
    agent_name = models.CharField(max_length=64)
    model = models.CharField(max_length=128, blank=True, default="")
    api_key_id = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-day", "agent_name", "model", "api_key_id"]
        indexes = [models.Index(fields=["day", "agent_name"], name="rollup_day_agent")]
        constraints = [
            models.UniqueConstraint(
                fields=["day", "agent_name", "model", "api_key_id"], name="rollup_identity"
            ),
            models.CheckConstraint(
                condition=Q(
                    requests__gte=models.F("succeeded")
                    + models.F("degraded")
                    + models.F("failed")
                    + models.F("cancelled")
                ),
                name="rollup_statuses_within_requests",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.agent_name} {self.model or '-'} key {self.api_key_id}"


class SpendMinute(SpendCounts):
    """Executions of one UTC minute per agent, model and API key: the daily ``SpendRollup``'s
    parts, kept for today and yesterday (UTC) so that a refresh recomputes only the minutes new
    records touch and adds their difference to the day (``budgets.rollups``). Nothing reads
    them otherwise."""

    start = models.DateTimeField()
    agent_name = models.CharField(max_length=64)
    model = models.CharField(max_length=128, blank=True, default="")
    api_key_id = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-start", "agent_name", "model", "api_key_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["start", "agent_name", "model", "api_key_id"], name="spend_minute_identity"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} {self.agent_name} {self.model or '-'}"


class RollupWatermark(models.Model):
    """How far the rollups have read ``Execution`` (one row, ``name`` "executions"): every row
    whose ``seq`` is covered by ``mark`` is counted. On PostgreSQL ``mark`` is the snapshot
    (``pg_current_snapshot()`` as text) taken at the start of the last refresh: a row whose
    transaction was visible in it was seen. On SQLite it is the largest ``seq`` seen. Empty:
    nothing read incrementally yet; the first refresh rebuilds today and yesterday.
    ``spend_from``: the first UTC day whose ``SpendMinute`` rows are complete (days before it
    are recomputed whole when a record reaches them)."""

    name = models.CharField(max_length=32, primary_key=True)
    mark = models.TextField(blank=True, default="")
    spend_from = models.DateField(null=True, blank=True)
    rows_seen = models.BigIntegerField(default=0)  # row versions read by refreshes, in total
    updated_at = models.DateTimeField(default=_now)

    def __str__(self) -> str:
        return f"{self.name} @ {self.mark or '-'}"


ALL_AGENTS = "*"  # TrafficRollup.agent_name of the every-agent rows


class TrafficStep(models.IntegerChoices):
    MINUTE = 60
    HOUR = 3600
    DAY = 86400


class TrafficRollup(models.Model):
    """Finished executions of one agent in one time bucket (a UTC minute, hour or day): what the
    console's charts and ``/api/v1/stats/agents?window=1h|24h`` read (``budgets.series``).

    Minute rows are recomputed from ``Execution`` (replace, not increment) for each minute that
    new records touch by ``budgets.rollups.rollups_advance`` (docs/DECISIONS.md #23); an hour
    row is the sum of its minute rows and a day row the sum of its hour rows, recomputed
    whenever one of them is (an hour older than the minute rows are kept is recomputed from
    ``Execution``). Kept:
    minute rows ``TRAFFIC_KEEP[60]``, hour rows ``TRAFFIC_KEEP[3600]``, day rows
    ``TRAFFIC_KEEP[86400]`` (then deleted in small batches). ``start`` is the bucket's start;
    ``created_at`` of the executions decides their bucket. ``agent_name`` ``ALL_AGENTS`` ("*",
    never an agent's slug) holds the sum of every agent's row of the bucket, and ``p50_ms`` /
    ``p95_ms`` the row's own percentiles, so a chart of every agent, or of one, reads one row
    per point and parses no histogram.
    """

    step_s = models.PositiveIntegerField(choices=TrafficStep.choices)
    start = models.DateTimeField()
    agent_name = models.CharField(max_length=64)
    requests = models.PositiveIntegerField(default=0)  # finished executions
    succeeded = models.PositiveIntegerField(default=0)
    degraded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    cached = models.PositiveIntegerField(default=0)
    fallbacks = models.PositiveIntegerField(default=0)  # executions with fallback_used
    fallback_reasons = models.JSONField(default=dict)  # {"timeout": n, ...}: of the fallbacks
    retries = models.PositiveIntegerField(default=0)  # provider attempts beyond the first
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    saved_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    latency_sum_ms = models.BigIntegerField(default=0)
    latency_count = models.PositiveIntegerField(default=0)
    latency_buckets = models.JSONField(default=list)  # as SpendRollup.latency_buckets
    # Valid executions (succeeded, degraded, failed) slower than their agent's slo.latency_ms
    # at the time the minute row was computed: the latency SLI's bad events (budgets.slos).
    slow = models.PositiveIntegerField(default=0)
    p50_ms = models.FloatField(null=True, blank=True)  # of latency_buckets (None: no latency)
    p95_ms = models.FloatField(null=True, blank=True)
    model_choices = models.JSONField(default=dict)  # {"standard": n, "cheap:simple": m, ...}
    updated_at = models.DateTimeField(default=_now)

    class Meta:
        ordering = ["step_s", "-start", "agent_name"]
        constraints = [
            # Also the index of every read: WHERE step_s = ? AND start >= ? [AND agent_name IN]
            models.UniqueConstraint(
                fields=["step_s", "start", "agent_name"], name="traffic_identity"
            ),
            models.CheckConstraint(
                condition=Q(step_s__in=TrafficStep.values), name="traffic_step_valid"
            ),
            models.CheckConstraint(
                condition=Q(
                    requests__gte=models.F("succeeded")
                    + models.F("degraded")
                    + models.F("failed")
                    + models.F("cancelled")
                ),
                name="traffic_statuses_within_requests",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.step_s}s {self.start:%Y-%m-%d %H:%M} {self.agent_name}"
