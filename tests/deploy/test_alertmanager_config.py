"""The example Alertmanager configuration (deploy/alertmanager) passes Debian's amtool and routes
every alert to Breakwater's receiver, and by severity to the on-call and ticket webhooks."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.deploy.prometheus import ALERTMANAGER_CONFIG, alerting_rules, binary


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("amtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def receivers_for(**labels: str) -> list[str]:
    done = amtool(
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        *(f"{name}={value}" for name, value in labels.items()),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().split(",")


def test_the_example_configuration_passes_amtool_check_config() -> None:
    done = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize(
    ("severity", "receivers"),
    [
        ("critical", ["breakwater", "oncall"]),
        ("major", ["breakwater", "tickets"]),
        ("minor", ["breakwater"]),
    ],
)
def test_an_alert_goes_to_breakwater_and_by_severity_to_a_webhook(
    severity: str, receivers: list[str]
) -> None:
    assert receivers_for(alertname="AnyAlert", severity=severity) == receivers


def test_every_shipped_alert_reaches_the_breakwater_receiver() -> None:
    for rule in alerting_rules():
        routed = receivers_for(alertname=rule["alert"], **rule["labels"])
        assert routed[0] == "breakwater", rule["alert"]


def test_the_breakwater_receiver_posts_to_the_alertmanager_door_with_a_bearer_key_file() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == "breakwater"]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["url"].endswith("/api/v1/alerts/alertmanager")
    assert webhook["send_resolved"] is True  # resolved alerts resolve their incidents
    authorization = webhook["http_config"]["authorization"]
    assert authorization["type"] == "Bearer"
    assert authorization["credentials_file"]  # the key is never in the configuration itself
