"""The ``notifications:`` section of config as code: applied idempotently, exported as applied
(secrets by variable name only), pruned, and refused with the path of what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from agents.config.apply import ApplyResult, ConfigError, config_apply, config_parse
from agents.config.export import config_export, config_export_yaml
from core.models import AuditEvent
from incidents.models import NotificationChannel, NotificationDelivery

pytestmark = [pytest.mark.dbmatrix, pytest.mark.django_db]

DOC = """
notifications:
  - {name: oncall-slack, kind: slack, url_env: SLACK_WEBHOOK_URL, min_severity: major}
  - {name: ops-hook, kind: webhook, url: https://ops.example.com/hook, secret_env: HOOK_SECRET}
  - {name: ops-mail, kind: email, to: [ops@example.com], min_severity: critical}
"""


def _apply(text: str, **options: Any) -> ApplyResult:
    return config_apply(document=config_parse(text), **options)


def test_the_contracts_example_creates_three_channels_and_applying_it_again_changes_nothing() -> (
    None
):
    result = _apply(DOC)
    assert sorted(result.created) == [
        "notification channel oncall-slack",
        "notification channel ops-hook",
        "notification channel ops-mail",
    ]
    hook = NotificationChannel.objects.get(name="ops-hook")
    assert (hook.kind, hook.url, hook.secret_env, hook.min_severity, hook.enabled) == (
        "webhook",
        "https://ops.example.com/hook",
        "HOOK_SECRET",
        "minor",
        True,
    )
    assert NotificationChannel.objects.get(name="ops-mail").to == ["ops@example.com"]
    audits = AuditEvent.objects.count()
    again = _apply(DOC)
    assert not again.changed
    assert again.unchanged == 3
    assert AuditEvent.objects.count() == audits


def test_export_gives_what_was_applied_and_export_then_apply_changes_nothing() -> None:
    _apply(DOC)
    assert config_export()["notifications"] == [
        {
            "name": "oncall-slack",
            "kind": "slack",
            "url_env": "SLACK_WEBHOOK_URL",
            "min_severity": "major",
            "enabled": True,
        },
        {
            "name": "ops-hook",
            "kind": "webhook",
            "url": "https://ops.example.com/hook",
            "secret_env": "HOOK_SECRET",
            "min_severity": "minor",
            "enabled": True,
        },
        {
            "name": "ops-mail",
            "kind": "email",
            "to": ["ops@example.com"],
            "min_severity": "critical",
            "enabled": True,
        },
    ]
    assert not _apply(config_export_yaml(), prune=True).changed


def test_a_change_is_an_update_and_prune_deletes_a_channel_but_keeps_its_log() -> None:
    _apply(DOC)
    hook = NotificationChannel.objects.get(name="ops-hook")
    NotificationDelivery.objects.create(
        channel=hook, channel_name="ops-hook", event="test", payload={}
    )
    result = _apply(DOC.replace("min_severity: critical", "min_severity: major"))
    assert result.updated == ["notification channel ops-mail"]
    result = _apply(
        "notifications:\n  - {name: ops-mail, kind: email, to: [ops@example.com]}\n", prune=True
    )
    assert sorted(result.deleted) == [
        "notification channel oncall-slack",
        "notification channel ops-hook",
    ]
    kept = NotificationDelivery.objects.get()
    assert kept.channel is None
    assert kept.channel_name == "ops-hook"


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ("{name: a, kind: webhook}", "notifications[0].url: a webhook channel needs exactly one of url and url_env"),
        ("{name: a, kind: webhook, url: 'https://a.example.com', url_env: A}", "notifications[0].url: a webhook channel needs exactly one of url and url_env"),
        ("{name: a, kind: email}", "notifications[0].to: an email channel needs at least one address"),
        ("{name: a, kind: email, to: [a@b.co, A@b.co]}", "notifications[0].to: must not repeat an address"),
        ("{name: a, kind: email, to: [a@b.co], url: 'https://a.example.com'}", "notifications[0].url: not allowed for an email channel"),
        ("{name: a, kind: email, to: ['Ops <ops@example.com>']}", "notifications[0].to[0]: invalid format"),
        ("{name: a, kind: slack, url_env: S, secret_env: K}", "notifications[0].secret_env: only allowed for a webhook channel (Slack signs nothing)"),
        ("{name: a, kind: webhook, url: 'http://169.254.169.254/x'}", "notifications[0].url: 169.254.169.254 is"),
        ("{name: a, kind: webhook, url: 'file:///etc/passwd'}", "notifications[0].url: must be an http(s) URL with a host"),
        ("{name: a, kind: webhook, url_env: lower}", "notifications[0].url_env: invalid format"),
        ("{name: a, kind: webhook, url: 'https://a.example.com', min_severity: low}", "notifications[0].min_severity: must be one of 'minor', 'major' or 'critical'"),
        ("{name: a, kind: pager, url: 'https://a.example.com'}", "notifications[0].kind: must be one of 'webhook', 'slack' or 'email'"),
        ("{name: a, kind: webhook, url: 'https://a.example.com', secret: x}", "notifications[0].secret: unknown field"),
    ],
)  # fmt: skip
def test_a_bad_entry_is_refused_naming_its_path(entry: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_parse(f"notifications:\n  - {entry}\n")
    assert any(line.startswith(error) for line in caught.value.errors), caught.value.errors


def test_two_channels_with_one_name_are_refused() -> None:
    text = (
        "notifications:\n"
        "  - {name: a, kind: webhook, url: 'https://a.example.com'}\n"
        "  - {name: a, kind: slack, url_env: S}\n"
    )
    with pytest.raises(ConfigError) as caught:
        _apply(text)
    assert caught.value.errors == ["notifications[1]: duplicate of notifications[0]"]
    assert not NotificationChannel.objects.exists()
