"""The one NinjaAPI (console/api.py): what every operation shares. Errors in one format and
declared in the OpenAPI document; bodies that are missing or not JSON named as such; and text
with a NUL character refused (JSON allows it, PostgreSQL stores none) before anything is
written, run or charged, on SQLite as on PostgreSQL; so is a lone surrogate (UTF-8 cannot
encode it: neither the upstream call nor the record could carry it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown
from agents.models import Execution
from budgets.models import SpendEntry
from incidents.models import Incident
from tests.asgi_client import asgi_request

pytestmark = pytest.mark.django_db(transaction=True)

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: api-helper, model: m, daily_budget_usd: 10}
"""


@pytest.fixture
async def key() -> AsyncIterator[str]:
    def setup() -> str:
        config_apply(document=config_parse(DOC))
        return api_key_create(name="owner", scopes=["admin"]).plaintext

    yield await sync_to_async(setup)()
    await engine_shutdown()
    # The async ORM's thread keeps its connection otherwise (the test database cannot be dropped).
    await sync_to_async(connections.close_all)()


async def call(
    method: str,
    path: str,
    key: str,
    body: Any = None,
    raw: bytes | None = None,
    served: bool = False,
) -> Any:
    """Through Django's handler, or (``served``) through the application as ``serve`` runs it,
    where execute has a lean path of its own (agents/doors/rest.py)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    if served:
        from console.asgi import application

        headers = [("authorization", f"Bearer {key}")]
        if data is not None:
            headers.append(("content-type", "application/json"))
        return await asgi_request(
            application, method.upper(), path, headers=headers, body=data or b""
        )
    kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {key}"}}
    if data is not None:
        kwargs["data"] = data
        kwargs["content_type"] = "application/json"
    return await getattr(AsyncClient(), method)(path, **kwargs)


NUL = "\u0000"


@pytest.mark.parametrize(
    ("method", "path", "body", "named"),
    [
        ("post", "/api/v1/incidents", {"title": f"down{NUL}"}, "title"),
        ("patch", "/api/v1/agents/api-helper", {"description": NUL}, "description"),
        ("post", "/api/v1/agents", {"name": "x", "model": "m", "system_prompt": NUL}, "system_prompt"),
        ("post", "/api/v1/agents/api-helper/breaker", {"action": "reset", "reason": NUL}, "reason"),
        ("get", "/api/v1/executions?agent=%00", None, "agent"),
        ("get", "/api/v1/incidents?after=%00", None, "after"),
        ("get", "/api/v1/agents/%00", None, "name"),
        ("get", "/api/v1/executions/%00", None, "execution_id"),
    ],
)  # fmt: skip
async def test_a_nul_character_is_refused_with_a_422_that_names_the_field(
    key: str, method: str, path: str, body: Any, named: str
) -> None:
    response = await call(method, path, key, body)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["message"].startswith(f"{named}:")
    assert "NUL" in error["message"]
    assert not await Incident.objects.aexists()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"input": f"hi{NUL}"}, "input"),
        ({"input": [{"role": "user", "content": f"hi{NUL}"}]}, "0.content"),
        ({"input": "hi", "metadata": {"ticket": NUL}}, "metadata"),
        ({"input": "hi", "metadata": {"nested": {f"k{NUL}": 1}}}, "metadata"),
    ],
)
@pytest.mark.parametrize("served", [False, True], ids=["django", "application"])
@pytest.mark.parametrize("path", ["execute", "executions"])
async def test_an_execution_with_a_nul_character_is_refused_before_it_runs_or_costs(
    key: str, path: str, served: bool, body: Any, named: str
) -> None:
    response = await call("post", f"/api/v1/agents/api-helper/{path}", key, body, served=served)
    assert response.status_code == 422, response.content
    message = response.json()["error"]["message"]
    assert f"{named}: Value error, must not contain the NUL character" in message
    assert not await Execution.objects.aexists()
    assert not await SpendEntry.objects.aexists()


LONE = "\ud800"  # a lone (high) surrogate: JSON can write it, UTF-8 cannot encode it


@pytest.mark.parametrize(
    ("method", "path", "body", "named"),
    [
        ("post", "/api/v1/incidents", {"title": f"down{LONE}"}, "title"),
        ("patch", "/api/v1/agents/api-helper", {"description": "\udfff"}, "description"),
        ("post", "/api/v1/agents", {"name": "x", "model": "m", "system_prompt": LONE}, "system_prompt"),
        ("post", "/api/v1/agents/api-helper/breaker", {"action": "reset", "reason": LONE}, "reason"),
    ],
)  # fmt: skip
async def test_a_lone_surrogate_is_refused_with_a_422_that_names_the_field(
    key: str, method: str, path: str, body: Any, named: str
) -> None:
    response = await call(method, path, key, body)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["message"].startswith(f"{named}: ")
    assert "lone surrogate" in error["message"]
    assert not await Incident.objects.aexists()


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b'{"input": "a\\ud800b"}', "input"),
        (b'{"input": "a\\udc00"}', "input"),
        (b'{"input": "a\xed\xa0\x80b"}', "input"),  # the surrogate's raw UTF-8 bytes
        (b'{"input": [{"role": "system", "content": "ok"}, {"role": "user", "content": "\\ud800"}]}', "input.1.content"),
        (b'{"input": "hi", "metadata": {"ticket": "\\ud800"}}', "metadata"),
        (b'{"input": "hi", "metadata": {"tags": ["ok", "\\ud800"]}}', "metadata"),
        (b'{"input": "hi", "metadata": {"k\\ud800": 1}}', "metadata"),
        (b'{"input": "hi", "session_id": "s\\ud800"}', "session_id"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("served", [False, True], ids=["django", "application"])
@pytest.mark.parametrize("path", ["execute", "executions"])
async def test_an_execution_with_a_lone_surrogate_is_refused_before_it_runs_or_costs(
    key: str, path: str, served: bool, raw: bytes, named: str
) -> None:
    response = await call("post", f"/api/v1/agents/api-helper/{path}", key, raw=raw, served=served)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["message"].startswith(f"{named}: ")
    if named != "session_id":  # its pattern refuses it first: [A-Za-z0-9._:-]
        assert "must not contain a lone surrogate" in error["message"]
    assert not await Execution.objects.aexists()
    assert not await SpendEntry.objects.aexists()


async def test_a_lone_surrogate_in_metadata_is_located_inside_it(key: str) -> None:
    raw = b'{"input": "hi", "metadata": {"tags": ["ok", "\\ud800"], "k\\udc00": 1}}'
    response = await call("post", "/api/v1/agents/api-helper/execute", key, raw=raw, served=True)
    assert response.json()["error"]["message"] == (
        "metadata: Value error, must not contain a lone surrogate (\\ud800-\\udfff): "
        "text must be valid Unicode, in metadata.tags[1]"
    )


async def test_a_missing_body_is_named_as_the_body(key: str) -> None:
    response = await call("post", "/api/v1/incidents", key, raw=b"")
    assert response.status_code == 422
    assert response.json()["error"] == {
        "type": "validation_error",
        "message": "body: Field required",
    }


@pytest.mark.parametrize("served", [False, True])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"input": [{"role": "user", "content": 5}]},
            "input.0.content: Input should be a valid string",
        ),
        (
            {"input": [{"role": "robot", "content": "hi"}, {"role": "user"}]},
            "input.0.role: Input should be 'system', 'user' or 'assistant'; "
            "input.1.content: Field required",
        ),
        ({"input": 5}, "input: Input should be a valid string or Input should be a valid list"),
    ],
)
async def test_a_wrong_message_is_named_by_its_path_without_pydantic_type_names(
    key: str, body: dict[str, Any], message: str, served: bool
) -> None:
    response = await call("post", "/api/v1/agents/api-helper/execute", key, body, served=served)
    assert response.status_code == 422
    assert response.json()["error"] == {"type": "validation_error", "message": message}


async def test_a_body_that_is_not_json_is_a_400_in_the_error_format(key: str) -> None:
    response = await call("post", "/api/v1/incidents", key, raw=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"


async def test_every_operation_declares_every_error_status_in_the_error_format() -> None:
    """What Schemathesis checks by calling (tests/console/test_api_schema_fuzz.py), checked on
    the document alone: a new operation without ``**ERRORS`` fails here at once."""
    from console.api import api

    document = api.get_openapi_schema(path_prefix="/api/v1")
    missing = [
        f"{method.upper()} {path}: {status}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status in (400, 401, 403, 404, 409, 413, 422)
        if operation["responses"]
        .get(status, {})
        .get("content", {})
        .get("application/json", {})
        .get("schema", {})
        .get("$ref", "")
        .rsplit("/", 1)[-1]
        != "ErrorOut"
    ]
    assert not missing
