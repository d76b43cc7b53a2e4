"""agents/config/live.py: the in-memory config snapshot follows the database's version."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from agents.config.live import LiveConfig, config_version_bump, config_version_current
from tests.asgi_client import Answer, asgi_request

pytestmark = pytest.mark.django_db(transaction=True)


def _bump() -> None:
    with transaction.atomic():
        config_version_bump()


async def test_the_watcher_reloads_and_tells_its_engine_when_the_version_moves() -> None:
    config = LiveConfig()
    await asyncio.to_thread(config.reload_in_thread)
    changed = asyncio.Event()
    watcher = asyncio.create_task(config.watch(interval_s=0.05, on_change=changed.set))
    try:
        await asyncio.sleep(0.2)
        assert not changed.is_set()  # nothing moved: nothing reloaded
        await sync_to_async(_bump)()
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert config.snapshot.version == await sync_to_async(config_version_current)()
    finally:
        watcher.cancel()


# --- one bad object does not freeze the reloads (issue 10, point 10) ---------------------------

DOC = """
providers:
  - {name: vault, kind: openai, base_url: "http://127.0.0.1:9/v1"}
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: locked-m, provider: vault, upstream_model: gpt-x}
  - {name: free-m, provider: sim, upstream_model: s-1}
agents:
  - {name: locked, model: locked-m}
  - {name: free, model: free-m}
  - {name: mixed, model: locked-m, fallback_models: [free-m]}
"""
CHAT = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}'


def _world() -> dict[str, str]:
    from agents.access.services import api_key_create, provider_secret_set
    from agents.config.apply import config_apply, config_parse

    config_apply(document=config_parse(DOC))
    provider_secret_set(provider_name="vault", secret="sk-stored-in-the-database")
    return {
        "victim": api_key_create(name="victim", scopes=["execute"]).plaintext,
        "other": api_key_create(name="other", scopes=["execute"]).plaintext,
    }


@pytest.fixture
async def world(settings: Any, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The stored secret was encrypted with a key this process no longer has."""
    from agents.access.crypto import generate_key
    from agents.engine import engine_shutdown

    settings.VAR_DIR = tmp_path
    settings.BREAKWATER_ENCRYPTION_KEYS = [generate_key()]
    keys = await sync_to_async(_world)()
    settings.BREAKWATER_ENCRYPTION_KEYS = []  # unset: the secret cannot be decrypted
    yield keys
    await engine_shutdown()


async def _post(path: str, key: str, body: bytes) -> Answer:
    from console.asgi import application

    headers = [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json")]
    return await asgi_request(application, "POST", path, headers=headers, body=body)


async def test_a_revocation_is_in_force_while_a_providers_secret_cannot_be_decrypted(
    world: dict[str, str],
) -> None:
    from agents.access.services import api_key_revoke
    from agents.engine import get_engine
    from agents.models import ApiKey

    engine = get_engine()
    await engine.start()  # loads the config and polls its version every second
    victim = world["victim"]
    assert (await _post("/v1/chat/completions", victim, CHAT % b"free")).status_code == 200
    key_id = await sync_to_async(lambda: ApiKey.objects.get(name="victim").pk)()
    # Revoked elsewhere (another process, the CLI): this engine learns it from its poll.
    await sync_to_async(api_key_revoke)(key_id=key_id, actor="test", reason="leaked")
    revoked_at = time.monotonic()
    while (await _post("/v1/chat/completions", victim, CHAT % b"free")).status_code != 401:
        # One poll interval (1 s), with generous slack for a loaded machine; before the fix
        # every reload failed and the key was answered for as long as anyone watched.
        assert time.monotonic() - revoked_at < 1.0 + 9.0, "the revoked key is still answered"
        await asyncio.sleep(0.05)
    # The other key, and the agents that do not need the broken provider, work as before.
    assert (await _post("/v1/chat/completions", world["other"], CHAT % b"free")).status_code == 200
    mixed = await _post("/v1/chat/completions", world["other"], CHAT % b"mixed")
    assert mixed.status_code == 200  # its fallback is on a provider that works


async def test_the_providers_agents_answer_a_clear_error_on_every_door(
    world: dict[str, str],
) -> None:
    from agents.engine import get_engine
    from agents.models import Execution

    await sync_to_async(get_engine().config.reload)()
    chat = await _post("/v1/chat/completions", world["other"], CHAT % b"locked")
    assert chat.status_code == 503
    error = chat.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "agent_unavailable")
    assert "provider 'vault'" in error["message"]
    assert "cannot be decrypted" in error["message"]
    assert "BREAKWATER_ENCRYPTION_KEYS" in error["message"]
    assert "sk-stored" not in chat.content.decode()
    for path in ("/api/v1/agents/locked/execute", "/api/v1/agents/locked/executions"):
        answer = await _post(path, world["other"], b'{"input": "hi"}')
        assert answer.status_code == 503, (path, answer.content)
        assert answer.json()["error"]["type"] == "agent_unavailable"
        assert "provider 'vault'" in answer.json()["error"]["message"]
    # Refused before anything was stored or reserved.
    assert await sync_to_async(Execution.objects.filter(agent_name="locked").count)() == 0


