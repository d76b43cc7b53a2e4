"""Prometheus gauges of budgets, computed at scrape time (console/metrics_view.py) from every
budget's current window: the shared state's counters and the database's limits and ledger.

One series per budget and gauge, labelled by its bounded ``scope``
(:func:`budgets.selectors.budget_scope_label`: ``global``, ``agent:<name>``,
``api_key:<prefix>``; ``:monthly`` appended for a monthly budget), from start-up on; a deleted
budget's series are gone at the next scrape. No process holds them, so every process scraped
says the same (docs/INTERFACES.md §5).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from budgets.selectors import BudgetStatus


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
