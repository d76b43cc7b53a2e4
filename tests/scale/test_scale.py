"""The production-shaped test at its CI shape (``make scale-test`` runs the full one;
docs/BENCHMARKS.md): three ``serve`` processes behind a round-robin, two Celery workers on two
queues, beat and the drainer on PostgreSQL and a private Redis, ``manage.py loadgen`` sending
synchronous, queued and streamed requests while the primary upstream is down and one ``serve``
and one worker are SIGKILLed. Only correctness is asserted, never a timing: the failure message
is the run's whole table of figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scale import scenario

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("private_redis", "scratch_postgres")]


def test_under_an_outage_and_two_kills_nothing_is_lost_or_doubled_and_the_ledger_is_exact(
    tmp_path: Path,
) -> None:
    result = scenario.run(tmp_path, scenario.QUICK)
    if result.error:  # the harness could not run it: not a verdict on Breakwater
        pytest.fail(f"the scale test did not run: {result.summary()}", pytrace=False)
    missed = "; ".join(f"{f.label} = {f.shown()} (target {f.target})" for f in result.missed)
    assert not result.missed, f"missed: {missed}\n\n{result.summary()}"
