"""The drills page: past drills with their figures and checks for viewers; starting one is
for operators, one drill at a time."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from console.drills.report import Report
from console.drills.services import drill_create, drill_finish, drill_update
from console.models import DrillRun, DrillStatus
from tests.console.pages.conftest import ClientAs

pytestmark = pytest.mark.django_db


def _finished(kind: str = "outage", *, ok: bool = True) -> DrillRun:
    drill = drill_create(kind=kind, options={"base_url": "http://127.0.0.1:8000"}, actor="user:amy")
    report = Report()
    report.section("breaker")
    report.add("time_to_open_s", "time to open the breaker", 0.56, "0.56 s")
    report.add("served_by_fallback", "served by the fallback model", 41)
    report.check("breaker opened", ok, "0.56 s")
    drill_update(drill_id=drill.pk, status=DrillStatus.RUNNING)
    drill_finish(
        drill_id=drill.pk,
        status=DrillStatus.PASSED if ok else DrillStatus.FAILED,
        figures=report.to_json(),
        log="07:43:21.970 fault: the primary upstream answers 503",
    )
    return DrillRun.objects.get(pk=drill.pk)


def test_a_viewer_sees_past_drills_with_their_figures_checks_and_log(client_as: ClientAs) -> None:
    drill = _finished()
    _finished("cost-spike", ok=False)
    page = client_as("viewer").get("/drills/").content.decode()
    assert f'id="drill-{drill.pk}"' in page
    assert "time to open the breaker" in page
    assert "0.56 s" in page
    assert "served by the fallback model" in page
    assert "1 of 1 checks held" in page
    assert 'class="pill ok">passed' in page
    assert 'class="pill bad">failed' in page
    assert "fault: the primary upstream answers 503" in page
    assert "by user:amy" in page


def test_a_viewer_has_no_start_form_and_a_forged_start_is_403(client_as: ClientAs) -> None:
    client = client_as("viewer")
    page = client.get("/drills/").content.decode()
    assert "Start drill" not in page
    assert client.post("/drills/start/", {"kind": "outage"}).status_code == 403
    assert not DrillRun.objects.exists()


def test_signed_out_visitors_are_sent_to_log_in_and_cannot_start() -> None:
    client = Client()
    assert client.get("/drills/").status_code == 302
    assert client.post("/drills/start/", {"kind": "outage"}).status_code == 403
    assert not DrillRun.objects.exists()


def test_an_operator_sees_the_start_form_with_the_three_drills_and_the_agents_to_copy(
    client_as: ClientAs,
) -> None:
    from agents.config.apply import config_apply, config_parse

    config_apply(
        document=config_parse(
            "providers: [{name: p, kind: simulated}]\n"
            "models: [{name: m, provider: p, upstream_model: u}]\n"
            "agents: [{name: support, model: m}, {name: drill-9-outage, model: m}]\n"
        )
    )
    page = client_as("operator").get("/drills/").content.decode()
    assert "Start drill" in page
    for kind in ("outage", "cost-spike", "memory-leak"):
        assert f'value="{kind}"' in page
    assert '<option value="support">support</option>' in page
    assert "drill-9-outage" not in page  # a drill's own agent is not a template


def test_an_unknown_kind_or_agent_starts_nothing_and_says_why(client_as: ClientAs) -> None:
    client = client_as("operator")
    page = client.post("/drills/start/", {"kind": "flood"}, follow=True).content.decode()
    assert "No drill started: kind: expected one of outage, cost-spike, memory-leak." in page
    page = client.post(
        "/drills/start/", {"kind": "outage", "agent": "nobody"}, follow=True
    ).content.decode()
    assert "No drill started: agent: no agent &#x27;nobody&#x27;." in page
    assert not DrillRun.objects.exists()


def test_a_second_drill_is_refused_while_one_runs(client_as: ClientAs) -> None:
    running = drill_create(kind="outage", options={}, actor="user:amy")
    drill_update(drill_id=running.pk, status=DrillStatus.RUNNING)
    client = client_as("operator")
    page = client.get("/drills/").content.decode()
    assert f"Drill {running.pk} is running; one at a time." in page
    page = client.post("/drills/start/", {"kind": "cost-spike"}, follow=True).content.decode()
    assert f"No drill started: drill {running.pk} (outage) is still running." in page
    assert DrillRun.objects.count() == 1


def test_a_running_drills_card_polls_itself_and_a_finished_one_does_not(
    client_as: ClientAs,
) -> None:
    running = drill_create(kind="outage", options={}, actor="user:amy")
    drill_update(drill_id=running.pk, status=DrillStatus.RUNNING, log="07:00:00.000 warm-up")
    done = _finished()
    client = client_as("viewer")
    card = client.get(f"/drills/{running.pk}/").content.decode()
    assert f'hx-get="/drills/{running.pk}/"' in card
    assert 'hx-trigger="every 2s"' in card
    assert "warm-up" in card
    card = client.get(f"/drills/{done.pk}/").content.decode()
    assert "hx-get" not in card
    assert "time to open the breaker" in card


def test_an_unknown_drill_is_404(client_as: ClientAs) -> None:
    assert client_as("viewer").get("/drills/999/").status_code == 404


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_the_list_costs_the_same_few_queries_whatever_the_number_of_drills(
    role: str, client_as: ClientAs
) -> None:
    client = client_as(role)
    _finished()
    with CaptureQueriesContext(connection) as few:
        assert client.get("/drills/").status_code == 200
    for _ in range(5):
        _finished("cost-spike")
    with CaptureQueriesContext(connection) as many:
        assert client.get("/drills/").status_code == 200
    assert len(many) == len(few)
    # session, user, role groups, the drills (+ for an operator: the agents to copy and the
    # drill still running, if any)
    assert len(few) == (6 if role == "operator" else 4), [q["sql"] for q in few.captured_queries]


def test_a_drill_lost_with_its_process_does_not_block_the_next_one(client_as: ClientAs) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from console.pages.drills import STALE_AFTER_S

    lost = drill_create(kind="outage", options={}, actor="user:amy")
    DrillRun.objects.filter(pk=lost.pk).update(
        status=DrillStatus.RUNNING,
        created_at=timezone.now() - timedelta(seconds=STALE_AFTER_S + 1),
    )
    page = client_as("operator").get("/drills/").content.decode()
    assert "one at a time" not in page
    assert 'type="submit" disabled' not in page
