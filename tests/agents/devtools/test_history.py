"""``seed_history``: the reference deployment's history, written fast and consistent with what
the real execute path records (rows, ledger, incidents, rollups)."""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from agents.config.apply import config_apply, config_parse
from agents.devtools.history import (
    HistoryError,
    diurnal_weight,
    generate,
    history_plan,
    history_seed,
)
from agents.models import Agent, Execution, ExecutionStatus, FallbackReason, ModelDeployment
from agents.runtime.budgets import to_micros
from budgets.models import PriceVersion, SpendEntry, SpendRollup
from incidents.models import Incident, IncidentStatus

pytestmark = [pytest.mark.dbmatrix, pytest.mark.django_db]

NOW = datetime(2026, 3, 11, 10, 0, tzinfo=UTC)
SIZE = 1_500


@pytest.fixture
def demo(demo_yaml: str) -> None:
    config_apply(document=config_parse(demo_yaml))


def _written() -> dict[str, int]:
    return {
        "executions": Execution.objects.count(),
        "ledger": SpendEntry.objects.count(),
        "incidents": Incident.objects.count(),
        "rollups": SpendRollup.objects.count(),
    }


NOTHING = {"executions": 0, "ledger": 0, "incidents": 0, "rollups": 0}


def _seed(**options: Any) -> Any:
    options.setdefault("executions", SIZE)
    options.setdefault("days", 3)
    options.setdefault("seed", 7)
    options.setdefault("now", NOW)
    return history_seed(history_plan(**options))


# --- counts, agents, values --------------------------------------------------------------------


def test_it_writes_exactly_the_executions_asked_for_over_every_configured_agent(
    demo: None,
) -> None:
    result = _seed()

    assert result.executions == Execution.objects.count() == SIZE
    agents = set(Agent.objects.values_list("name", flat=True))
    assert set(Execution.objects.values_list("agent_name", flat=True).distinct()) == agents


def test_the_agents_share_the_volume_like_the_reference_deployment(demo: None) -> None:
    _seed()

    counts = dict(
        Execution.objects.values("agent_name")
        .annotate(n=Count("id"))
        .values_list("agent_name", "n")
    )
    # 200K, 150K, 80K and 40K of 500K a day; 5K for each of the other six.
    assert counts["customer-support"] == SIZE * 200 // 500
    assert counts["code-review"] == SIZE * 150 // 500
    assert counts["data-analyst"] == SIZE * 80 // 500
    assert counts["content-writer"] == SIZE * 40 // 500
    assert counts["translator"] == SIZE * 5 // 500


def test_statuses_and_fallback_reasons_are_the_ones_the_model_allows(demo: None) -> None:
    _seed()

    statuses = Counter(Execution.objects.values_list("status", flat=True))
    reasons = set(Execution.objects.values_list("fallback_reason", flat=True))
    assert set(statuses) <= {"succeeded", "degraded", "failed"}
    assert set(statuses) <= set(ExecutionStatus.values)
    assert reasons - {None} <= set(FallbackReason.values)
    assert statuses["succeeded"] / SIZE > 0.9
    assert statuses["degraded"] > 0
    assert not Execution.objects.filter(fallback_used=True, fallback_reason__isnull=True).exists()
    assert not Execution.objects.filter(status="degraded", fallback_used=False).exists()


def test_degraded_executions_answer_with_the_agents_fallback_message(demo: None) -> None:
    _seed()

    row = Execution.objects.filter(status="degraded", fallback_reason="rate_limited").first()
    assert row is not None
    assert row.output == "I'm experiencing high demand. Please try again in a moment."
    assert row.steps == [
        {
            "kind": "refused",
            "model": None,
            "deployment": None,
            "outcome": "rate_limited",
            "detail": "",
            "latency_ms": 0.0,
            "input_tokens": 0,
            "output_tokens": 0,
        }
    ]


def test_a_paid_execution_costs_its_tokens_at_its_deployments_price(demo: None) -> None:
    _seed()

    prices = {d.pk: d for d in ModelDeployment.objects.all()}
    paid = Execution.objects.filter(cost_usd__gt=0)
    assert paid.count() > SIZE // 2
    for row in paid[:200]:
        assert row.deployment_id is not None
        d = prices[row.deployment_id]
        assert d.input_usd_per_mtok is not None
        assert d.output_usd_per_mtok is not None
        exact = (
            row.input_tokens * d.input_usd_per_mtok + row.output_tokens * d.output_usd_per_mtok
        ) / Decimal(1_000_000)
        assert Decimal(0) <= row.cost_usd - exact < Decimal("0.00000001")
        assert row.model == d.name
        assert (row.steps[-1]["kind"], row.steps[-1]["outcome"]) == ("attempt", "ok")
        assert row.steps[-1]["deployment"] == row.deployment_id
        assert (row.steps[-1]["input_tokens"], row.steps[-1]["output_tokens"]) == (
            row.input_tokens,
            row.output_tokens,
        )


