"""``/executions/`` and ``/executions/{id}/`` through the Django test client."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from agents.models import Execution, ModelDeployment, Provider
from console.pages.executions import filters_parse, timeline
from tests.console.pages.conftest import ClientAs

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _execution(**fields: Any) -> Execution:
    values: dict[str, Any] = {
        "agent_name": "support",
        "status": "succeeded",
        "model": "m-main",
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_usd": Decimal("0.0012"),
        "latency_ms": 40,
        "created_at": NOW,
    }
    return Execution.objects.create(**(values | fields))


def _many(count: int, **fields: Any) -> list[Execution]:
    rows = [
        Execution(
            agent_name=fields.get("agent_name", "support"),
            status=fields.get("status", "succeeded"),
            model="m-main",
            created_at=NOW - timedelta(seconds=i),
        )
        for i in range(count)
    ]
    return Execution.objects.bulk_create(rows)


def _ids(response: Any) -> list[str]:
    return [str(row.id) for row in response.context["rows"]]


# --- the explorer --------------------------------------------------------------------------


def test_the_explorer_lists_executions_newest_first_with_their_columns(client_as: ClientAs) -> None:
    old = _execution(created_at=NOW - timedelta(minutes=5), status="degraded",
                     fallback_reason="timeout", fallback_used=True)  # fmt: skip
    new = _execution(cached=True)
    response = client_as("viewer").get("/executions/")
    assert response.status_code == 200
    assert _ids(response) == [str(new.id), str(old.id)]
    html = response.content.decode()
    assert '<span class="pill degraded">degraded</span>' in html
    assert "timeout" in html
    assert "$0.0012" in html
    assert f'href="/executions/{new.id}/"' in html


def test_filters_narrow_the_list_to_what_matches(client_as: ClientAs) -> None:
    support_failed = _execution(status="failed")
    _execution(status="succeeded")
    writer_failed = _execution(agent_name="writer", status="failed")
    cached = _execution(agent_name="writer", cached=True, created_at=NOW - timedelta(hours=3))
    reason = _execution(status="degraded", fallback_reason="budget_exceeded", model="")
    client = client_as("viewer")
    assert _ids(client.get("/executions/?agent=support&status=failed")) == [str(support_failed.id)]
    assert set(_ids(client.get("/executions/?status=failed"))) == {
        str(support_failed.id),
        str(writer_failed.id),
    }
    assert _ids(client.get("/executions/?agent=writer&cached=yes")) == [str(cached.id)]
    assert _ids(client.get("/executions/?reason=budget_exceeded")) == [str(reason.id)]
    assert str(cached.id) not in _ids(client.get("/executions/?cached=no"))


def test_a_time_range_in_the_viewers_zone_is_converted_to_utc(client_as: ClientAs) -> None:
    inside = _execution(created_at=datetime(2026, 11, 28, 9, 30, tzinfo=UTC))
    _execution(created_at=datetime(2026, 11, 28, 11, 30, tzinfo=UTC))
    # tz is getTimezoneOffset(): minutes behind UTC (UTC+1 is -60).
    client = client_as("viewer")
    query = "range=custom&from=2026-11-28T09:00&to=2026-11-28T10:00"
    assert _ids(client.get(f"/executions/?{query}&tz=0")) == [str(inside.id)]
    assert _ids(client.get(f"/executions/?{query}&tz=-60")) == []  # 08:00-09:00 UTC
    assert _ids(client.get(f"/executions/?{query}&tz=-20")) == [str(inside.id)]  # 08:40-09:40


def test_a_preset_range_counts_back_from_now() -> None:
    parsed = filters_parse(_query("range=1h"), NOW)
    assert parsed.errors == []
    assert parsed.filters.since == NOW - timedelta(hours=1)
    assert parsed.filters.until is None


def _query(text: str) -> Any:
    from django.http import QueryDict

    return QueryDict(text)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=done", "status: &#x27;done&#x27; is not one of"),
        ("reason=oops", "fallback reason: &#x27;oops&#x27; is not one of"),
        ("cached=maybe", "cached: &#x27;maybe&#x27; is not one of yes, no"),
        ("range=2w", "range: &#x27;2w&#x27; is not one of 1h, 24h, 7d, 30d, custom"),
        ("range=custom&from=yesterday", "from: &#x27;yesterday&#x27; is not a date and time"),
        ("range=custom&from=2026-11-28T10:00&to=2026-11-28T09:00", "to: must be later than from"),
        ("tz=east", "tz: &#x27;east&#x27; is not a whole number of minutes"),
        ("after=not-a-cursor", "after: invalid cursor"),
        ("before=bm90IGEgY3Vyc29y", "before: invalid cursor"),
        ("status=failed&cached=yes", "choose one of status and cached"),
        ("agent=support&model=m-main", "choose an agent or a model, not both"),
    ],
)
def test_bad_filter_values_get_a_message_naming_them_not_a_500(
    query: str, message: str, client_as: ClientAs
) -> None:
    _execution()
    response = client_as("viewer").get(f"/executions/?{query}")
    assert response.status_code == 400
    assert message in response.content.decode()
    assert response.context["rows"] == []


def test_pages_go_older_and_back_newer_with_cursors(client_as: ClientAs) -> None:
    rows = _many(120)  # rows[0] is the newest
    client = client_as("viewer")
    first = client.get("/executions/")
    assert _ids(first) == [str(r.id) for r in rows[:50]]
    assert first.context["newer"] is None
    second = client.get("/executions/" + first.context["older"])
    assert _ids(second) == [str(r.id) for r in rows[50:100]]
    third = client.get("/executions/" + second.context["older"])
    assert _ids(third) == [str(r.id) for r in rows[100:]]
    assert third.context["older"] is None
    back = client.get("/executions/" + third.context["newer"])
    assert _ids(back) == [str(r.id) for r in rows[50:100]]
    top = client.get("/executions/" + back.context["newer"])
    assert _ids(top) == [str(r.id) for r in rows[:50]]
    assert top.context["newer"] is None
    assert "Older →" in top.content.decode()


def test_paging_keeps_the_filters(client_as: ClientAs) -> None:
    _many(60, status="failed")
    _many(10, status="succeeded")
    response = client_as("viewer").get("/executions/?status=failed")
    assert "status=failed" in response.context["older"]
    second = client_as("viewer").get("/executions/" + response.context["older"])
    assert len(_ids(second)) == 10
    assert {row.status for row in second.context["rows"]} == {"failed"}


def test_ties_in_time_are_paged_by_id_without_loss_or_repeat(client_as: ClientAs) -> None:
    rows = Execution.objects.bulk_create(
        [Execution(agent_name="support", status="succeeded", created_at=NOW) for _ in range(75)]
    )
    client = client_as("viewer")
    first = client.get("/executions/")
    second = client.get("/executions/" + first.context["older"])
    seen = _ids(first) + _ids(second)
    assert sorted(seen) == sorted(str(r.id) for r in rows)
    assert len(set(seen)) == 75


def test_the_explorer_page_query_count_does_not_grow_with_rows(
    django_assert_max_num_queries: Any,
    client_as: ClientAs,
) -> None:
    _many(300)
    _many(300, agent_name="writer", status="failed")
    client = client_as("viewer")
    first = client.get("/executions/")
    # session, user, role groups, agents, models, one page of executions
    for url in (
        "/executions/",
        "/executions/" + first.context["older"],
        "/executions/?agent=writer&status=failed&range=7d",
    ):
        with django_assert_max_num_queries(6):
            assert client.get(url).status_code == 200


def test_empty_states_say_what_to_do(client_as: ClientAs) -> None:
    client = client_as("viewer")
    assert "None yet: run traffic" in client.get("/executions/").content.decode()
    _execution()
    html = client.get("/executions/?agent=nobody").content.decode()
    assert "No executions match." in html
    assert "Clear filters" in html


def test_signed_out_visitors_are_sent_to_log_in_and_roleless_users_get_403(
    client_as: ClientAs,
) -> None:
    assert Client().get("/executions/").status_code == 302
    assert client_as(None).get("/executions/").status_code == 403


# --- one execution -------------------------------------------------------------------------


def _priced_deployment() -> ModelDeployment:
    provider = Provider.objects.create(name="sim", kind="simulated")
    return ModelDeployment.objects.create(
        name="m-main",
        provider=provider,
        upstream_model="main-1",
        input_usd_per_mtok=Decimal("2"),
        output_usd_per_mtok=Decimal("8"),
    )


def _step(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "model": None,
        "deployment": None,
        "outcome": "",
        "detail": "",
        "latency_ms": 0.0,
        "input_tokens": 0,
        "output_tokens": 0,
    } | fields


def test_the_timeline_shows_retries_fallbacks_and_the_costs_of_attempts(
    client_as: ClientAs,
) -> None:
    main = _priced_deployment()
    row = _execution(
        status="succeeded",
        model="m-back",
        attempts=3,
        fallback_used=True,
        fallback_reason="timeout",
        input_tokens=3000,
        output_tokens=700,
        steps=[
            _step("attempt", model="m-main", deployment=main.pk, outcome="Timeout",
                  detail="no answer in 5 s", latency_ms=5000.0, input_tokens=1000,
                  wait_ms=1250.0),
            _step("attempt", model="m-main", deployment=main.pk, outcome="Timeout",
                  latency_ms=5000.0, input_tokens=1000),
            _step("fallback", model="m-back", outcome="timeout"),
            _step("attempt", model="m-back", deployment=999, outcome="ok", latency_ms=80.0,
                  input_tokens=1000, output_tokens=700),
        ],
    )  # fmt: skip
    response = client_as("operator").get(f"/executions/{row.id}/")  # sees provider text
    assert response.status_code == 200
    titles = [entry["title"] for entry in response.context["entries"]]
    assert titles == [
        "Attempt 1 on m-main",
        "Retry 1 on m-main",
        "Fallback to m-back",
        "Attempt 3 on m-back",
    ]
    costs = [entry["cost_usd"] for entry in response.context["entries"]]
    assert costs == [Decimal("0.002"), Decimal("0.002"), None, None]  # m-back: no price row
    html = response.content.decode()
    assert "no answer in 5 s" in html
    assert "waited 1,250 ms before retrying" in html
    assert "$0.002" in html
    assert "<strong>Total</strong>: succeeded, 3 attempts" in html


def test_the_timeline_shows_tool_calls_cache_hits_and_refusals() -> None:
    entries = timeline(
        [
            _step("cache", model="m-main", outcome="hit", detail="saved 0.01 USD; original 5/9 tokens"),
            _step("tool", outcome="ok", detail="lookup_order", latency_ms=3.0),
            _step("tool", outcome="ToolFailed", detail="lookup_order: boom"),
            _step("tool", outcome="client", detail="get_weather"),
            _step("refused", outcome="budget_exceeded"),
        ],
        {},
    )  # fmt: skip
    assert [(e["title"], e["tone"]) for e in entries] == [
        ("Cache hit (m-main)", "ok"),
        ("Tool lookup_order", "ok"),
        ("Tool lookup_order", "bad"),
        ("Tool call handed to the client", "ok"),
        ("Refused: budget exceeded", "bad"),
    ]


def test_input_and_output_are_escaped_and_long_text_is_collapsed(client_as: ClientAs) -> None:
    row = _execution(
        input=[{"role": "user", "content": "<script>alert(1)</script>"}],
        output="x" * 2000,
    )
    html = client_as("viewer").get(f"/executions/{row.id}/").content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<details><summary>Output (2000 characters)</summary>" in html


def test_a_running_execution_is_marked_live_and_its_body_partial_renders(
    client_as: ClientAs,
) -> None:
    row = _execution(status="running", steps=[], latency_ms=None)
    client = client_as("viewer")
    html = client.get(f"/executions/{row.id}/").content.decode()
    assert 'data-live="1"' in html
    assert f'data-body-url="/executions/{row.id}/body/"' in html
    part = client.get(f"/executions/{row.id}/body/")
    assert part.status_code == 200
    assert part.content.decode().startswith('<div id="execution-body"')
    finished = _execution(status="succeeded")
    assert 'data-live="1"' not in client.get(f"/executions/{finished.id}/").content.decode()


def test_an_unknown_execution_is_404(
    django_assert_max_num_queries: Any, client_as: ClientAs
) -> None:
    client = client_as("viewer")
    assert client.get(f"/executions/{uuid.uuid4()}/").status_code == 404
    assert client.get(f"/executions/{uuid.uuid4()}/body/").status_code == 404


def test_the_detail_page_query_count_is_pinned(
    django_assert_max_num_queries: Any, client_as: ClientAs
) -> None:
    main = _priced_deployment()
    steps = [_step("attempt", model="m-main", deployment=main.pk, outcome="ok")] * 20
    row = _execution(steps=steps)
    client = client_as("viewer")
    with django_assert_max_num_queries(5):  # session, user, groups, execution, prices
        assert client.get(f"/executions/{row.id}/").status_code == 200


def test_provider_error_text_is_for_operators_and_viewers_read_a_summary(
    client_as: ClientAs,
) -> None:
    execution = _execution(
        status="failed",
        steps=[
            {
                "kind": "attempt",
                "model": "m-main",
                "deployment": None,
                "outcome": "AuthFailed",
                "detail": "401 Incorrect API key provided: sk-proj-abcdefghijkl",
                "latency_ms": 12,
            }
        ],
        error={"type": "client_error", "message": "400 Unknown model for org-42"},
    )
    viewer = client_as("viewer").get(f"/executions/{execution.id}/").content.decode()
    operator = client_as("operator").get(f"/executions/{execution.id}/").content.decode()
    assert "Incorrect API key" not in viewer
    assert "org-42" not in viewer
    assert "provider error 401 (authentication)" in viewer
    assert "provider error 400 (invalid request)" in viewer
    assert "Incorrect API key provided" in operator
    assert "org-42" in operator
