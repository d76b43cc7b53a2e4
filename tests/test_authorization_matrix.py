"""Who may do what: every endpoint of docs/INTERFACES.md §4 x every persona, through the real ASGI
application (the API, ``/v1``, probes and websockets alike).

Personas: owner (``admin``), operator (``operate``), viewer (``read``), executor (``execute``
only), outsider (every scope, but restricted to another agent: what it may not see is 404, as if
it did not exist), anonymous (no key).

Each row targets the agent ``helper``, its budget, an incident about it and an execution another
key made with it. A row whose endpoint is not built yet is marked ``xfail(strict=True)``: it
turns into a failure the moment the endpoint appears, so the row gets checked then.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown
from agents.models import Execution, ModelDeployment
from budgets.models import Budget
from incidents.services import incident_open

pytestmark = pytest.mark.django_db(transaction=True)

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m, daily_budget_usd: 100}
  - {name: other, model: m}
budgets:
  - {scope: global, daily_limit_usd: 1000}
notifications:
  - {name: matrix-hook, kind: webhook, url: "http://127.0.0.1:9/hook"}
"""

PERSONAS = ("owner", "operator", "viewer", "executor", "outsider", "anonymous")
SCOPES = {
    "owner": ["admin"],
    "operator": ["operate"],
    "viewer": ["read"],
    "executor": ["execute"],
    "outsider": ["read", "execute", "operate", "admin"],
}


@dataclass
class World:
    keys: dict[str, str]
    theirs: str  # an execution of helper made by another key
    own: dict[str, str]  # persona -> an execution it made itself
    deployment: int
    helper_budget: int
    incident: int
    key: int  # a key nobody here authenticates with (the producer's): revoking it is harmless


def _setup() -> World:
    config_apply(document=config_parse(DOC))
    created = {
        persona: api_key_create(
            name=persona, scopes=scopes, agents=["other"] if persona == "outsider" else []
        )
        for persona, scopes in SCOPES.items()
    }
    producer = api_key_create(name="producer", scopes=["execute"])
    theirs = Execution.objects.create(
        agent_name="helper", api_key=producer.api_key, status="succeeded"
    )
    own = {
        persona: str(
            Execution.objects.create(
                agent_name="other" if persona == "outsider" else "helper",
                api_key=c.api_key,
                status="succeeded",
            ).pk
        )
        for persona, c in created.items()
    }
    incident, _ = incident_open(
        kind="breaker_open",
        dedup_key="breaker:agent:helper",
        title="Circuit breaker open: agent helper",
        message="breaker opened",
        agent_name="helper",
    )
    return World(
        keys={persona: c.plaintext for persona, c in created.items()},
        theirs=str(theirs.pk),
        own=own,
        deployment=ModelDeployment.objects.get(name="m").pk,
        helper_budget=Budget.objects.get(agent__name="helper").pk,
        incident=incident.pk,
        key=producer.api_key.pk,
    )


@pytest.fixture
async def world(settings: Any, tmp_path: Path) -> AsyncIterator[World]:
    settings.VAR_DIR = tmp_path  # this test's own execution journal
    yield await sync_to_async(_setup)()
    await engine_shutdown()


# --- the application, driven directly --------------------------------------------------------


