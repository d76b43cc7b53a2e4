"""Prometheus gauges of budgets, computed at scrape time (console/metrics_view.py) from every
budget's current window: the shared state's counters and the database's limits and ledger.

One series per budget and gauge, labelled by its bounded ``scope``
(:func:`budgets.selectors.budget_scope_label`: ``global``, ``agent:<name>``,
``api_key:<prefix>``; ``:monthly`` appended for a monthly budget), from start-up on; a deleted
budget's series are gone at the next scrape. No process holds them, so every process scraped
says the same (docs/INTERFACES.md §5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

from budgets.selectors import BudgetStatus

# SLO objectives (budgets.slos): config, mirrored so that Prometheus rules and dashboards can
# divide by the agent's own error budget. ``mostrecent``: the last process to publish wins.
SLO_OBJECTIVE = Gauge(
    "agent_slo_objective_ratio",
    "The agent's SLO objective: the share of valid requests that must be good (sli = "
    "availability | latency).",
    ["agent", "sli"],
    multiprocess_mode="mostrecent",
)
SLO_LATENCY_THRESHOLD = Gauge(
    "agent_slo_latency_threshold_seconds",
    "The agent's SLO latency threshold: a valid request slower than this is bad for the latency SLI.",
    ["agent"],
    multiprocess_mode="mostrecent",
)
_slo_published: set[str] = set()


def set_slo_objectives(objectives: Iterable[tuple[str, float, int, float]]) -> None:
    """Set both SLO gauges from ``(agent, availability, latency_ms, latency_quantile)`` rows and
    remove this process's series of agents no longer among them."""
    seen = set()
    for agent, availability, latency_ms, quantile in objectives:
        seen.add(agent)
        SLO_OBJECTIVE.labels(agent=agent, sli="availability").set(availability)
        SLO_OBJECTIVE.labels(agent=agent, sli="latency").set(quantile)
        SLO_LATENCY_THRESHOLD.labels(agent=agent).set(latency_ms / 1000)
    for agent in _slo_published - seen:
        for sli in ("availability", "latency"):
            with contextlib.suppress(KeyError):
                SLO_OBJECTIVE.remove(agent, sli)
        with contextlib.suppress(KeyError):
            SLO_LATENCY_THRESHOLD.remove(agent)
    _slo_published.clear()
    _slo_published.update(seen)


def slo_objective_families(
    objectives: Iterable[tuple[str, float, int, float]],
) -> list[GaugeMetricFamily]:
    """The two SLO gauges as metric families from ``(agent, availability, latency_ms,
    latency_quantile)`` rows (``budgets.slos.slo_objectives()``, one query): for a scrape-time
    collector, which shows exactly the agents that exist at each scrape in every process
    (``set_slo_objectives`` cannot remove another process's series in multiprocess mode)."""
    ratio = GaugeMetricFamily(
        SLO_OBJECTIVE._name, SLO_OBJECTIVE._documentation, labels=["agent", "sli"]
    )
    threshold = GaugeMetricFamily(
        SLO_LATENCY_THRESHOLD._name, SLO_LATENCY_THRESHOLD._documentation, labels=["agent"]
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
