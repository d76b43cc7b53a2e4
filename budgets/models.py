"""Budgets and the spend ledger."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.timezone import now as _now

from agents.models import MONEY_MAX, Agent, ApiKey
from console.models import AppendOnlyModel


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
    """One charged execution. Append-only and unique per execution, so recording is idempotent."""

    execution_id = models.UUIDField(unique=True)
    at = models.DateTimeField(default=_now, db_index=True)
    agent_name = models.CharField(max_length=64)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    model = models.CharField(max_length=128)
    deployment_id = models.BigIntegerField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    input_usd_per_mtok = models.DecimalField(max_digits=14, decimal_places=6)
    output_usd_per_mtok = models.DecimalField(max_digits=14, decimal_places=6)
    cost_usd = models.DecimalField(max_digits=16, decimal_places=8)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "spend entries"
        indexes = [models.Index(fields=["agent_name", "at"], name="spend_agent_time")]
        constraints = [
            models.CheckConstraint(
                condition=Q(cost_usd__gte=0, cost_usd__lt=MONEY_MAX), name="spend_cost_range"
            ),
            models.CheckConstraint(
                condition=Q(input_usd_per_mtok__gte=0, output_usd_per_mtok__gte=0),
                name="spend_price_nonnegative",
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
