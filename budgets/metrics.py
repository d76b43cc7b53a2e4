"""Prometheus gauges of budgets and SLO objectives, computed at scrape time
(console/metrics_view.py): from every budget's current window (the shared state's counters and
the database's limits and ledger), and from every agent's ``slo``.

One series per budget and gauge, labelled by its bounded ``scope``
(:func:`budgets.selectors.budget_scope_label`: ``global``, ``agent:<name>``,
``api_key:<prefix>``; ``:monthly`` appended for a monthly budget), from start-up on; a deleted
budget's series are gone at the next scrape. No process holds them, so every process scraped
says the same (docs/INTERFACES.md §5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily, Metric

from budgets.selectors import BudgetStatus


class SloObjective(NamedTuple):
    """An agent's SLO objectives (config ``slo``), as the scrape-time gauges export them."""

    agent: str
    availability: float
    latency_ms: int
    latency_quantile: float


def slo_objective_families(objectives: Iterable[SloObjective]) -> list[GaugeMetricFamily]:
    """``agent_slo_objective_ratio{agent,sli}`` (sli = availability | latency) and
    ``agent_slo_latency_threshold_seconds{agent}`` of each agent, so that Prometheus rules and
    dashboards can divide by the agent's own error budget. Read at scrape time from the
    catalog (console/metrics_view.py): every agent has them from start-up, a changed ``slo``
    shows at the next scrape, a deleted agent's are gone, and every process says the same."""
    ratio = GaugeMetricFamily(
        "agent_slo_objective_ratio",
        "The agent's SLO objective: the share of valid requests that must be good (sli = "
        "availability | latency).",
        labels=["agent", "sli"],
    )
    threshold = GaugeMetricFamily(
        "agent_slo_latency_threshold_seconds",
        "The agent's SLO latency threshold: a valid request slower than this is bad for the "
        "latency SLI.",
        labels=["agent"],
    )
    for agent, availability, latency_ms, quantile in objectives:
        ratio.add_metric([agent, "availability"], availability)
        ratio.add_metric([agent, "latency"], quantile)
        threshold.add_metric([agent], latency_ms / 1000)
    return [ratio, threshold]


def budget_families(statuses: Iterable[BudgetStatus]) -> list[Metric]:
    """``agent_budget_remaining_dollars``, ``agent_budget_limit_dollars``,
    ``agent_budget_forecast_dollars`` and ``agent_budget_forecast_ratio`` of each budget."""
    remaining = GaugeMetricFamily(
        "agent_budget_remaining_dollars",
        "Budget left in the current window, in US dollars (0 while paused).",
        labels=["scope"],
    )
    limit = GaugeMetricFamily(
        "agent_budget_limit_dollars",
        "The budget's limit in the current window (a temporary raise included), in US dollars.",
        labels=["scope"],
    )
    forecast = GaugeMetricFamily(
        "agent_budget_forecast_dollars",
        "Projected spend at the end of the budget's current window, in US dollars.",
        labels=["scope"],
    )
    ratio = GaugeMetricFamily(
        "agent_budget_forecast_ratio",
        "Projected end-of-window spend over the budget's limit (above 1: on course to run out).",
        labels=["scope"],
    )
    for status in sorted(statuses, key=lambda s: s.label):
        labels = [status.label]
        remaining.add_metric(labels, float(status.remaining_usd))
        limit.add_metric(labels, float(status.limit_usd))
        forecast.add_metric(labels, float(status.forecast_usd))
        # No limit (0): the ratio is undefined; NaN is how Prometheus says "no value".
        ratio.add_metric(
            labels, float("nan") if status.predictability is None else status.predictability
        )
    return [remaining, limit, forecast, ratio]
