"""An agent delete never widens a key restricted to it: the API refuses (409), `apply --prune`
revokes the key (audited), and any other delete (the ORM, a shell) is refused."""

from __future__ import annotations

import pytest
from django.db import transaction

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.models import Agent, ApiKey
from agents.services import agent_delete
from core.errors import Conflict
from core.models import AuditEvent

DOC = """
providers: [{name: p, kind: simulated}]
models: [{name: m, provider: p, upstream_model: u, input_usd_per_mtok: 1, output_usd_per_mtok: 1}]
agents: [{name: a, model: m}, {name: b, model: m}]
"""


@pytest.mark.django_db
def test_deleting_a_keys_only_agent_outside_the_services_is_refused_not_revoked() -> None:
    config_apply(document=config_parse(DOC))
    only_a = api_key_create(name="only-a", scopes=["execute"], agents=["a"]).api_key
    audited = AuditEvent.objects.count()
    refusal = f"API keys {only_a.prefix} may use only agent 'a'"
    with pytest.raises(Conflict, match=refusal), transaction.atomic():
        Agent.objects.get(name="a").delete()
    with pytest.raises(Conflict), transaction.atomic():
        Agent.objects.filter(name="a").delete()
    assert Agent.objects.filter(name="a").exists()
    assert ApiKey.objects.get(pk=only_a.pk).revoked_at is None
    assert AuditEvent.objects.count() == audited


@pytest.mark.django_db
def test_the_service_refuses_it_with_a_409_and_writes_nothing() -> None:
    config_apply(document=config_parse(DOC))
    only_a = api_key_create(name="only-a", scopes=["execute"], agents=["a"]).api_key
    audited = AuditEvent.objects.count()
    with pytest.raises(Conflict) as refused:
        agent_delete(name="a", actor="user:x")
    assert refused.value.status == 409
    assert Agent.objects.filter(name="a").exists()
    assert ApiKey.objects.get(pk=only_a.pk).revoked_at is None
    assert AuditEvent.objects.count() == audited


@pytest.mark.django_db
def test_an_agent_other_keys_also_allow_or_none_names_is_deleted_leaving_them_as_they_were() -> (
    None
):
    config_apply(document=config_parse(DOC))
    a_and_b = api_key_create(name="a-and-b", scopes=["execute"], agents=["a", "b"]).api_key
    unrestricted = api_key_create(name="all", scopes=["execute"]).api_key
    Agent.objects.get(name="a").delete()
    assert ApiKey.objects.get(pk=a_and_b.pk).revoked_at is None
    assert list(ApiKey.objects.get(pk=a_and_b.pk).agents.values_list("name", flat=True)) == ["b"]
    assert ApiKey.objects.get(pk=unrestricted.pk).revoked_at is None


@pytest.mark.django_db
def test_prune_revokes_keys_left_without_an_agent_and_audits_it_as_the_apply() -> None:
    config_apply(document=config_parse(DOC))
    only_b = api_key_create(name="only-b", scopes=["execute"], agents=["b"]).api_key
    config_apply(
        document=config_parse(DOC.replace(", {name: b, model: m}", "")),
        prune=True,
        actor="system:apply",
    )
    assert ApiKey.objects.get(pk=only_b.pk).revoked_at is not None
    event = AuditEvent.objects.get(action="apikey_revoke")
    assert (event.actor, event.target_id) == ("system:apply", only_b.prefix)
    assert event.reason == "its only allowed agent 'b' was deleted"
    assert not Agent.objects.filter(name="b").exists()
