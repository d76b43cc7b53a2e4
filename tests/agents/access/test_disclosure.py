"""Provider error text stays inside: execute-scoped callers see a typed summary of a failed
attempt, operate and admin keys (and the record, and the log) the provider's words. Every door:
the execute response (lean door and ninja route), ``GET /executions/{id}`` and the list, the
execution socket, ``/v1``. Upstreams are real HTTP servers: fakellm refusing our provider key
(401), and a scripted server answering a 400 whose text names an organisation and echoes
secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections

from agents.access.disclosure import (
    attempt_summary,
    redact_secrets,
    render_error,
    render_execution,
    sees_provider_text,
)
from agents.access.keys import generate_key
from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.devtools.fakellm import FakeLLM, FaultConfig
from agents.engine import engine_shutdown, get_engine
from agents.models import Execution
from tests.asgi_client import Answer, asgi_request

pytestmark = pytest.mark.django_db(transaction=True)

PROVIDER_TEXT = "Incorrect API key provided."
LEAKED_KEY = generate_key().plaintext
CLIENT_ERROR = (
    "This model's maximum context length is 8192 tokens (organization org-Zx81); "
    f"request had Authorization: Bearer sk-proj-abcdef1234567890 and {LEAKED_KEY}"
)

DOC = """
providers:
  - {{name: fake, kind: openai, base_url: "{fake}/v1"}}
  - {{name: picky, kind: openai, base_url: "{picky}/v1"}}
