"""A drill's figures: labelled rows (what ``manage.py drill`` prints and ``/drills/`` shows),
machine-readable values, and the checks that decide whether the safeguards held."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class Report:
    rows: list[tuple[str, str]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, key: str, label: str, value: Any, text: str | None = None) -> None:
        self.values[key] = value
        self.rows.append((label, text if text is not None else _text(value)))

    def section(self, title: str) -> None:
        self.rows.append((f"-- {title}", ""))

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [list(row) for row in self.rows],
            "values": self.values,
            "checks": self.checks,
        }


def table(figures: dict[str, Any]) -> str:
    """The figures of a stored run as a plain-text table."""
    rows = [tuple(row) for row in figures.get("rows", [])]
    width = max((len(label) for label, _ in rows if not label.startswith("-- ")), default=10)
    lines = []
    for label, value in rows:
        if label.startswith("-- "):
            lines.append(f"\n{label[3:]}")
        else:
            lines.append(f"  {label.ljust(width)}  {value}")
    checks = figures.get("checks", [])
    if checks:
        lines.append("\nchecks")
        for c in checks:
            mark = "ok  " if c["ok"] else "FAIL"
            lines.append(f"  [{mark}] {c['name']}" + (f": {c['detail']}" if c["detail"] else ""))
    return "\n".join(lines).lstrip("\n")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def clock(epoch: float | None) -> str:
    """``07:41:09.532 UTC``."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%H:%M:%S.%f")[:-3] + " UTC"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if abs(value) >= 10 else f"${value:,.4f}"


def quantiles(latencies_s: Sequence[float]) -> str:
    """``p50 412 ms, p95 1,310 ms`` (or ``-``)."""
    if not latencies_s:
        return "-"
    ordered = sorted(latencies_s)
    p95 = ordered[max(0, min(len(ordered) - 1, int(len(ordered) * 0.95 + 0.5) - 1))]
    return f"p50 {statistics.median(ordered) * 1000:,.0f} ms, p95 {p95 * 1000:,.0f} ms"