def test_cache_hits_cost_nothing_and_record_what_they_saved(demo: None) -> None:
    _seed()

    hits = Execution.objects.filter(cached=True)
    assert hits.exists()
    assert not hits.exclude(cost_usd=0).exists()
    assert not hits.filter(saved_usd=0).exists()
    assert not hits.filter(agent_name="content-writer").exists()  # cache_ttl_s: 0


def test_timestamps_lie_in_the_past_days_and_never_in_the_future(demo: None) -> None:
    _seed(days=3)

    span = Execution.objects.order_by("created_at")
    first, last = span.first(), span.last()
    assert first is not None
    assert last is not None
    assert first.created_at >= NOW - timedelta(days=3)
    assert last.created_at <= NOW
    assert not Execution.objects.filter(finished_at__gt=NOW).exists()
    for row in Execution.objects.all()[:300]:
        assert row.finished_at is not None
        assert row.latency_ms is not None
        assert abs((row.finished_at - row.created_at).total_seconds() * 1000 - row.latency_ms) < 2


def test_daytime_carries_more_traffic_than_the_night() -> None:
    assert diurnal_weight(datetime(2026, 3, 11, 14, tzinfo=UTC)) > 5 * diurnal_weight(
        datetime(2026, 3, 11, 2, tzinfo=UTC)
    )


def test_the_same_seed_writes_the_same_history(demo: None) -> None:
    plan = history_plan(executions=500, days=2, seed=3, now=NOW)
    again = history_plan(executions=500, days=2, seed=3, now=NOW)
    other = history_plan(executions=500, days=2, seed=4, now=NOW)

    lines = [c.executions for c in generate(plan)]
    assert lines == [c.executions for c in generate(again)]
    assert lines != [c.executions for c in generate(other)]


def test_seeding_twice_with_the_same_seed_adds_a_second_history(demo: None) -> None:
    _seed(executions=500)
    _seed(executions=500, now=NOW + timedelta(minutes=3))

    assert Execution.objects.count() == 1000


# --- ledger, incidents, rollups ----------------------------------------------------------------


def test_every_charged_execution_has_its_ledger_entry_as_the_recorder_writes_it(
    demo: None,
) -> None:
    result = _seed()

    charged = Execution.objects.filter(cost_usd__gt=0) | Execution.objects.filter(cached=True)
    entries = {e.execution_id: e for e in SpendEntry.objects.all()}
    assert result.spend_entries == len(entries) == charged.count()
    for row in charged[:300]:
        entry = entries[row.id]
        assert entry.at == row.created_at
        assert (entry.agent_name, entry.model, entry.deployment_id) == (
            row.agent_name,
            row.model,
            row.deployment_id,
        )
        assert entry.cost_usd == row.cost_usd
        assert entry.charged_micros == to_micros(row.cost_usd, up=True)
        assert entry.saved_usd == row.saved_usd
        assert entry.cached == row.cached
    total = SpendEntry.objects.aggregate(s=Sum("cost_usd"))["s"]
    assert Decimal(total).quantize(Decimal("0.00000001")) == Execution.objects.aggregate(
        s=Sum("cost_usd")
    )["s"].quantize(Decimal("0.00000001"))


def test_the_ledgers_prices_were_in_force_when_each_entry_was_charged(demo: None) -> None:
    _seed()

    entry = SpendEntry.objects.filter(cost_usd__gt=0).order_by("at").first()
    assert entry is not None
    version = (
        PriceVersion.objects.filter(deployment_id=entry.deployment_id, effective_from__lte=entry.at)
        .order_by("-effective_from")
        .first()
    )
    assert version is not None
    assert (version.input_usd_per_mtok, version.output_usd_per_mtok) == (
        entry.input_usd_per_mtok,
        entry.output_usd_per_mtok,
    )


def test_the_three_reference_incidents_are_resolved_with_timelines_and_postmortems(
    demo: None,
) -> None:
    _seed()

    incidents = {i.kind: i for i in Incident.objects.all()}
    assert set(incidents) == {"breaker_open", "cost_spike", "error_rate"}
    assert incidents["breaker_open"].agent_name == "customer-support"
    for incident in incidents.values():
        assert incident.status == IncidentStatus.RESOLVED
        assert incident.resolved_at is not None
        assert NOW - timedelta(days=3) < incident.opened_at < incident.resolved_at <= NOW
        assert all((incident.impact, incident.root_cause, incident.resolution, incident.lessons))
        kinds = [e.kind for e in incident.events.order_by("at", "id")]
        assert (kinds[0], kinds[-1]) == ("opened", "resolved")
        assert "acknowledged" in kinds