models:
  - {{name: m, provider: fake, upstream_model: gpt-4o-mini,
     input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
  - {{name: p, provider: picky, upstream_model: gpt-4o-mini,
     input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
agents:
  - {{name: locked, model: m, max_retries: 0, max_tokens: 64}}
  - {{name: picky, model: p, max_retries: 0, max_tokens: 64}}
"""


async def _picky(request: web.Request) -> web.Response:
    """An upstream that refuses every request as the caller's fault, in its own words."""
    await request.read()
    body = {"error": {"message": CLIENT_ERROR, "type": "invalid_request_error", "code": None}}
    return web.json_response(body, status=400)


@dataclass
class World:
    keys: dict[str, str]


def _setup(fake: str, picky: str) -> World:
    config_apply(document=config_parse(DOC.format(fake=fake, picky=picky)))
    scopes = {
        "execute": ["execute"],
        "reader": ["execute", "read"],
        "operate": ["execute", "operate"],
        "admin": ["admin"],
    }
    return World(
        {
            name: api_key_create(name=name, scopes=wanted).plaintext
            for name, wanted in scopes.items()
        }
    )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    from tests.agents.api.test_queued import drain_journal

    app = web.Application()
    app.router.add_post("/v1/chat/completions", _picky)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    # fakellm wants a key our provider does not have: every call is a 401 in OpenAI's words.
    async with FakeLLM(FaultConfig(api_key="sk-the-right-one")) as fake:
        created = await sync_to_async(_setup)(fake.url, f"http://127.0.0.1:{port}")
        engine = get_engine()
        await sync_to_async(engine.config.reload)()
        try:
            yield created
        finally:
            await engine_shutdown()
            await drain_journal()
            await runner.cleanup()
            await sync_to_async(connections.close_all)()


async def _call(app: Any, key: str, method: str, path: str, body: Any = None) -> Answer:
    headers = [("authorization", f"Bearer {key}"), ("content-type", "application/json")]
    raw = b"" if body is None else json.dumps(body).encode()
    return await asgi_request(app, method, path, headers=headers, body=raw)


async def lean(key: str, method: str, path: str, body: Any = None) -> Answer:
    from console.asgi import application

    return await _call(application, key, method, path, body)


async def ninja(key: str, method: str, path: str, body: Any = None) -> Answer:
    from console.asgi import django_asgi_app

    return await _call(django_asgi_app, key, method, path, body)


async def _closed_breakers() -> None:
    """Every call here fails: keep the breakers from opening (the state outlives tests)."""
    from agents.models import ModelDeployment
    from agents.runtime.state import agent_breaker_key, deployment_breaker_key

    state = get_engine().state
    for name in ("locked", "picky"):
        await state.breaker_command(agent_breaker_key(name), "reset")
    async for deployment in ModelDeployment.objects.all():
        await state.breaker_command(deployment_breaker_key(deployment.pk), "reset")


async def _execute(door: Any, key: str, agent: str = "locked") -> dict[str, Any]:
    await _closed_breakers()
    answer = await door(key, "POST", f"/api/v1/agents/{agent}/execute", {"input": "hi"})
    assert answer.status_code == 200, answer.content
    result: dict[str, Any] = answer.json()
    return result


def _failed_attempts(result: dict[str, Any]) -> list[str]:
    return [s["detail"] for s in result["steps"] if s["kind"] == "attempt"]


# --- the renderer ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "detail", "summary"),
    [
        ("AuthFailed", "401 Incorrect API key provided.", "provider error 401 (authentication)"),
        ("RateLimited", "429 Rate limit reached for org-1", "provider error 429 (rate limited)"),
        ("Capacity", "529 Overloaded", "provider error 529 (overloaded)"),
        ("QuotaExhausted", "429 You exceeded your quota", "provider error 429 (quota exhausted)"),
        ("ClientError", "400 maximum context length", "provider error 400 (invalid request)"),
        ("ProviderError", "500 The server had an error", "provider error 500 (upstream error)"),
        ("Timeout", "504 Gateway Timeout", "provider error 504 (timeout)"),
        ("Timeout", "no answer within 4.000s (first_token)", "upstream timeout"),
        ("Timeout", "timeout: Connection timeout to host", "upstream timeout"),
        ("ProviderError", "malformed response: missing 'choices'", "upstream error (malformed response)"),
        ("ProviderError", "transport error: ClientConnectorError: 10.0.0.7:443", "upstream error (connection failed)"),
        ("ProviderError", "stream error: internal detail", "upstream error (stream error)"),
        ("RateLimited", "stream error: slow down, org-1", "provider error (rate limited, stream error)"),
        ("SomethingNew", "whatever the provider said", "upstream error"),
    ],
)  # fmt: skip
def test_a_failed_attempt_is_summarized_by_type_and_status(
    outcome: str, detail: str, summary: str
) -> None:
    assert attempt_summary(outcome, detail) == summary


def test_only_operate_admin_and_console_users_read_provider_text() -> None:
    assert sees_provider_text(None)  # a console user
    assert sees_provider_text(frozenset({"operate"}))
    assert sees_provider_text(frozenset({"admin"}))
    assert not sees_provider_text(frozenset({"execute"}))
    assert not sees_provider_text(frozenset({"execute", "read"}))


def test_a_result_with_nothing_to_hide_is_returned_as_it_is() -> None:
    result = {
        "steps": [
            {"kind": "cache", "outcome": "hit", "detail": "saved 0.1 USD"},
            {"kind": "attempt", "outcome": "ok", "detail": ""},
            {"kind": "refused", "outcome": "circuit_open", "detail": "agent breaker open"},
            {"kind": "tool", "outcome": "ok", "detail": "current_time"},
        ],
        "error": {"type": "budget_exceeded", "message": "no price for m"},
    }
    assert render_execution(result, full=False) is result


def test_tool_failures_and_internal_errors_keep_their_text_inside() -> None:
    result: dict[str, Any] = {
        "steps": [{"kind": "tool", "outcome": "ToolFailed", "detail": "lookup: 10.0.0.7 said no"}],
        "error": {"type": "internal_error", "message": "ConnectionError: redis://:pw@10.0.0.7"},
    }
    shown = render_execution(result, full=False)
    assert shown["steps"][0]["detail"] == "lookup: tool failed"
    assert shown["error"] == {"type": "internal_error", "message": "internal error"}
    assert result["steps"][0]["detail"] == "lookup: 10.0.0.7 said no"  # not changed in place
    assert render_error(result["error"], full=True) is result["error"]


def test_the_log_text_loses_keys_and_provider_credentials_only() -> None:
    text = f"401 key sk-ant-api03-Xy9_zz-11 / {LEAKED_KEY} / Bearer t0k3n; disk-controller sk-1"
    assert redact_secrets(text) == (
        "401 key sk-ant-[redacted] / bw_[redacted] / Bearer [redacted]; disk-controller sk-1"
    )


# --- the doors -------------------------------------------------------------------------------


@pytest.mark.parametrize("door", [lean, ninja], ids=["lean", "ninja"])
async def test_an_execute_key_sees_a_typed_summary_of_a_provider_error(
    world: World, door: Any
) -> None:
    for key in ("execute", "reader"):
        result = await _execute(door, world.keys[key])
        assert result["status"] == "degraded"
        assert _failed_attempts(result) == ["provider error 401 (authentication)"]
        assert PROVIDER_TEXT not in json.dumps(result)


@pytest.mark.parametrize("door", [lean, ninja], ids=["lean", "ninja"])
async def test_operate_and_admin_keys_see_the_providers_words(world: World, door: Any) -> None:
    for key in ("operate", "admin"):
        result = await _execute(door, world.keys[key])
        assert _failed_attempts(result) == [f"401 {PROVIDER_TEXT}"]


async def test_the_record_keeps_the_full_text_and_the_executions_api_renders_it_by_scope(
    world: World,
) -> None:
    from tests.agents.api.test_queued import drain_journal

    made = await _execute(lean, world.keys["execute"])
    await drain_journal()
    row = await Execution.objects.aget(pk=made["execution_id"])
    assert [s["detail"] for s in row.steps if s["kind"] == "attempt"] == [f"401 {PROVIDER_TEXT}"]

    path = f"/api/v1/executions/{made['execution_id']}"
    mine = (await lean(world.keys["execute"], "GET", path)).json()
    assert _failed_attempts(mine) == ["provider error 401 (authentication)"]
    listed = (await lean(world.keys["execute"], "GET", "/api/v1/executions")).json()["items"]
    assert [_failed_attempts(item) for item in listed] == [["provider error 401 (authentication)"]]
    assert PROVIDER_TEXT not in json.dumps(listed)

    full = (await lean(world.keys["admin"], "GET", path)).json()
    assert _failed_attempts(full) == [f"401 {PROVIDER_TEXT}"]
    listed = (await lean(world.keys["admin"], "GET", "/api/v1/executions")).json()["items"]
    assert [_failed_attempts(item) for item in listed] == [[f"401 {PROVIDER_TEXT}"]]


async def test_a_failed_executions_error_is_summarized_too(world: World) -> None:
    from tests.agents.api.test_queued import drain_journal

    made = await _execute(lean, world.keys["execute"], agent="picky")
    assert made["status"] == "failed"
    assert _failed_attempts(made) == ["provider error 400 (invalid request)"]
    await drain_journal()
    path = f"/api/v1/executions/{made['execution_id']}"
    mine = (await lean(world.keys["execute"], "GET", path)).json()
    assert mine["error"] == {
        "type": "client_error",
        "message": "provider error 400 (invalid request)",
    }
    assert "org-Zx81" not in json.dumps(mine)
    full = (await lean(world.keys["admin"], "GET", path)).json()
    assert "org-Zx81" in full["error"]["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_v1_error_messages_carry_no_provider_text_for_an_execute_key(
    world: World, stream: bool
) -> None:
    body = {"model": "picky", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    await _closed_breakers()
    answer = await lean(world.keys["execute"], "POST", "/v1/chat/completions", body)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "provider error 400 (invalid request)"
    await _closed_breakers()
    answer = await lean(world.keys["admin"], "POST", "/v1/chat/completions", body)
    assert answer.status_code == 400
    assert "org-Zx81" in answer.json()["error"]["message"]


async def test_the_execution_socket_shows_each_key_what_its_scopes_allow(world: World) -> None:
    from console.asgi import application
    from tests.agents.api.test_queued import drain_journal

    made = await _execute(lean, world.keys["execute"])
    await drain_journal()
    seen = {}
    for key in ("execute", "operate"):
        path = f"/ws/executions/{made['execution_id']}/?key={world.keys[key]}"
        socket = WebsocketCommunicator(application, path)
        connected, _ = await socket.connect()
        assert connected
        assert (await socket.receive_json_from(5))["type"] == "status"
        completed = await socket.receive_json_from(5)
        assert completed["type"] == "completed"
        seen[key] = _failed_attempts(completed["result"])
        await socket.disconnect()
    assert seen == {
        "execute": ["provider error 401 (authentication)"],
        "operate": [f"401 {PROVIDER_TEXT}"],
    }


async def test_the_log_keeps_the_full_text_without_secrets(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="breakwater.provider"):
        made = await _execute(lean, world.keys["execute"], agent="picky")
    lines = [r.getMessage() for r in caplog.records if r.name == "breakwater.provider"]
    assert len(lines) == 1
    assert made["execution_id"] in lines[0]
    assert "maximum context length is 8192 tokens (organization org-Zx81)" in lines[0]
    assert "sk-proj-abcdef1234567890" not in lines[0]
    assert LEAKED_KEY[3:] not in lines[0]
    assert "[redacted]" in lines[0]
