"""The execute endpoint: authentication, scopes, validation before any work, results.

Each test runs twice: through the application as served (``console.asgi.application``, where the
lean ASGI path answers) and through Django's handler (the django-ninja route).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown
from agents.models import ApiKey
from tests.asgi_client import asgi_request

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m, max_tokens: 64, timeout_s: 5}
  - {name: other, model: m}
"""

pytestmark = pytest.mark.django_db(transaction=True)


def _setup() -> dict[str, str]:
    config_apply(document=config_parse(DOC))
    return {
        "execute": api_key_create(name="exec", scopes=["execute"]).plaintext,
        "read": api_key_create(name="read", scopes=["read"]).plaintext,
        "helper-only": api_key_create(
            name="limited", scopes=["execute"], agents=["helper"]
        ).plaintext,
    }


@pytest.fixture
async def keys() -> AsyncIterator[dict[str, str]]:
    created = await sync_to_async(_setup)()
    yield created
    await engine_shutdown()


Post = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["application", "django"])
def post(request: pytest.FixtureRequest) -> Post:
    """``post(key, path, body, authorization=...)``; ``authorization`` replaces the header."""

    async def through_the_application(
        key: str | None, path: str, body: Any, authorization: str | None = None
    ) -> Any:
        from console.asgi import application

        value = authorization or (f"Bearer {key}" if key else None)
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return await asgi_request(
            application,
            "POST",
            path,
            headers=[("Content-Type", "application/json")]
            + ([("Authorization", value)] if value else []),
            body=data.encode() if isinstance(data, str) else data,
        )

    async def through_django(
        key: str | None, path: str, body: Any, authorization: str | None = None
    ) -> Any:
        # Headers go on the request: AsyncClient(headers=...) defaults do not reach ASGI scopes.
        value = authorization or (f"Bearer {key}" if key else None)
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return await AsyncClient().post(
            path,
            data=data,
            content_type="application/json",
            headers={"Authorization": value} if value else {},
        )

    return through_the_application if request.param == "application" else through_django


async def test_an_execution_runs_and_answers_the_contracts_result(
    keys: dict[str, str], post: Post
) -> None:
    response = await post(keys["execute"], "/api/v1/agents/helper/execute", {"input": "hi"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["agent"] == "helper"
    assert body["model"] == "m"
    assert set(body) >= {
        "execution_id", "output", "deployment", "attempts", "fallback_used", "fallback_reason",
        "cached", "usage", "cost_usd", "latency_ms", "created_at", "steps",
    }  # fmt: skip
    assert body["usage"]["input_tokens"] > 0


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer nope", "Bearer bw_" + "x" * 46, "Basic abc"],
)
async def test_a_missing_or_bad_key_is_401_in_the_error_format(
    keys: dict[str, str], post: Post, authorization: str | None
) -> None:
    response = await post(
        None, "/api/v1/agents/helper/execute", {"input": "hi"}, authorization=authorization
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_a_revoked_key_stops_working(keys: dict[str, str], post: Post) -> None:
    from django.utils import timezone

    from agents.engine import get_engine

    await sync_to_async(ApiKey.objects.filter(name="exec").update)(revoked_at=timezone.now())
    await sync_to_async(get_engine().config.reload)()
    response = await post(keys["execute"], "/api/v1/agents/helper/execute", {"input": "hi"})
    assert response.status_code == 401


async def test_a_key_without_the_execute_scope_is_403(keys: dict[str, str], post: Post) -> None:
    response = await post(keys["read"], "/api/v1/agents/helper/execute", {"input": "hi"})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_denied"


async def test_an_agent_outside_the_keys_allow_list_is_404(
    keys: dict[str, str], post: Post
) -> None:
    response = await post(keys["helper-only"], "/api/v1/agents/other/execute", {"input": "hi"})
    assert response.status_code == 404
    ok = await post(keys["helper-only"], "/api/v1/agents/helper/execute", {"input": "hi"})
    assert ok.status_code == 200


async def test_an_unknown_agent_is_404(keys: dict[str, str], post: Post) -> None:
    response = await post(keys["execute"], "/api/v1/agents/ghost/execute", {"input": "hi"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"input": "hi", "colour": "red"}, "colour"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"input": "hi", "max_tokens": 0}, "max_tokens"),
        ({"input": "hi", "max_tokens": 65}, "max_tokens: must be <= 64"),
        ({"input": "hi", "session_id": "has spaces"}, "session_id"),
        ({"input": [{"role": "user", "content": "x"}] * 201}, "input"),
        ("{not json", ""),
    ],
)
async def test_bad_input_is_refused_before_any_execution(
    keys: dict[str, str], post: Post, body: Any, fragment: str
) -> None:
    from agents.models import Execution

    response = await post(keys["execute"], "/api/v1/agents/helper/execute", body)
    assert response.status_code in (400, 422)
    error = response.json()["error"]
    assert fragment in error["message"]
    assert await sync_to_async(Execution.objects.count)() == 0


async def test_an_oversized_body_is_413(keys: dict[str, str], post: Post, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    response = await post(keys["execute"], "/api/v1/agents/helper/execute", {"input": "x" * 5000})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


async def test_last_use_is_buffered_and_flushed_not_written_per_request(
    keys: dict[str, str],
    post: Post,
) -> None:
    from agents.engine import get_engine

    for _ in range(3):
        await post(keys["execute"], "/api/v1/agents/helper/execute", {"input": "hi"})
    key = await sync_to_async(ApiKey.objects.get)(name="exec")
    assert key.last_used_at is None  # nothing written on the request path
    flushed = await sync_to_async(get_engine().flush_last_used)()
    assert flushed == 1
    key = await sync_to_async(ApiKey.objects.get)(name="exec")
    assert key.last_used_at is not None
