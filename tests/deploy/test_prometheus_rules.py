"""The shipped Prometheus rules (deploy/prometheus) load, and their unit tests pass in Debian's
promtool: every alert is tested firing and not firing, and carries what an on-call engineer
needs (severity, summary, description, a runbook section that exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.prometheus import (
    OPERATIONS,
    PROMETHEUS_DIR,
    RULE_FILES,
    RULE_TESTS,
    alerting_rules,
    binary,
    heading_anchors,
    short_for_copy,
)

SEVERITIES = {"critical", "major", "minor"}  # incidents.models.Severity


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_rule_files_and_the_example_configuration_pass_promtool_check() -> None:
    rules = promtool("check", "rules", *RULE_FILES)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    # The example configuration loads exactly the shipped rule files.
    loaded = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["rule_files"]
    assert sorted(PROMETHEUS_DIR / name for name in loaded) == RULE_FILES


@pytest.mark.parametrize("unit_tests", RULE_TESTS, ids=lambda path: path.name)
def test_the_rule_unit_tests_pass_in_promtool(unit_tests: Path) -> None:
    done = promtool("test", "rules", unit_tests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_both_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested not firing"
    assert (firing | silent) - names == set(), "tests of alerts that do not exist"


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() -> None:
    anchors = heading_anchors(OPERATIONS.read_text(encoding="utf-8"))
    problems = []
    for rule in alerting_rules():
        name = rule["alert"]
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {sorted(SEVERITIES)}")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description"):
            if not annotations.get(key, "").strip():
                problems.append(f"{name}: no {key}")
        url = annotations.get("runbook_url", "")
        match = re.fullmatch(r"docs/OPERATIONS\.md#([a-z0-9-]+)", url)
        if match is None:
            problems.append(f"{name}: runbook_url {url!r} is not docs/OPERATIONS.md#<anchor>")
        elif match.group(1) != name.lower() or match.group(1) not in anchors:
            problems.append(f"{name}: docs/OPERATIONS.md has no section #{name.lower()}")
    assert problems == []


def test_a_rule_that_no_longer_does_what_its_unit_test_says_fails_the_unit_test(
    tmp_path: Path,
) -> None:
    """The unit tests can fail: the breaker alert with a threshold that an open breaker (2)
    never crosses is caught."""
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    alerts = tmp_path / "prometheus" / "rules" / "alerts.rules.yml"
    text = alerts.read_text()
    broken = text.replace(
        "max by (agent) (agent_circuit_breaker_state) > 0",
        "max by (agent) (agent_circuit_breaker_state) > 2",
    )
    assert broken != text
    alerts.write_text(broken)
    done = promtool("test", "rules", tmp_path / "prometheus" / "tests" / "breakers.test.yml")
    assert done.returncode != 0
    assert "alertname: AgentCircuitBreakerOpen" in done.stdout + done.stderr


def test_the_short_for_copy_changes_only_the_for_durations(tmp_path: Path) -> None:
    copies = short_for_copy(tmp_path, "1s")
    done = promtool("check", "rules", *copies)
    assert done.returncode == 0, done.stdout + done.stderr
    for shipped, copy in zip(RULE_FILES, copies, strict=True):
        before = yaml.safe_load(shipped.read_text())["groups"]
        after = yaml.safe_load(copy.read_text())["groups"]
        for group_before, group_after in zip(before, after, strict=True):
            for rule_before, rule_after in zip(
                group_before["rules"], group_after["rules"], strict=True
            ):
                if "for" in rule_before:
                    assert rule_after.pop("for") == "1s"
                    rule_before.pop("for")
                assert rule_after == rule_before
