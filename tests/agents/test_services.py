"""Writes for API keys, provider secrets and stale executions."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from pytest_django.fixtures import Settings

from agents.access.crypto import generate_key
from agents.access.keys import looks_like_key, verify_key
from agents.access.services import api_key_create, provider_secret_set
from agents.executions.queue import executions_reap_stale
from agents.models import Agent, ApiKey, Execution, Provider
from core.errors import NotFound, ValidationFailed

pytestmark = pytest.mark.django_db


# --- executions_reap_stale -----------------------------------------------------------------


@pytest.fixture
def now() -> datetime:
    return timezone.now()


def _execution(status: str, age_s: float, now: datetime) -> Execution:
    return Execution.objects.create(
        agent_name="support", status=status, created_at=now - timedelta(seconds=age_s)
    )


def test_reaping_fails_only_stale_running_executions_once(
    settings: Settings, now: datetime
) -> None:
    settings.BREAKWATER_STALE_EXECUTION_S = 3900
    stale = _execution("running", 3901, now)
    fresh = _execution("running", 3899, now)
    old_queued = _execution("queued", 10_000, now)
    old_done = _execution("succeeded", 10_000, now)

    assert executions_reap_stale(now=now) == 1
    assert executions_reap_stale(now=now) == 0

    stale.refresh_from_db()
    assert stale.status == "failed"
    assert stale.finished_at == now
    assert stale.error == {
        "type": "worker_lost",
        "message": "the process running this execution died",
    }
    for untouched, status in ((fresh, "running"), (old_queued, "queued"), (old_done, "succeeded")):
        untouched.refresh_from_db()
        assert untouched.status == status
        assert untouched.finished_at is None
        assert untouched.error is None


def test_a_running_execution_becomes_stale_as_time_passes(
    settings: Settings, now: datetime
) -> None:
    settings.BREAKWATER_STALE_EXECUTION_S = 60
    execution = _execution("running", 30, now)
    assert executions_reap_stale(now=now) == 0
    assert executions_reap_stale(now=now + timedelta(seconds=31)) == 1
    execution.refresh_from_db()
    assert execution.status == "failed"


def test_reaping_defaults_to_the_current_time(settings: Settings, now: datetime) -> None:
    settings.BREAKWATER_STALE_EXECUTION_S = 60
    _execution("running", 120, now)
    assert executions_reap_stale() == 1


def test_the_reaper_task_runs_the_service(settings: Settings, now: datetime) -> None:
    from agents.tasks import executions_reap_stale as task

    settings.BREAKWATER_STALE_EXECUTION_S = 60
    _execution("running", 120, now)
    assert task() == 1
    assert task() == 0


# --- api_key_create ------------------------------------------------------------------------


def test_api_key_create_returns_the_plaintext_and_stores_the_hash() -> None:
    Agent.objects.create(name="support", model="gpt-4o-mini")
    created = api_key_create(name=" bot ", scopes=["admin", "read"], agents=["support"])
    assert looks_like_key(created.plaintext)
    key = ApiKey.objects.get()
    assert key.name == "bot"
    assert key.scopes == "read,admin"
    assert verify_key(created.plaintext, key.secret_hash)
    assert [agent.name for agent in key.agents.all()] == ["support"]


def test_api_key_create_accepts_one_shot_iterables() -> None:
    created = api_key_create(name="bot", scopes=iter(["execute", "read", "execute"]))
    assert created.api_key.scopes == "read,execute"


def test_api_key_create_rejects_an_unknown_scope_from_an_iterator() -> None:
    with pytest.raises(ValidationFailed) as info:
        api_key_create(name="bot", scopes=(scope for scope in ["read", "root"]))
    assert info.value.errors == [
        "scopes: unknown scope 'root'; expected read, execute, operate, admin"
    ]
    assert info.value.status == 422
    assert not ApiKey.objects.exists()


def test_api_key_create_requires_a_scope() -> None:
    with pytest.raises(ValidationFailed, match="at least one scope is required"):
        api_key_create(name="bot", scopes=[])


# --- provider_secret_set -------------------------------------------------------------------


def test_provider_secret_set_refuses_a_blank_secret(settings: Settings) -> None:
    settings.BREAKWATER_ENCRYPTION_KEYS = [generate_key()]
    Provider.objects.create(name="sim", kind="simulated")
    with pytest.raises(ValidationFailed, match="secret: must not be empty"):
        provider_secret_set(provider_name="sim", secret="  \n")
    assert Provider.objects.get(name="sim").api_key_encrypted == ""


def test_provider_secret_set_for_an_unknown_provider_is_not_found(settings: Settings) -> None:
    settings.BREAKWATER_ENCRYPTION_KEYS = [generate_key()]
    with pytest.raises(NotFound, match="provider 'ghost' does not exist") as info:
        provider_secret_set(provider_name="ghost", secret="sk-abc")
    assert info.value.status == 404