async def test_an_incident_is_opened_for_the_provider_and_resolved_when_it_decrypts_again(
    world: dict[str, str], settings: Any
) -> None:
    from agents.access.crypto import generate_key
    from agents.access.services import provider_secret_set
    from agents.engine import get_engine
    from incidents.models import Incident

    config = get_engine().config
    await sync_to_async(config.reload)()
    await sync_to_async(config.reload)(force=True)  # a second process, or a second reload
    incidents = await sync_to_async(lambda: list(Incident.objects.filter(kind="provider_secret")))()
    assert len(incidents) == 1  # one per provider, whoever reloads how often
    incident = incidents[0]
    assert incident.dedup_key == "provider_secret:vault"
    assert incident.status == "open"
    assert "vault" in incident.title
    # The operator fixes it: keys back and the secret stored again under them.
    settings.BREAKWATER_ENCRYPTION_KEYS = [generate_key()]
    await sync_to_async(provider_secret_set)(provider_name="vault", secret="sk-new")
    await sync_to_async(config.reload)()
    assert config.unavailable("locked") is None
    assert config.deployments("locked-m")
    await sync_to_async(incident.refresh_from_db)()
    assert incident.status == "resolved"


async def test_an_agent_whose_row_cannot_be_read_is_refused_and_the_rest_loads(
    world: dict[str, str], settings: Any
) -> None:
    from agents.engine import get_engine
    from agents.models import Agent

    settings.BREAKWATER_ENCRYPTION_KEYS = []
    # A tool without a name: agent_config cannot build it (a row written around the checks).
    await sync_to_async(Agent.objects.filter(name="free").update)(tools=[{"kind": "python"}])
    config = get_engine().config
    await sync_to_async(config.reload)()
    assert config.agent("mixed") is not None
    problem = config.unavailable("free")
    assert problem is not None
    assert "configuration cannot be loaded" in problem
    answer = await _post("/api/v1/agents/free/execute", world["other"], b'{"input": "hi"}')
    assert answer.status_code == 503


async def test_the_keys_reload_even_when_the_rest_of_the_build_fails(
    world: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import agents.config.live
    from agents.access.services import api_key_revoke
    from agents.models import ApiKey
    from budgets.models import Budget

    config = LiveConfig()
    await sync_to_async(config.reload)()
    loaded = config.snapshot.version
    assert config.key(world["victim"][:11]) is not None

    def unreadable(budget: object) -> None:
        raise RuntimeError("an unforeseen bad row")

    # A budget row the build cannot read (a fault injected where nothing is isolated).
    monkeypatch.setattr(agents.config.live, "budget_rule", unreadable)
    await sync_to_async(Budget.objects.create)(scope="global", window="daily", limit_usd=1)
    key_id = await sync_to_async(lambda: ApiKey.objects.get(name="victim").pk)()
    await sync_to_async(api_key_revoke)(key_id=key_id, actor="test")
    assert await sync_to_async(config.reload)() is True
    assert config.key(world["victim"][:11]) is None  # the revocation is in force
    assert config.key(world["other"][:11]) is not None
    assert config.agent("free") is not None  # the rest is the last good config
    assert config.snapshot.version == loaded  # and the next poll tries the whole build again


# --- config reload incidents -------------------------------------------------------------------

SIMPLE = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: free-m, provider: sim, upstream_model: s-1}
agents:
  - {name: free, model: free-m}
