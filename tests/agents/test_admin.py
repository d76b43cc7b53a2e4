"""The admin never shows a provider secret, in plaintext or encrypted, and never a key hash."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test import Client
from pytest_django.fixtures import Settings

from agents.access.crypto import decrypt_secret, generate_key
from agents.access.keys import generate_key as generate_api_key
from agents.access.services import provider_secret_set
from agents.models import Agent, ApiKey, Execution, ModelDeployment, Provider
from core.models import AuditEvent

pytestmark = pytest.mark.django_db

PLAINTEXT = "sk-ant-AdminPageSecret0987654321"
PROVIDERS = "/admin/agents/provider/"


def _everything_stored() -> str:
    """Every value of every row of every table, as one string."""
    rows: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            rows.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(rows)


@pytest.fixture
def admin_client(client: Client, django_user_model: Any) -> Client:
    # pytest-django's own admin_client hashes a password (about a second each); force_login
    # needs none.
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", None)
    client.force_login(user)
    return client


@pytest.fixture
def keys(settings: Settings) -> None:
    settings.BREAKWATER_ENCRYPTION_KEYS = [generate_key()]


@pytest.fixture
def stored(keys: None) -> Provider:
    Provider.objects.create(name="anthropic-main", kind="anthropic", base_url="https://x.example")
    provider_secret_set(provider_name="anthropic-main", secret=PLAINTEXT)
    return Provider.objects.get(name="anthropic-main")


def _form(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "openai-main",
        "kind": "openai",
        "base_url": "https://api.example/v1",
        "api_key_env": "",
        "simulation": "{}",
        "new_api_key": "",
    } | overrides


def test_the_provider_list_shows_the_key_source_but_not_the_key(
    admin_client: Client, stored: Provider
) -> None:
    response = admin_client.get(PROVIDERS)
    assert response.status_code == 200
    page = response.content.decode()
    assert "anthropic-main" in page
    assert "stored (encrypted)" in page
    assert PLAINTEXT not in page
    assert stored.api_key_encrypted not in page


def test_the_provider_change_page_shows_neither_plaintext_nor_ciphertext(
    admin_client: Client, stored: Provider
) -> None:
    response = admin_client.get(f"{PROVIDERS}{stored.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'type="password" name="new_api_key"' in page
    assert PLAINTEXT not in page
    assert stored.api_key_encrypted not in page
    assert stored.api_key_encrypted[:20] not in page


def test_adding_a_provider_with_a_key_stores_it_encrypted_and_audited(
    admin_client: Client, keys: None
) -> None:
    response = admin_client.post(f"{PROVIDERS}add/", _form(new_api_key=PLAINTEXT), follow=True)
    assert response.status_code == 200
    assert PLAINTEXT not in response.content.decode()
    provider = Provider.objects.get(name="openai-main")
    assert decrypt_secret(provider.api_key_encrypted) == PLAINTEXT
    assert provider.api_key_encrypted not in response.content.decode()

    stored_everywhere = _everything_stored()
    assert PLAINTEXT not in stored_everywhere
    assert PLAINTEXT not in str(LogEntry.objects.values_list("change_message", flat=True))
    event = AuditEvent.objects.get(action="provider_secret_set")
    assert event.actor == "user:admin"
    assert event.target_id == str(provider.pk)


def test_saving_a_provider_without_a_new_key_keeps_the_stored_one(
    admin_client: Client, stored: Provider
) -> None:
    form = _form(name=stored.name, kind="anthropic", base_url="https://y.example")
    response = admin_client.post(f"{PROVIDERS}{stored.pk}/change/", form)
    assert response.status_code == 302
    provider = Provider.objects.get(pk=stored.pk)
    assert provider.base_url == "https://y.example"
    assert provider.api_key_encrypted == stored.api_key_encrypted


def test_a_rejected_form_does_not_echo_the_key(admin_client: Client, keys: None) -> None:
    form = _form(api_key_env="OPENAI_API_KEY", new_api_key=PLAINTEXT)
    response = admin_client.post(f"{PROVIDERS}add/", form)
    assert response.status_code == 200
    page = response.content.decode()
    assert "use either api_key_env or a stored secret, not both" in page
    assert PLAINTEXT not in page
    assert not Provider.objects.exists()


def test_adding_a_key_without_encryption_keys_is_a_form_error_not_a_crash(
    admin_client: Client, settings: Settings
) -> None:
    settings.BREAKWATER_ENCRYPTION_KEYS = []
    response = admin_client.post(f"{PROVIDERS}add/", _form(new_api_key=PLAINTEXT))
    assert response.status_code == 200
    page = response.content.decode()
    assert "BREAKWATER_ENCRYPTION_KEYS: is required" in page
    assert PLAINTEXT not in page
    assert not Provider.objects.exists()


def test_pointing_a_provider_with_a_stored_key_at_an_env_var_forgets_the_stored_key(
    admin_client: Client, stored: Provider
) -> None:
    # The same rule as `apply`: naming an env var replaces a stored secret.
    form = _form(name=stored.name, kind="anthropic", api_key_env="ANTHROPIC_API_KEY")
    response = admin_client.post(f"{PROVIDERS}{stored.pk}/change/", form)
    assert response.status_code == 302
    provider = Provider.objects.get(pk=stored.pk)
    assert provider.api_key_env == "ANTHROPIC_API_KEY"
    assert provider.api_key_encrypted == ""
    # apply's own audit of the same change: one event, never the secret, even encrypted.
    event = AuditEvent.objects.exclude(action="provider_secret_set").get()
    assert (event.action, event.actor) == ("provider_update", "user:admin")
    assert event.before == {"api_key_env": "", "base_url": "https://x.example"}
    assert event.after == {"api_key_env": "ANTHROPIC_API_KEY", "base_url": "https://api.example/v1"}


def test_an_openai_provider_without_base_url_is_a_form_error(
    admin_client: Client, keys: None
) -> None:
    response = admin_client.post(f"{PROVIDERS}add/", _form(base_url=""))
    assert response.status_code == 200
    assert "base_url is required for openai and anthropic providers" in response.content.decode()


def test_a_provider_at_a_cloud_metadata_address_is_a_form_error(
    admin_client: Client, keys: None
) -> None:
    response = admin_client.post(f"{PROVIDERS}add/", _form(base_url="http://169.254.169.254/v1"))
    assert response.status_code == 200
    assert "169.254.169.254 is link-local" in response.content.decode()
    assert "BREAKWATER_PROVIDER_ALLOW_HOSTS" in response.content.decode()
    assert not Provider.objects.filter(name="openai-main").exists()


def test_a_provider_on_loopback_or_an_allowed_metadata_host_is_saved(
    admin_client: Client, keys: None, settings: Settings
) -> None:
    settings.BREAKWATER_PROVIDER_ALLOW_HOSTS = ["169.254.10.1"]
    for name, url in [("loop", "http://127.0.0.1:9000/v1"), ("meta", "http://169.254.10.1/v1")]:
        response = admin_client.post(f"{PROVIDERS}add/", _form(name=name, base_url=url))
        assert response.status_code == 302, response.content.decode()
    assert Provider.objects.filter(name__in=["loop", "meta"]).count() == 2


def test_the_api_key_admin_hides_the_hash_and_cannot_add_keys(admin_client: Client) -> None:
    new = generate_api_key()
    key = ApiKey.objects.create(
        name="ci", prefix=new.prefix, secret_hash=new.secret_hash, scopes="read"
    )
    listing = admin_client.get("/admin/agents/apikey/").content.decode()
    change = admin_client.get(f"/admin/agents/apikey/{key.pk}/change/").content.decode()
    for page in (listing, change):
        assert new.prefix in page
        assert new.secret_hash not in page
    assert admin_client.get("/admin/agents/apikey/add/").status_code == 403


def test_the_api_key_admin_revokes_through_the_audited_service(admin_client: Client) -> None:
    from agents.access.services import api_key_create

    keep = api_key_create(name="keep", scopes=["read"]).api_key
    leak = api_key_create(name="leak", scopes=["read"]).api_key
    response = admin_client.post(
        "/admin/agents/apikey/",
        {"action": "revoke", "_selected_action": [leak.pk]},
        follow=True,
    )
    assert "Revoked 1 API key(s)" in response.content.decode()
    leak.refresh_from_db()
    keep.refresh_from_db()
    assert leak.revoked_at is not None
    assert keep.revoked_at is None
    event = AuditEvent.objects.get(action="apikey_revoke")
    assert (event.actor, event.target_id) == ("user:admin", leak.prefix)
    assert event.reason == "revoked in the admin"


def test_the_api_key_admin_does_not_take_a_typed_revocation_date(admin_client: Client) -> None:
    from agents.access.services import api_key_create

    key = api_key_create(name="k", scopes=["read"]).api_key
    page = admin_client.get(f"/admin/agents/apikey/{key.pk}/change/").content.decode()
    assert 'name="revoked_at' not in page  # read-only: revoking is the audited action


def test_executions_are_read_only_in_the_admin(admin_client: Client) -> None:
    execution = Execution.objects.create(agent_name="support", status="succeeded")
    url = f"/admin/agents/execution/{execution.pk}/change/"
    assert admin_client.get(url).status_code == 200
    admin_client.post(url, {"agent_name": "tampered", "status": "failed"})
    execution.refresh_from_db()
    assert execution.agent_name == "support"


def test_the_audit_trail_cannot_be_edited_in_the_admin(admin_client: Client) -> None:
    from core.audit import audit_record

    event = audit_record(actor="user:a", action="agent_update", target_type="agent", target_id="x")
    assert admin_client.get("/admin/console/auditevent/add/").status_code == 403
    assert admin_client.get(f"/admin/console/auditevent/{event.pk}/delete/").status_code == 403
    assert admin_client.get(f"/admin/console/auditevent/{event.pk}/change/").status_code == 200


# --- every write through the services ----------------------------------------------------------

AGENTS = "/admin/agents/agent/"
DEPLOYMENTS = "/admin/agents/modeldeployment/"
DOC = """
providers: [{name: sim, kind: simulated}]
models:
  - {name: m, provider: sim, upstream_model: u, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: m2, provider: sim, upstream_model: u2, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents: [{name: support, model: m, daily_budget_usd: 5}]
"""


@pytest.fixture
def config() -> None:
    from agents.config.apply import config_apply, config_parse

    config_apply(document=config_parse(DOC))


def _events_since(count: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("id")[count:])


def _agent_form(**overrides: Any) -> dict[str, Any]:
    """Every field of the agent form, as the admin posts it (defaults of a new agent)."""
    form = {
        "name": "helper",
        "description": "",
        "model": "m",
        "fallback_models": "[]",
        "cheap_model": "",
        "system_prompt": "",
        "timeout_s": "30",
        "attempt_timeout_s": "",
        "max_retries": "3",
        "max_tokens": "1024",
        "breaker_failure_threshold": "5",
        "breaker_recovery_timeout_s": "60",
        "breaker_half_open_max_calls": "1",
        "breaker_window_size": "20",
        "breaker_minimum_calls": "10",
        "breaker_failure_rate": "0.5",
        "breaker_slow_call_s": "",
        "breaker_slow_call_rate": "1",
        "rate_limit_rpm": "",
        "rate_limit_tpm": "",
        "cache_ttl_s": "0",
        "tools": "[]",
        "fallback_messages": "{}",
        "slo_availability": "0.999",
        "slo_latency_ms": "2000",
        "slo_latency_quantile": "0.95",
        "queue": "default",
        "enabled": "on",
        "daily_budget_usd": "",
    }
    return form | overrides


def _form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code
    return {
        name: [str(message) for message in messages]
        for name, messages in response.context["adminform"].form.errors.items()
    }


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("model", "nope", "model: unknown model 'nope'"),
        ("timeout_s", "0.01", "timeout_s: must be >= 0.1"),
        ("breaker_failure_rate", "0.0001", "breaker.failure_rate_threshold: must be >= 0.001"),
        ("fallback_messages", '{"nonsense": "x"}', "fallback_messages"),
        ("slo_availability", "1", "slo.availability: must be <= 0.99999"),
        ("slo_latency_quantile", "0.3", "slo.latency_quantile: must be >= 0.5"),
        ("queue", "unacked", "queue: 'unacked' is a name Celery's Redis transport uses"),
    ],
)
def test_adding_an_agent_the_service_refuses_names_the_field_and_writes_nothing(
    admin_client: Client, config: None, field: str, value: str, error: str
) -> None:
    audited = AuditEvent.objects.count()
    errors = _form_errors(admin_client.post(f"{AGENTS}add/", _agent_form(**{field: value})))
    assert list(errors) == [field]
    assert errors[field][0].startswith(error)
    assert not Agent.objects.filter(name="helper").exists()
    assert AuditEvent.objects.count() == audited


def test_adding_an_agent_whose_name_is_taken_is_refused(admin_client: Client, config: None) -> None:
    errors = _form_errors(admin_client.post(f"{AGENTS}add/", _agent_form(name="support")))
    assert errors == {"__all__": ["agent 'support' already exists"]}


def test_adding_an_agent_lands_one_audit_event_by_the_admin_user(
    admin_client: Client, config: None
) -> None:
    audited = AuditEvent.objects.count()
    response = admin_client.post(f"{AGENTS}add/", _agent_form(timeout_s="12.5"))
    assert response.status_code == 302, _form_errors(response)
    agent = Agent.objects.get(name="helper")
    assert agent.timeout_s == 12.5
    [event] = _events_since(audited)
    assert (event.action, event.actor, event.target_id) == (
        "agent_create",
        "user:admin",
        str(agent.pk),
    )
    assert (event.after or {})["timeout_s"] == 12.5
    assert response["Location"] == f"{AGENTS}"


def test_changing_an_agent_lands_exactly_one_audit_event_with_before_and_after(
    admin_client: Client, config: None
) -> None:
    agent = Agent.objects.get(name="support")
    audited = AuditEvent.objects.count()
    form = _agent_form(timeout_s="45", daily_budget_usd="5")
    response = admin_client.post(f"{AGENTS}{agent.pk}/change/", form)
    assert response.status_code == 302, _form_errors(response)
    [event] = _events_since(audited)
    assert (event.action, event.actor) == ("agent_update", "user:admin")
    assert (event.before, event.after) == ({"timeout_s": 30.0}, {"timeout_s": 45.0})
    assert Agent.objects.get(pk=agent.pk).timeout_s == 45


def test_saving_an_agent_unchanged_writes_and_audits_nothing(
    admin_client: Client, config: None
) -> None:
    agent = Agent.objects.get(name="support")
    audited = AuditEvent.objects.count()
    response = admin_client.post(f"{AGENTS}{agent.pk}/change/", _agent_form(daily_budget_usd="5"))
    assert response.status_code == 302, _form_errors(response)
    assert _events_since(audited) == []
    assert Agent.objects.get(pk=agent.pk).updated_at == agent.updated_at


def test_an_agent_change_the_service_refuses_leaves_the_agent_as_it_was(
    admin_client: Client, config: None
) -> None:
    agent = Agent.objects.get(name="support")
    audited = AuditEvent.objects.count()
    form = _agent_form(fallback_models='["m2", "gone"]', daily_budget_usd="5")
    errors = _form_errors(admin_client.post(f"{AGENTS}{agent.pk}/change/", form))
    assert errors == {"fallback_models": ["fallback_models[1]: unknown model 'gone'"]}
    assert Agent.objects.get(pk=agent.pk).fallback_models == []
    assert AuditEvent.objects.count() == audited


def test_clearing_an_agents_daily_budget_and_fallback_messages_in_the_admin_removes_them(
    admin_client: Client, config: None
) -> None:
    from agents.services import agent_update
    from budgets.models import Budget

    agent_update(name="support", patch={"fallback_messages": {"timeout": "later"}}, actor="t")
    agent = Agent.objects.get(name="support")
    response = admin_client.post(f"{AGENTS}{agent.pk}/change/", _agent_form())
    assert response.status_code == 302, _form_errors(response)
    assert Agent.objects.get(pk=agent.pk).fallback_messages == {}
    assert not Budget.objects.filter(agent=agent).exists()


def test_an_agents_name_cannot_be_changed_in_the_admin(admin_client: Client, config: None) -> None:
    agent = Agent.objects.get(name="support")
    form = _agent_form(name="renamed", daily_budget_usd="5")
    assert admin_client.post(f"{AGENTS}{agent.pk}/change/", form).status_code == 302
    assert Agent.objects.get(pk=agent.pk).name == "support"


def test_deleting_an_agent_in_the_admin_is_the_services_delete_audited(
    admin_client: Client, config: None
) -> None:
    agent = Agent.objects.get(name="support")
    audited = AuditEvent.objects.count()
    page = admin_client.get(f"{AGENTS}{agent.pk}/delete/")
    assert page.status_code == 200
    assert "Are you sure" in page.content.decode()  # budgets are read-only, yet go with it
    response = admin_client.post(f"{AGENTS}{agent.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Agent.objects.filter(pk=agent.pk).exists()
    events = _events_since(audited)
    assert [(e.action, e.actor) for e in events] == [
        ("budget_delete", "user:admin"),
        ("agent_delete", "user:admin"),
    ]
    assert (events[1].before or {})["model"] == "m"


def test_deleting_an_agent_a_key_is_restricted_to_is_refused_as_the_api_refuses_it(
    admin_client: Client, config: None
) -> None:
    from agents.access.services import api_key_create

    key = api_key_create(name="only", scopes=["execute"], agents=["support"]).api_key
    agent = Agent.objects.get(name="support")
    audited = AuditEvent.objects.count()
    response = admin_client.post(f"{AGENTS}{agent.pk}/delete/", {"post": "yes"}, follow=True)
    page = response.content.decode()
    assert f"API keys {key.prefix} may use only agent &#x27;support&#x27;" in page
    assert response.redirect_chain[-1][0] == f"{AGENTS}{agent.pk}/change/"
    assert Agent.objects.filter(pk=agent.pk).exists()
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None  # not revoked behind the refusal
    assert AuditEvent.objects.count() == audited
    assert not LogEntry.objects.exists()  # the admin's own log rolled back with it


def test_the_agent_list_has_no_bulk_delete(admin_client: Client, config: None) -> None:
    agent = Agent.objects.get(name="support")
    assert "delete_selected" not in admin_client.get(AGENTS).content.decode()
    form = {"action": "delete_selected", "_selected_action": [agent.pk], "post": "yes"}
    admin_client.post(AGENTS, form)
    assert Agent.objects.filter(pk=agent.pk).exists()


def test_changing_a_provider_lands_one_audit_event_with_before_and_after(
    admin_client: Client, stored: Provider
) -> None:
    audited = AuditEvent.objects.count()
    form = _form(name=stored.name, kind="anthropic", base_url="https://y.example")
    assert admin_client.post(f"{PROVIDERS}{stored.pk}/change/", form).status_code == 302
    [event] = _events_since(audited)
    assert (event.action, event.actor, event.target_id) == (
        "provider_update",
        "user:admin",
        str(stored.pk),
    )
    assert (event.before, event.after) == (
        {"base_url": "https://x.example"},
        {"base_url": "https://y.example"},
    )


def test_a_provider_apply_would_refuse_is_refused_in_the_admin(
    admin_client: Client, keys: None
) -> None:
    form = _form(simulation='{"latency_ms": 5}')
    errors = _form_errors(admin_client.post(f"{PROVIDERS}add/", form))
    assert errors == {"simulation": ["simulation: only allowed for kind simulated"]}
    form = _form(name="sim", kind="simulated", base_url="", simulation='{"error_rate": 2}')
    errors = _form_errors(admin_client.post(f"{PROVIDERS}add/", form))
    assert errors == {"simulation": ["simulation.error_rate: must be <= 1"]}
    assert not Provider.objects.exists()
    assert not AuditEvent.objects.exists()


def test_providers_and_deployments_cannot_be_deleted_in_the_admin(
    admin_client: Client, config: None
) -> None:
    provider = Provider.objects.get(name="sim")
    deployment = ModelDeployment.objects.get(name="m2")
    for url in (f"{PROVIDERS}{provider.pk}/delete/", f"{DEPLOYMENTS}{deployment.pk}/delete/"):
        assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert ModelDeployment.objects.filter(pk=deployment.pk).exists()


def _deployment_form(deployment: ModelDeployment, **overrides: Any) -> dict[str, Any]:
    return {
        "input_usd_per_mtok": str(deployment.input_usd_per_mtok or ""),
        "output_usd_per_mtok": str(deployment.output_usd_per_mtok or ""),
        "cached_input_usd_per_mtok": "",
        "max_concurrency": str(deployment.max_concurrency),
        "weight": str(deployment.weight),
        "enabled": "on",
    } | overrides


def test_changing_a_deployment_lands_one_audit_event_with_before_and_after(
    admin_client: Client, config: None
) -> None:
    deployment = ModelDeployment.objects.get(name="m")
    audited = AuditEvent.objects.count()
    form = _deployment_form(deployment, weight="3")
    response = admin_client.post(f"{DEPLOYMENTS}{deployment.pk}/change/", form)
    assert response.status_code == 302, _form_errors(response)
    [event] = _events_since(audited)
    assert (event.action, event.actor) == ("modeldeployment_update", "user:admin")
    assert (event.before, event.after) == ({"weight": 1}, {"weight": 3})


def test_unpricing_a_deployment_an_agent_under_a_budget_calls_is_refused(
    admin_client: Client, config: None
) -> None:
    deployment = ModelDeployment.objects.get(name="m")
    audited = AuditEvent.objects.count()
    form = _deployment_form(deployment, input_usd_per_mtok="", output_usd_per_mtok="")
    errors = _form_errors(admin_client.post(f"{DEPLOYMENTS}{deployment.pk}/change/", form))
    assert errors["__all__"][0].startswith("model 'm' has no price")
    assert "agent 'support' is under its daily budget" in errors["__all__"][0]
    assert ModelDeployment.objects.get(pk=deployment.pk).input_usd_per_mtok == 1
    assert AuditEvent.objects.count() == audited


def test_adding_a_deployment_that_exists_is_refused_not_merged(
    admin_client: Client, config: None
) -> None:
    deployment = ModelDeployment.objects.get(name="m")
    form = _deployment_form(deployment, weight="9") | {
        "name": "m",
        "provider": str(deployment.provider_id),
        "upstream_model": "u",
    }
    errors = _form_errors(admin_client.post(f"{DEPLOYMENTS}add/", form))
    assert "__all__" in errors
    assert ModelDeployment.objects.get(pk=deployment.pk).weight == 1


def test_api_keys_and_executions_are_read_only_in_the_admin(
    admin_client: Client, config: None
) -> None:
    from agents.access.services import api_key_create

    key = api_key_create(name="k", scopes=["read"]).api_key
    execution = Execution.objects.create(agent_name="support", status="succeeded")
    change = {"name": "renamed", "scopes": "admin", "agents": []}
    assert admin_client.post(f"/admin/agents/apikey/{key.pk}/change/", change).status_code == 403
    assert (
        admin_client.post(f"/admin/agents/apikey/{key.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert admin_client.get("/admin/agents/execution/add/").status_code == 403
    url = f"/admin/agents/execution/{execution.pk}/delete/"
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    key.refresh_from_db()
    assert (key.name, key.scopes) == ("k", "read")
    assert Execution.objects.filter(pk=execution.pk).exists()