def test_during_the_outage_the_fallback_model_answers(demo: None) -> None:
    _seed(executions=20_000)

    incident = Incident.objects.get(kind="breaker_open")
    during = Execution.objects.filter(
        agent_name="customer-support",
        created_at__gte=incident.opened_at + timedelta(minutes=2),
        created_at__lt=incident.resolved_at,
    )
    assert during.exists()
    assert not during.filter(fallback_used=False).exists()
    assert during.filter(status="succeeded", model="claude-3-5-haiku").count() > 0
    assert set(during.values_list("fallback_reason", flat=True)) == {"circuit_open"}


def test_the_rollups_match_the_raw_rows_day_by_day(demo: None) -> None:
    _seed()

    raw = dict(
        Execution.objects.annotate(d=TruncDate("created_at", tzinfo=UTC))
        .values("d")
        .annotate(n=Count("id"))
        .values_list("d", "n")
    )
    rolled = dict(
        SpendRollup.objects.values("day").annotate(n=Sum("requests")).values_list("day", "n")
    )
    assert {str(d): n for d, n in raw.items()} == {str(d): n for d, n in rolled.items()}
    assert sum(rolled.values()) == SIZE
    assert SpendRollup.objects.aggregate(c=Sum("cost_usd"))["c"].quantize(
        Decimal("0.000001")
    ) == Execution.objects.aggregate(c=Sum("cost_usd"))["c"].quantize(Decimal("0.000001"))


def test_the_traffic_rollups_cover_the_whole_history_for_the_console(demo: None) -> None:
    from budgets.models import TrafficRollup

    _seed()

    days = TrafficRollup.objects.filter(step_s=86400, agent_name="*")
    assert days.aggregate(n=Sum("requests"))["n"] == SIZE
    per_agent = dict(
        TrafficRollup.objects.filter(step_s=86400)
        .exclude(agent_name="*")
        .values("agent_name")
        .annotate(n=Sum("requests"))
        .values_list("agent_name", "n")
    )
    assert per_agent == dict(
        Execution.objects.values("agent_name")
        .annotate(n=Count("id"))
        .values_list("agent_name", "n")
    )
    hours = TrafficRollup.objects.filter(step_s=3600, agent_name="*")
    assert hours.aggregate(n=Sum("requests"))["n"] == SIZE


def test_a_subset_of_agents_gets_all_the_executions(demo: None) -> None:
    _seed(agents=["translator", "hr-policy"], executions=400)

    assert Counter(Execution.objects.values_list("agent_name", flat=True)) == {
        "translator": 200,
        "hr-policy": 200,
    }


# --- refusals, before anything is written ------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"executions": 0}, "--executions must be a whole number > 0"),
        ({"days": 0}, "--days must be between 1 and 400"),
        ({"days": 401}, "--days must be between 1 and 400"),
        ({"batch": 0}, "--batch must be between 1 and 1,000,000"),
        ({"seed": -1}, "--seed must be a whole number >= 0"),
        ({"agents": ["nope", "customer-support", "zzz"]}, "unknown agents: nope, zzz"),
        ({"agents": [""]}, "--agents names no agent"),
    ],
)
def test_bad_options_are_refused_with_a_message_before_anything_is_written(
    demo: None, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(HistoryError, match=message):
        _seed(**options)
    assert _written() == NOTHING


def test_without_agents_it_says_to_apply_the_demo_first(db: None) -> None:
    with pytest.raises(CommandError, match=r"apply -f demo/breakwater.yaml"):
        call_command("seed_history", executions=10, days=1, stdout=io.StringIO())
    assert _written() == NOTHING


def test_an_agent_whose_model_has_no_deployment_is_named(demo: None) -> None:
    ModelDeployment.objects.filter(name="gpt-4.1").update(enabled=False)

    with pytest.raises(HistoryError, match=r"agent content-writer: its model gpt-4\.1 has no"):
        _seed()
    assert _written() == NOTHING


def test_the_command_reports_what_it_wrote_and_is_quiet_at_verbosity_0(
    demo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    call_command("seed_history", executions=200, days=1, seed=1, stdout=out, verbosity=0)
    assert out.getvalue() == ""
    assert capsys.readouterr().err == ""

    call_command(
        "seed_history", "--executions", "200", "--days", "1", "--agents", "translator", stdout=out
    )
    assert "200 executions (1 agents, 1 days" in out.getvalue()
    assert "executions [####" in capsys.readouterr().err  # the progress bar, on stderr
    assert Execution.objects.count() == 400


def test_rows_go_through_copy_on_postgresql_and_batched_inserts_elsewhere(demo: None) -> None:
    statements: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        _seed(executions=300, batch=100)

    inserts = [s for s in statements if s.startswith('INSERT INTO "agents_execution"')]
    ledger = [s for s in statements if s.startswith('INSERT INTO "budgets_spendentry"')]
    assert Execution.objects.count() == 300
    if connection.vendor == "postgresql":  # COPY runs on psycopg's cursor, under Django's
        assert (inserts, ledger) == ([], [])
    else:  # one executemany per chunk of --batch rows
        assert (len(inserts), len(ledger)) == (3, 3)
