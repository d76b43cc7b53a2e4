"""The memory-leak drill's endpoints (``/api/v1/drills/memory``, ``.../leak``) through
``console.asgi.application``: admin only, bounded input refused by name, a leak that really
grows this process's RSS, stops and is audited."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agents.access.services import api_key_create
from agents.engine import engine_shutdown
from agents.models import Agent
from core.memory import MB, leak_status, leak_stop, rss_bytes
from core.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)

KEYS: dict[str, str] = {}
SCOPES = ("admin", "operate", "read", "execute")


def _keys() -> dict[str, str]:
    Agent.objects.create(name="support", model="m")
    made = {scope: api_key_create(name=scope, scopes=[scope]) for scope in SCOPES}
    made["restricted"] = api_key_create(name="r", scopes=["admin"], agents=["support"])
    return {persona: created.plaintext for persona, created in made.items()}


@pytest.fixture
async def engine(settings: Any, tmp_path: Path) -> AsyncIterator[None]:
    settings.VAR_DIR = tmp_path
    KEYS.clear()
    KEYS.update(await sync_to_async(_keys)())
    yield
    leak_stop()
    await engine_shutdown()


async def _call(method: str, path: str, persona: str = "admin", payload: Any = None) -> Any:
    from console.asgi import application
    from tests.asgi_client import asgi_request

    headers = [("Authorization", f"Bearer {KEYS[persona]}")]
    body = b""
    if payload is not None:
        headers.append(("Content-Type", "application/json"))
        body = json.dumps(payload).encode()
    return await asgi_request(application, method, path, headers=headers, body=body)


OPERATIONS = [
    ("GET", "/api/v1/drills/memory", None),
    ("POST", "/api/v1/drills/memory/leak", {"bytes_per_second": 1024}),
    ("DELETE", "/api/v1/drills/memory/leak", None),
]


@pytest.mark.parametrize("scope", ["read", "operate", "execute"])
@pytest.mark.parametrize(("method", "path", "payload"), OPERATIONS)
async def test_keys_without_admin_scope_are_refused_and_nothing_leaks(
    engine: None, scope: str, method: str, path: str, payload: Any
) -> None:
    response = await _call(method, path, scope, payload)
    assert response.status_code == 403
    assert "admin" in response.json()["error"]["message"]
    assert leak_status() == (0.0, 0, 0)


async def test_a_key_restricted_to_some_agents_is_refused_even_with_admin_scope(
    engine: None,
) -> None:
    response = await _call(
        "POST", "/api/v1/drills/memory/leak", "restricted", {"bytes_per_second": 1}
    )
    assert response.status_code == 403
    assert "restricted" in response.json()["error"]["message"]
    assert leak_status() == (0.0, 0, 0)


async def test_no_key_is_401() -> None:
    from console.asgi import application
    from tests.asgi_client import asgi_request

    response = await asgi_request(application, "GET", "/api/v1/drills/memory")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"bytes_per_second": 0}, "bytes_per_second: Input should be greater than 0"),
        ({"bytes_per_second": -5}, "bytes_per_second: Input should be greater than 0"),
        (
            {"bytes_per_second": 100 * MB + 1},
            f"bytes_per_second: Input should be less than or equal to {100 * MB}",
        ),
        ({"bytes_per_second": "fast"}, "bytes_per_second: Input should be a valid number"),
        ({}, "bytes_per_second: Field required"),
        ({"bytes_per_second": 1, "max_bytes": 0}, "max_bytes: Input should be greater than 0"),
        ({"bytes_per_second": 1, "max_bytes": 2**40}, "max_bytes: Input should be less than"),
        ({"bytes_per_second": 1, "pid": 7}, "pid: Extra inputs are not permitted"),
    ],
)
async def test_a_bad_leak_is_a_422_naming_the_field_and_nothing_leaks(
    engine: None, payload: dict[str, Any], message: str
) -> None:
    response = await _call("POST", "/api/v1/drills/memory/leak", payload=payload)
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]
    assert leak_status() == (0.0, 0, 0)


async def test_a_leak_grows_this_process_until_stopped_and_both_are_audited(engine: None) -> None:
    before = rss_bytes()
    started = await _call(
        "POST",
        "/api/v1/drills/memory/leak",
        payload={"bytes_per_second": 40 * MB, "max_bytes": 12 * MB},
    )
    assert started.status_code == 200, started.json()
    body = started.json()
    assert body["pid"] == os.getpid()
    assert body["leak"]["bytes_per_second"] == 40 * MB
    assert body["leak"]["max_bytes"] == 12 * MB
    assert body["supervised"] is False  # a test process: no supervisor recycles it
    deadline = time.monotonic() + 10
    while (now := (await _call("GET", "/api/v1/drills/memory")).json())["leak"]["held_bytes"] < (
        12 * MB
    ):
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.05)
    assert now["leak"]["bytes_per_second"] == 0  # capped: it holds, it no longer grows
    assert now["rss_bytes"] - before >= 6 * MB
    stopped = (await _call("DELETE", "/api/v1/drills/memory/leak")).json()
    assert stopped["freed_bytes"] == 12 * MB
    assert stopped["leak"] == {"bytes_per_second": 0, "held_bytes": 0, "max_bytes": 0}
    actions = await sync_to_async(
        lambda: list(
            AuditEvent.objects.filter(target_type="process")
            .order_by("id")
            .values_list("action", "target_id", "actor")
        )
    )()
    target = f"{socket.gethostname()}:{os.getpid()}"
    assert [(a, t) for a, t, _ in actions] == [
        ("process_leak_start", target),
        ("process_leak_stop", target),
    ]
    assert all(actor.startswith("apikey:bw_") for _, _, actor in actions)
    # Stopping again: nothing to free, nothing audited.
    again = (await _call("DELETE", "/api/v1/drills/memory/leak")).json()
    assert again["freed_bytes"] == 0
    assert await sync_to_async(AuditEvent.objects.filter(target_type="process").count)() == 2


async def test_the_openapi_document_describes_the_three_operations(engine: None) -> None:
    schema = (await _call("GET", "/api/v1/openapi.json")).json()
    assert {"get"} <= set(schema["paths"]["/api/v1/drills/memory"])
    assert {"post", "delete"} <= set(schema["paths"]["/api/v1/drills/memory/leak"])
    leak_in = schema["components"]["schemas"]["LeakIn"]["properties"]["bytes_per_second"]
    assert leak_in["maximum"] == 100 * MB
