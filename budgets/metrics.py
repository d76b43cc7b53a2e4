"""Prometheus gauges of budget forecasts ("cost predictability"), beside
``agent_budget_remaining_dollars`` (agents.metrics). Same bounded ``scope`` label; ``mostrecent``
across processes for the same reason (they mirror shared state; the last observation wins)."""

from __future__ import annotations

from prometheus_client import Gauge

BUDGET_FORECAST = Gauge(
    "agent_budget_forecast_dollars",
    "Projected spend at the end of the budget's current window, in US dollars.",
    ["scope"],
    multiprocess_mode="mostrecent",
)
BUDGET_FORECAST_RATIO = Gauge(
    "agent_budget_forecast_ratio",
    "Projected end-of-window spend over the budget's limit (above 1: on course to run out).",
    ["scope"],
    multiprocess_mode="mostrecent",
)


def set_budget_forecast(scope: str, forecast_usd: float, ratio: float | None) -> None:
    BUDGET_FORECAST.labels(scope=scope).set(forecast_usd)
    # No limit (0): the ratio is undefined; NaN is how Prometheus says "no value".
    BUDGET_FORECAST_RATIO.labels(scope=scope).set(float("nan") if ratio is None else ratio)