async def http(method: str, path: str, key: str | None, body: Any = None) -> int:
    """One request through ``console.asgi.application``; returns the status code."""
    from console.asgi import application

    path, _, query = path.partition("?")
    headers = [(b"host", b"localhost")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        headers.append((b"content-type", b"application/json"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }
    answered = asyncio.Event()
    status: list[int] = []
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await application(scope, receive, send)
    return status[0]


async def websocket(path: str, key: str | None) -> bool:
    """Whether a websocket to ``path`` with ``key`` is accepted."""
    from channels.testing import WebsocketCommunicator

    from console.asgi import application

    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return bool(connected)


async def _quiet() -> None:
    """Let queued work finish: in embedded mode a queued execution runs on an in-process worker,
    whose writes would otherwise meet the next request's in SQLite's one-writer test database."""
    from core.worker import current_worker

    worker = current_worker()
    if worker is not None:
        await worker.stop()


# --- which endpoints exist ---------------------------------------------------------------------


def _template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path.partition("?")[0])


def _api_operations() -> set[tuple[str, str]]:
    from console.api import api

    schema = api.get_openapi_schema(path_prefix="/api/v1")
    return {
        (method.upper(), _template(path))
        for path, operations in schema["paths"].items()
        for method in operations
    }


def _django_route(path: str) -> bool:
    from django.urls import Resolver404, resolve

    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def _websocket_route(path: str) -> bool:
    from console.routing import websocket_urlpatterns

    return any(pattern.pattern.match(path.lstrip("/")) for pattern in websocket_urlpatterns)


API_OPERATIONS = _api_operations()


def built(method: str, template: str) -> bool:
    if method == "WS":
        return _websocket_route(template.replace("{}", "00000000-0000-0000-0000-000000000000"))
    if template.startswith("/v1/"):
        return True  # the OpenAI-compatible ASGI app (console/asgi.py) answers /v1/ itself
    if template.startswith("/api/v1/"):
        return (method, template) in API_OPERATIONS
    return _django_route(template)


# --- the matrix --------------------------------------------------------------------------------

OK, CREATED, NO_CONTENT, ACCEPTED = 200, 201, 204, 202
DENIED, HIDDEN, UNAUTHENTICATED, INVALID = 403, 404, 401, 422


@dataclass(frozen=True)
class Row:
    name: str
    method: str  # GET, POST, PATCH, DELETE, or WS (True = accepted)
    path: Callable[[World, str], str]  # (world, persona) -> path
    template: str
    expected: dict[str, int | bool]
    body: Any = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _row(
    name: str,
    method: str,
    template: str,
    expected: tuple[int | bool, ...],
    body: Any = None,
    path: Callable[[World, str], str] | None = None,
) -> Row:
    """``expected`` in PERSONAS order; ``template`` names what it targets as {agent} (helper),
    {execution} (another key's), {deployment}, {helper-budget}, {incident}, {key}, {channel}
    (a notification channel)."""
    values = dict(zip(PERSONAS, expected, strict=True))

    def fill(world: World, persona: str) -> str:
        return (
            template.replace("{agent}", "helper")
            .replace("{execution}", world.theirs)
            .replace("{deployment}", str(world.deployment))
            .replace("{helper-budget}", str(world.helper_budget))
            .replace("{incident}", str(world.incident))
            .replace("{key}", str(world.key))
            .replace("{channel}", "matrix-hook")
        )

    return Row(name, method, path or fill, _template(template), values, body)


def _own_execution(world: World, persona: str) -> str:
    return f"/api/v1/executions/{world.own.get(persona, world.theirs)}"


CHAT = {"model": "helper", "messages": [{"role": "user", "content": "hi"}]}
ALERT = {
    "version": "4",
    "groupKey": '{}:{alertname="BreakerOpen"}',
    "status": "firing",
    "receiver": "breakwater",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "BreakerOpen", "agent": "helper"},
            "annotations": {},
            "startsAt": "2026-03-01T12:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "b5a0e1d9c3f27a61",
        }
    ],
}
N = UNAUTHENTICATED
ROWS = [
    # owner, operator, viewer, executor, outsider, anonymous
    _row("execute", "POST", "/api/v1/agents/{agent}/execute", (OK, DENIED, DENIED, OK, HIDDEN, N), {"input": "hi"}),
    _row("queue", "POST", "/api/v1/agents/{agent}/executions", (ACCEPTED, DENIED, DENIED, ACCEPTED, HIDDEN, N), {"input": "hi"}),
    _row("another key's execution", "GET", "/api/v1/executions/{execution}", (OK, OK, OK, HIDDEN, HIDDEN, N)),
    _row("own execution", "GET", "/api/v1/executions/{id}", (OK, OK, OK, OK, OK, N), path=_own_execution),
    _row("executions", "GET", "/api/v1/executions?agent=helper", (OK, OK, OK, OK, OK, N)),
    _row("agents", "GET", "/api/v1/agents", (OK, OK, OK, DENIED, OK, N)),
    _row("create agent", "POST", "/api/v1/agents", (CREATED, DENIED, DENIED, DENIED, DENIED, N), {"name": "fresh", "model": "m"}),
    _row("agent", "GET", "/api/v1/agents/{agent}", (OK, OK, OK, DENIED, HIDDEN, N)),
    _row("change agent", "PATCH", "/api/v1/agents/{agent}", (OK, DENIED, DENIED, DENIED, HIDDEN, N), {"max_retries": 2}),
    _row("delete agent", "DELETE", "/api/v1/agents/{agent}", (NO_CONTENT, DENIED, DENIED, DENIED, HIDDEN, N)),
    _row("agent breaker", "GET", "/api/v1/agents/{agent}/breaker", (OK, OK, OK, DENIED, HIDDEN, N)),
    _row("command agent breaker", "POST", "/api/v1/agents/{agent}/breaker", (OK, OK, DENIED, DENIED, HIDDEN, N), {"action": "reset"}),
    _row("deployments", "GET", "/api/v1/deployments", (OK, OK, OK, DENIED, OK, N)),
    _row("command deployment breaker", "POST", "/api/v1/deployments/{deployment}/breaker", (OK, OK, DENIED, DENIED, DENIED, N), {"action": "reset"}),
    _row("budgets", "GET", "/api/v1/budgets", (OK, OK, OK, DENIED, OK, N)),
    _row("budget", "GET", "/api/v1/budgets/{helper-budget}", (OK, OK, OK, DENIED, HIDDEN, N)),
    _row("pause budget", "PATCH", "/api/v1/budgets/{helper-budget}", (OK, OK, DENIED, DENIED, HIDDEN, N), {"paused": False}),
    _row("raise budget", "POST", "/api/v1/budgets/{helper-budget}/raise", (OK, OK, DENIED, DENIED, HIDDEN, N), {"amount_usd": 1.0, "reason": "drill"}),
    _row("stats", "GET", "/api/v1/stats/agents?window=24h", (OK, OK, OK, DENIED, OK, N)),
    _row("slos", "GET", "/api/v1/slos", (OK, OK, OK, DENIED, OK, N)),
    _row("incidents", "GET", "/api/v1/incidents", (OK, OK, OK, DENIED, OK, N)),
    # The outsider cannot name an agent it may not see: "unknown agent", like any unknown name.
    _row("declare incident", "POST", "/api/v1/incidents", (CREATED, CREATED, DENIED, DENIED, INVALID, N), {"title": "x", "agent": "helper"}),
    _row("incident", "GET", "/api/v1/incidents/{incident}", (OK, OK, OK, DENIED, HIDDEN, N)),
    _row("change incident", "PATCH", "/api/v1/incidents/{incident}", (OK, OK, DENIED, DENIED, HIDDEN, N), {"comment": "looking"}),
    # A key restricted to some agents may only send alerts about them (labels.agent).
    _row("alertmanager webhook", "POST", "/api/v1/alerts/alertmanager", (OK, OK, DENIED, DENIED, DENIED, N), ALERT),
    # Keys are managed by an unrestricted admin key only: a restricted one could mint itself an
    # unrestricted key.
    _row("keys", "GET", "/api/v1/keys", (OK, DENIED, DENIED, DENIED, DENIED, N)),
    _row("create key", "POST", "/api/v1/keys", (CREATED, DENIED, DENIED, DENIED, DENIED, N), {"name": "new", "scopes": ["read"]}),
    _row("revoke key", "POST", "/api/v1/keys/{key}/revoke", (OK, DENIED, DENIED, DENIED, DENIED, N), {"reason": "drill"}),
    # The audit trail names every agent's and key's changes: unrestricted admin keys only.
    _row("audit", "GET", "/api/v1/audit", (OK, DENIED, DENIED, DENIED, DENIED, N)),
    # The memory-leak drill's lever acts on a whole process: unrestricted admin keys only.
    _row("drill memory", "GET", "/api/v1/drills/memory", (OK, DENIED, DENIED, DENIED, DENIED, N)),
    _row("drill leak", "POST", "/api/v1/drills/memory/leak", (OK, DENIED, DENIED, DENIED, DENIED, N), {"bytes_per_second": 1, "max_bytes": 1}),
    _row("stop drill leak", "DELETE", "/api/v1/drills/memory/leak", (OK, DENIED, DENIED, DENIED, DENIED, N)),
    # Channels and the delivery log name every agent's incidents: unrestricted admin keys only.
    _row("notification channels", "GET", "/api/v1/notifications", (OK, DENIED, DENIED, DENIED, DENIED, N)),
    _row("put notification channel", "POST", "/api/v1/notifications", (CREATED, DENIED, DENIED, DENIED, DENIED, N), {"name": "fresh-hook", "kind": "webhook", "url": "http://127.0.0.1:9/fresh"}),
    _row("notification deliveries", "GET", "/api/v1/notifications/deliveries", (OK, DENIED, DENIED, DENIED, DENIED, N)),
    _row("test notification", "POST", "/api/v1/notifications/{channel}/test", (ACCEPTED, DENIED, DENIED, DENIED, DENIED, N)),
    _row("chat completions", "POST", "/v1/chat/completions", (OK, DENIED, DENIED, OK, HIDDEN, N), CHAT),
    _row("models", "GET", "/v1/models", (OK, OK, OK, OK, OK, N)),
    _row("metrics", "GET", "/metrics", (OK, OK, OK, OK, OK, OK)),
    _row("healthz", "GET", "/healthz", (OK, OK, OK, OK, OK, OK)),
    _row("dashboard socket", "WS", "/ws/dashboard/", (True, True, True, False, True, False)),
    _row("execution socket", "WS", "/ws/executions/{execution}/", (True, True, True, False, False, False)),
]  # fmt: skip


