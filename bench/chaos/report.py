"""Figures, their targets, and the table ``make chaos`` prints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The columns every scenario reports (issue 10, "Acceptance"), then whatever else it measured.
MAIN = ("overspend_usd", "lost", "stuck_60s", "bad_input_5xx", "recovery_s")
TITLES = {
    "overspend_usd": "overspend $",
    "lost": "lost",
    "stuck_60s": "stuck after 60 s",
    "bad_input_5xx": "5xx on bad input",
    "recovery_s": "recovery s",
}
RECOVERY_TARGET_S = 5.0


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    value: float | None  # None: could not be measured (counts as missed when it has a target)
    target: str = "== 0"  # "== 0", "< 5", ">= 1", or "" (informational)
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return False
        op, _, limit_text = self.target.partition(" ")
        limit = float(limit_text)
        return {
            "==": self.value == limit,
            "<": self.value < limit,
            "<=": self.value <= limit,
            ">=": self.value >= limit,
        }[op]

    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        if math.isinf(self.value):
            return "never"
        if self.unit == "$":
            return f"${self.value:.4f}"
        if float(self.value).is_integer() and self.unit != "s":
            return f"{int(self.value):,}"
        return f"{self.value:.2f}"


@dataclass
class Result:
    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    error: str = ""  # the harness could not run it (a HarnessError), not a missed target

    def add(
        self, key: str, label: str, value: float | None, target: str = "== 0", unit: str = ""
    ) -> Figure:
        figure = Figure(key, label, value, target, unit)
        self.figures.append(figure)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)

    def get(self, key: str) -> Figure | None:
        return next((f for f in self.figures if f.key == key), None)

    @property
    def missed(self) -> list[Figure]:
        return [f for f in self.figures if f.met is False]

    @property
    def ok(self) -> bool:
        return not self.error and not self.missed

    def summary(self) -> str:
        """One paragraph: every figure with its target and verdict, then the notes."""
        lines = [f"{self.title} ({self.wall_s:.0f} s)"]
        if self.error:
            lines.append(f"  HARNESS ERROR: {self.error}")
        for f in self.figures:
            verdict = {True: "met", False: "MISSED", None: ""}[f.met]
            target = f"target {f.target}" if f.target else "info"
            lines.append(f"  {f.label}: {f.shown()}  [{target}] {verdict}".rstrip())
        lines += [f"  - {n}" for n in self.notes]
        return "\n".join(lines)


def table(results: list[Result]) -> str:
    """The markdown table: one row per scenario, the five main figures, then the others."""
    head = ["scenario", *(TITLES[k] for k in MAIN), "other figures", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(MAIN) + "---|---|"]
    for r in results:
        cells = [r.title]
        for key in MAIN:
            f = r.get(key)
            if f is None:
                cells.append("—")
            else:
                mark = " ✗" if f.met is False else ""
                cells.append(f.shown() + mark)
        others = [
            f"{f.label} {f.shown()}" + (" ✗" if f.met is False else "")
            for f in r.figures
            if f.key not in MAIN
        ]
        cells.append("; ".join(others) or "—")
        cells.append("harness error" if r.error else ("met" if r.ok else "**missed**"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
