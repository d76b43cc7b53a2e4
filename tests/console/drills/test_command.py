"""``manage.py drill``'s flags, the options a stored drill may hold, and the printed table."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from console.drills.report import Report, money, quantiles, table
from console.drills.runner import scenario_options


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["outage", "--budget-usd", "1"], "--budget-usd: the outage drill has no such setting"),
        (["cost-spike", "--recovery-wait-s", "5"], "--recovery-wait-s: the cost-spike drill"),
        (["outage", "--leak-mb-per-s", "5"], "--leak-mb-per-s: the outage drill has no such"),
        (["memory-leak", "--leak-mb-per-s", "-1"], "--leak-mb-per-s: must be >= 0, got -1"),
        (["outage", "--rate", "0"], "--rate: must be > 0"),
        (["outage", "--seconds", "-1"], "--seconds: must be >= 0"),
        (
            ["outage", "--url", "127.0.0.1:8000"],
            r"--url: expected http\(s\)://host:port, got '127.0.0.1:8000'",
        ),
    ],
)
def test_a_bad_flag_is_refused_before_anything_is_stored(args: list[str], message: str) -> None:
    # No database marker: the command must fail before it writes a DrillRun.
    with pytest.raises(CommandError, match=message):
        call_command("drill", *args)


def test_an_unknown_drill_is_refused_by_name() -> None:
    with pytest.raises(CommandError, match="invalid choice: 'flood'"):
        call_command("drill", "flood")


def test_stored_options_become_the_drills_settings_and_unknown_ones_are_refused() -> None:
    options = scenario_options("outage", {"base_url": "http://x", "agent": "", "seconds": 3.0})
    assert options.seconds == 3.0
    assert options.rate == 5.0
    with pytest.raises(ValueError, match="outage: unknown option"):
        scenario_options("outage", {"budget_usd": 1})


def test_the_table_lines_up_labels_with_sections_and_marks_each_check() -> None:
    report = Report()
    report.section("breaker")
    report.add("t", "time to open the breaker", 0.56, "0.56 s")
    report.add("n", "requests", 41)
    report.check("breaker opened", True, "0.56 s")
    report.check("incident resolved", False)
    assert table(report.to_json()) == (
        "breaker\n"
        "  time to open the breaker  0.56 s\n"
        "  requests                  41\n"
        "\nchecks\n"
        "  [ok  ] breaker opened: 0.56 s\n"
        "  [FAIL] incident resolved"
    )
    assert not report.passed


def test_money_and_latency_read_as_an_operator_would_write_them() -> None:
    assert money(0.38112) == "$0.3811"
    assert money(4329.0) == "$4,329.00"
    assert money(None) == "-"
    assert quantiles([0.1] * 19 + [1.0]) == "p50 100 ms, p95 100 ms"
    assert quantiles([]) == "-"