def _params() -> list[Any]:
    params = []
    for row in ROWS:
        marks = []
        if not built(row.method, row.template):
            marks.append(pytest.mark.xfail(strict=True, reason="endpoint not built yet"))
        params.append(pytest.param(row, id=f"{row.method} {row.name}", marks=marks))
    return params


def _order(row: Row) -> list[str]:
    """Refusals first, so that a write allowed to one persona (a delete) cannot change what
    the others are refused; the owner last."""
    allowed = [p for p in PERSONAS if row.expected[p] in (True, OK, CREATED, ACCEPTED, NO_CONTENT)]
    refused = [p for p in PERSONAS if p not in allowed]
    return refused + sorted(allowed, key=lambda p: p == "owner")


@pytest.mark.parametrize("row", _params())
async def test_each_persona_gets_the_right_answer(world: World, row: Row) -> None:
    wrong = []
    for persona in _order(row):
        key = world.keys.get(persona)
        path = row.path(world, persona)
        if row.method == "WS":
            got: int | bool = await websocket(path, key)
        else:
            got = await http(row.method, path, key, row.body)
        await _quiet()
        if got != row.expected[persona]:
            wrong.append(f"{persona}: expected {row.expected[persona]}, got {got}")
    assert not wrong, f"{row.method} {row.template}: " + "; ".join(wrong)


