"""The shipped Prometheus, Alertmanager and Grafana files (deploy/), and the Debian binaries
that check and run them, for the tests of tests/deploy."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require_service

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.rules.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "breakwater.json"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"

_FOR = re.compile(r"^(?P<indent>\s+)for: \S+$", re.MULTILINE)


def binary(name: str) -> str:
    """The path of a Debian binary (``promtool``, ``prometheus``, ``prometheus-alertmanager``,
    ``amtool``); fails under BREAKWATER_REQUIRE_SERVICES=1 when it is missing, else skips."""
    package = {"amtool": "prometheus-alertmanager"}.get(name, name)
    if name == "promtool":
        package = "prometheus"
    found = shutil.which(name) or shutil.which(name, path="/usr/bin")
    require_service(name, found is not None, f"apt-get install {package}")
    assert found is not None
    return found


def rule_groups(path: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return groups


def alerting_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the shipped rule files."""
    return [
        rule
        for path in RULE_FILES
        for group in rule_groups(path)
        for rule in group["rules"]
        if "alert" in rule
    ]


def recorded_names() -> set[str]:
    """The series names that the shipped recording rules define."""
    return {
        rule["record"]
        for path in RULE_FILES
        for group in rule_groups(path)
        for rule in group["rules"]
        if "record" in rule
    }


def short_for_copy(destination: Path, for_: str) -> list[Path]:
    """The shipped rule files copied into ``destination`` with every ``for:`` set to ``for_``
    (a test group that fires in seconds). The copy is textual, so the rules are otherwise
    byte for byte the shipped ones."""
    destination.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in RULE_FILES:
        text, count = _FOR.subn(rf"\g<indent>for: {for_}", path.read_text(encoding="utf-8"))
        shipped = sum("for" in rule for group in rule_groups(path) for rule in group["rules"])
        assert count == shipped, f"{path.name}: rewrote {count} `for:` lines of {shipped}"
        copy = destination / path.name
        copy.write_text(text, encoding="utf-8")
        copies.append(copy)
    return copies


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown document's headings (lowercase, punctuation dropped,
    spaces as hyphens)."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors
