"""The audit page (admin only): newest first, filters, expandable per-key diffs, pages."""

from __future__ import annotations

from typing import Any

import pytest

from core.audit import audit_record
from tests.console.pages.conftest import ClientAs

pytestmark = pytest.mark.django_db


def _event(**fields: Any) -> None:
    audit_record(
        actor=fields.pop("actor", "user:alice"),
        action=fields.pop("action", "agent_update"),
        target_type=fields.pop("target_type", "agent"),
        target_id=fields.pop("target_id", "support"),
        **fields,
    )


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_the_page_is_403_below_admin(role: str, client_as: ClientAs) -> None:
    assert client_as(role).get("/audit/").status_code == 403


def test_rows_are_newest_first_with_a_compact_diff_reason_and_request_id(
    client_as: ClientAs,
) -> None:
    _event(action="first_action")
    _event(
        action="budget_raise",
        before={"limit_usd": "50.00", "paused": False},
        after={"limit_usd": "75.00", "paused": False, "until": "tonight"},
        reason="launch day",
        request_id="req-123",
    )
    page = client_as("admin").get("/audit/").content.decode()
    assert page.index("budget_raise") < page.index("first_action")
    assert "<details>" in page
    assert '<span class="del">- limit_usd: &quot;50.00&quot;</span>' in page
    assert '<span class="add">+ limit_usd: &quot;75.00&quot;</span>' in page
    assert '<span class="add">+ until: &quot;tonight&quot;</span>' in page
    assert "paused" not in page  # unchanged keys are left out
    assert "launch day" in page
    assert "req-123" in page


def test_filters_by_actor_action_and_target(client_as: ClientAs) -> None:
    _event(actor="user:alice", action="agent_update", target_type="agent", target_id="a")
    _event(actor="user:bob", action="apikey_revoke", target_type="apikey", target_id="bw_x")
    _event(actor="user:bob", action="agent_update", target_type="agent", target_id="b")
    client = client_as("admin")

    def actions(query: str) -> list[tuple[str, str]]:
        rows = client.get(f"/audit/?{query}").context["rows"]
        return [(row["event"].actor, row["event"].target_id) for row in rows]

    assert actions("actor=user%3Abob") == [("user:bob", "b"), ("user:bob", "bw_x")]
    assert actions("action=agent_update") == [("user:bob", "b"), ("user:alice", "a")]
    assert actions("target_type=agent&target_id=a") == [("user:alice", "a")]
    assert actions("target_type=apikey") == [("user:bob", "bw_x")]
    page = client.get("/audit/?actor=nobody").content.decode()
    assert "No audit events match these filters" in page


def test_the_pages_follow_each_other_without_overlap(client_as: ClientAs) -> None:
    for number in range(60):
        _event(target_id=str(number))
    client = client_as("admin")
    first = client.get("/audit/")
    second = client.get(f"/audit/?{first.context['next_query']}")
    ids = [row["event"].pk for row in first.context["rows"]]
    more = [row["event"].pk for row in second.context["rows"]]
    assert len(ids) == 50
    assert len(more) == 10
    assert not set(ids) & set(more)
    assert ids + more == sorted(ids + more, reverse=True)


def test_a_bad_cursor_is_a_400_naming_it(client_as: ClientAs) -> None:
    response = client_as("admin").get("/audit/?after=zzz")
    assert response.status_code == 400
    assert "after: invalid cursor" in response.content.decode()


@pytest.mark.parametrize("count", [1, 150])
def test_the_page_takes_the_same_few_queries_whatever_the_size_of_the_trail(
    count: int, django_assert_max_num_queries: Any, client_as: ClientAs
) -> None:
    for number in range(count):
        _event(target_id=str(number), after={"n": number})
    client = client_as("admin")
    with django_assert_max_num_queries(5):
        assert client.get("/audit/?action=agent_update").status_code == 200
