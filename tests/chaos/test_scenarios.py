"""The quick chaos scenarios hold their targets (issue 10, "Acceptance"; docs/RELIABILITY.md).

Each test runs the very scenario ``make chaos`` runs, at a smaller size, and asserts every target
of its result: the failure message is the scenario's table of figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import scenarios
from bench.chaos.report import Result

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("scratch_database")]


def _assert_targets(result: Result) -> None:
    if result.error:  # the harness could not run the scenario: not a verdict on Breakwater
        pytest.fail(f"scenario did not run: {result.summary()}", pytrace=False)
    if result.missed:
        missed = "; ".join(f"{f.label} = {f.shown()} (target {f.target})" for f in result.missed)
        pytest.fail(f"missed: {missed}\n\n{result.summary()}", pytrace=False)


def test_poisoned_inputs_get_no_5xx_hold_nothing_and_starve_no_other_agent(
    tmp_path: Path,
) -> None:
    _assert_targets(scenarios.QUICK["poisoned"](tmp_path))


def test_an_embedded_restart_on_the_day_a_budget_was_made_does_not_overspend_it(
    tmp_path: Path,
) -> None:
    _assert_targets(scenarios.QUICK["restart-overspend"](tmp_path))


@pytest.mark.usefixtures("private_redis")
def test_clients_that_disconnect_mid_response_leave_no_row_running_and_nothing_held(
    tmp_path: Path,
) -> None:
    _assert_targets(scenarios.QUICK["disconnects"](tmp_path))


@pytest.mark.usefixtures("private_redis")
def test_redis_restarted_empty_under_traffic_neither_overspends_nor_loses_a_record(
    tmp_path: Path,
) -> None:
    _assert_targets(scenarios.QUICK["redis-empty"](tmp_path))