# --- what lists show --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("persona", "sees_theirs"),
    [
        ("owner", True),
        ("operator", True),
        ("viewer", True),
        ("executor", False),
        ("outsider", False),
    ],
)
async def test_another_keys_executions_are_listed_only_to_readers_of_its_agent(
    world: World, persona: str, sees_theirs: bool
) -> None:
    from django.test import AsyncClient

    response = await AsyncClient().get(
        "/api/v1/executions", headers={"Authorization": f"Bearer {world.keys[persona]}"}
    )
    listed = {item["execution_id"] for item in response.json()["items"]}
    assert (world.theirs in listed) is sees_theirs
    assert world.own[persona] in listed  # and its own, always


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/agents", "name"),
        ("/api/v1/incidents", "agent"),
        ("/api/v1/budgets", "target"),
    ],
)
async def test_the_outsider_lists_nothing_about_agents_it_may_not_use(
    world: World, path: str, field: str
) -> None:
    from django.test import AsyncClient

    response = await AsyncClient().get(
        path, headers={"Authorization": f"Bearer {world.keys['outsider']}"}
    )
    assert response.status_code == 200
    assert "helper" not in {item[field] for item in response.json()["items"]}


# --- the API's description -------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


async def _openapi() -> dict[str, Any]:
    from django.test import AsyncClient

    response = await AsyncClient().get("/api/v1/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


async def test_every_operation_has_a_summary_and_a_response_schema(world: World) -> None:
    document = await _openapi()
    assert document["openapi"].startswith("3.")
    problems = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not operation.get("summary"):
                problems.append(f"{method.upper()} {path}: no summary")
            for status, response in operation["responses"].items():
                if status.startswith("2") and status != "204" and not response.get("content"):
                    problems.append(f"{method.upper()} {path}: {status} has no schema")
    assert not problems, problems
    schemas = document["components"]["schemas"]
    dangling = {
        ref
        for ref in _refs(document)
        if not (ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas)
    }
    assert not dangling


async def test_errors_are_described_in_the_error_format(world: World) -> None:
    document = await _openapi()
    operation = document["paths"]["/api/v1/agents/{name}"]["patch"]
    for status in ("401", "403", "404", "409", "422"):
        ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert schema["required"] == ["error"]


async def test_the_document_is_valid_openapi(world: World) -> None:
    validator = pytest.importorskip("openapi_spec_validator")  # a developer tool, not a dependency
    validator.validate(await _openapi())


async def test_the_interactive_docs_are_served(world: World) -> None:
    from django.test import AsyncClient

    assert (await AsyncClient().get("/api/v1/docs")).status_code == 200
