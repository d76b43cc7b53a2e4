"""Every door sends the security headers Django sends (issue 10, point 15).

A Django route (the ninja API) and both lean doors (``/v1`` and the REST execute path), through
``console.asgi.application``, answers and refusals alike: every header Django's middleware puts
on the route's answer is on the lean doors' answers too, with the same value. The lean doors build
theirs with Django's own middleware (``agents.doors.shell.security_headers``), so a header
middleware added to settings, or a setting changed, reaches them without a copy to keep in step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from tests.asgi_client import FRAMING, Answer, asgi_request

pytestmark = pytest.mark.django_db(transaction=True)

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m}
"""

# What differs from one answer to the next by nature, not by door.
PER_RESPONSE = FRAMING | {
    "content-type",
    "content-length",
    "vary",
    "cache-control",
    "expires",
    "allow",
    "www-authenticate",
    "retry-after",
}
SECURITY = {
    "content-security-policy",
    "cross-origin-opener-policy",
    "referrer-policy",
    "x-content-type-options",
    "x-frame-options",
}


@pytest.fixture
async def key(settings: Any, tmp_path: Path) -> AsyncIterator[str]:
    settings.VAR_DIR = tmp_path

    def setup() -> str:
        config_apply(document=config_parse(DOC))
        return api_key_create(name="all", scopes=["admin"]).plaintext

    plaintext = await sync_to_async(setup)()
    await sync_to_async(get_engine().config.reload)()
    yield plaintext
    await engine_shutdown()


@pytest.fixture
def https(settings: Any) -> None:
    """BREAKWATER_HTTPS's security settings (HSTS); each test builds its Django after this."""
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True


def _app() -> Any:
    """``console.asgi``'s router over a Django handler built now (its middleware reads the
    settings when it is loaded)."""
    from django.core.handlers.asgi import ASGIHandler

    from agents.doors import openai as openai_compat
    from agents.doors import rest as execute_asgi

    django = ASGIHandler()
    execute = execute_asgi.lean_app(fallback=django)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"].startswith("/v1/"):
            await openai_compat.app(scope, receive, send)
        else:
            await execute(scope, receive, send)

    return app


def _security(answer: Answer) -> dict[str, str]:
    return {k: v for k, v in answer.headers.items() if k not in PER_RESPONSE}


async def _answers(key: str, scheme: str) -> dict[str, Answer]:
    app = _app()
    auth = [("Authorization", f"Bearer {key}")]
    body = b'{"model": "helper", "messages": [{"role": "user", "content": "hi"}]}'
    requests = {
        "django: GET /api/v1/agents": ("GET", "/api/v1/agents", auth, b""),
        "django: 401": ("GET", "/api/v1/agents", [], b""),
        "v1: GET /v1/models": ("GET", "/v1/models", auth, b""),
        "v1: chat completion": ("POST", "/v1/chat/completions", auth, body),
        "v1: 401": ("POST", "/v1/chat/completions", [], body),
        "v1: 404": ("GET", "/v1/nothing", auth, b""),
        "execute: 200": ("POST", "/api/v1/agents/helper/execute", auth, b'{"input": "hi"}'),
        "execute: 401": ("POST", "/api/v1/agents/helper/execute", [], b'{"input": "hi"}'),
        "execute: 422": ("POST", "/api/v1/agents/helper/execute", auth, b"{}"),
    }
    answers = {}
    for name, (method, path, headers, payload) in requests.items():
        answers[name] = await asgi_request(
            app, method, path, headers=headers, body=payload, scheme=scheme
        )
    return answers


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_the_lean_doors_send_every_security_header_django_sends(
    key: str, https: None, scheme: str
) -> None:
    answers = await _answers(key, scheme)
    assert answers["v1: chat completion"].status_code == 200
    assert answers["execute: 200"].status_code == 200
    reference = _security(answers["django: GET /api/v1/agents"])
    expected = SECURITY | ({"strict-transport-security"} if scheme == "https" else set())
    assert set(reference) == expected
    assert "'unsafe-inline'" not in reference["content-security-policy"]
    for name, answer in answers.items():
        assert _security(answer) == reference, name


async def test_the_lean_doors_follow_a_change_of_the_security_settings(
    key: str, settings: Any
) -> None:
    settings.SECURE_REFERRER_POLICY = "no-referrer"
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    answers = await _answers(key, "http")
    for name, answer in answers.items():
        assert answer["referrer-policy"] == "no-referrer", name
        assert answer["x-frame-options"] == "SAMEORIGIN", name