"""


def _reload_incident() -> Any:
    from incidents.models import Incident

    return Incident.objects.get(dedup_key="config:reload")


def _break_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.config.live
    from budgets.models import Budget

    def unreadable(budget: object) -> None:
        raise RuntimeError("an unforeseen bad row")

    monkeypatch.setattr(agents.config.live, "budget_rule", unreadable)
    Budget.objects.create(scope="global", window="daily", limit_usd=1)  # bumps the version


def test_a_failed_reload_opens_one_config_incident_and_the_next_complete_one_resolves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agents.config.apply import config_apply, config_parse

    config_apply(document=config_parse(SIMPLE))
    config = LiveConfig()
    config.reload()
    serving = config.snapshot.version
    _break_the_build(monkeypatch)
    failing = config_version_current()

    for _ in range(3):  # each poll tries again; the incident hears of the version once
        config.reload()
    LiveConfig().reload()  # another process fails on it too: one incident, one more entry

    incident = _reload_incident()
    assert incident.kind == "config_reload"
    assert incident.status == "open"
    assert incident.title == f"Config reload failed: version {failing}"
    opened, recurred = incident.events.all()
    assert (opened.kind, recurred.kind) == ("opened", "recurred")
    assert "the build failed (RuntimeError: an unforeseen bad row)" in opened.message
    assert f"still serving v{serving}" in opened.message
    assert opened.data["version"] == failing
    assert opened.data["serving_version"] == serving

    monkeypatch.undo()  # the row is fixed
    config.reload()
    incident.refresh_from_db()
    assert incident.status == "resolved"
    assert incident.events.last().message.endswith(f"loaded config v{failing} completely")


def test_a_healthy_process_loading_the_version_another_failed_on_leaves_that_report_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agents.config.apply import config_apply, config_parse

    config_apply(document=config_parse(SIMPLE))
    failed = LiveConfig()
    _break_the_build(monkeypatch)
    failed.reload()
    monkeypatch.undo()  # only that process could not build it (its environment, say)

    LiveConfig().reload()  # a new process loads the same version fine
    assert _reload_incident().status == "open"

    failed.reload()  # the process that failed loads it now
    assert _reload_incident().status == "resolved"


def test_an_agent_left_out_of_a_reload_opens_the_config_incident_naming_it() -> None:
    from agents.config.apply import config_apply, config_parse
    from agents.models import Agent

    config_apply(document=config_parse(SIMPLE))
    Agent.objects.filter(name="free").update(tools=[{"kind": "python"}])  # unreadable row
    _bump()
    config = LiveConfig()
    config.reload()

    incident = _reload_incident()
    assert "agent free left out: agent 'free' is unavailable" in incident.events.get().message

    Agent.objects.filter(name="free").update(tools=[])
    _bump()
    config.reload()
    assert _reload_incident().status == "resolved"


def test_a_restarted_process_loading_the_version_its_predecessor_failed_on_resolves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import subprocess
    import sys

    import agents.config.live
    from agents.config.apply import config_apply, config_parse

    config_apply(document=config_parse(SIMPLE))
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    predecessor = f"{socket.gethostname()}:{finished.stdout.strip()}"  # a pid that is gone
    _break_the_build(monkeypatch)
    monkeypatch.setattr(agents.config.live, "_process", lambda: predecessor)
    LiveConfig().reload()
    monkeypatch.undo()

    LiveConfig().reload()  # its successor, same version

    assert _reload_incident().status == "resolved"


def test_the_snapshot_carries_each_agents_queue_and_cap() -> None:
    from agents.config.apply import config_apply, config_parse

    config_apply(
        document=config_parse(
            "providers: [{name: sim, kind: simulated}]\n"
            "models: [{name: m, provider: sim, upstream_model: m-1}]\n"
            "agents: [{name: plain, model: m},"
            " {name: pooled, model: m, queue: heavy, max_concurrency: 3}]\n"
        )
    )
    config = LiveConfig()
    config.reload_in_thread()
    assert (config.queue("plain"), config.queue("pooled"), config.queue("gone")) == (
        "default",
        "heavy",
        "default",
    )
    plain, pooled = config.agent("plain"), config.agent("pooled")
    assert plain is not None
    assert pooled is not None
    assert (plain.max_concurrency, pooled.max_concurrency) == (None, 3)
