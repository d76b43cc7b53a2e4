from __future__ import annotations

import pytest

from agents.config.apply import config_apply, config_parse
from agents.models import Agent, ApiKey
from agents.services import api_key_create

DOC = """
providers: [{name: p, kind: simulated}]
models: [{name: m, provider: p, upstream_model: u, input_usd_per_mtok: 1, output_usd_per_mtok: 1}]
agents: [{name: a, model: m}, {name: b, model: m}]
"""


@pytest.mark.django_db
def test_deleting_a_keys_only_agent_revokes_the_key_instead_of_widening_it() -> None:
    config_apply(document=config_parse(DOC))
    only_a = api_key_create(name="only-a", scopes=["execute"], agents=["a"]).api_key
    a_and_b = api_key_create(name="a-and-b", scopes=["execute"], agents=["a", "b"]).api_key
    unrestricted = api_key_create(name="all", scopes=["execute"]).api_key
    Agent.objects.get(name="a").delete()
    assert ApiKey.objects.get(pk=only_a.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=a_and_b.pk).revoked_at is None
    assert ApiKey.objects.get(pk=unrestricted.pk).revoked_at is None


@pytest.mark.django_db
def test_prune_revokes_keys_left_without_an_agent() -> None:
    config_apply(document=config_parse(DOC))
    only_b = api_key_create(name="only-b", scopes=["execute"], agents=["b"]).api_key
    config_apply(document=config_parse(DOC.replace(", {name: b, model: m}", "")), prune=True)
    assert ApiKey.objects.get(pk=only_b.pk).revoked_at is not None
