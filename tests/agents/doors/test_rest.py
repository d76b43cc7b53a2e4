"""The lean execute path answers exactly as the django-ninja route does.

Every request here goes twice through the same process: once through the application
(``console.asgi.application``, which hands ``POST /api/v1/agents/{name}/execute`` to the lean app)
and once straight to Django (the ninja route). Status, body and headers must be the same. Django
announces each request it handles (``request_started``), so the tests also see which of the two
really answered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.signals import request_started
from django.utils import timezone

from agents.access.services import api_key_create
from agents.backends import idempotency_store
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from agents.executions.idempotency import IN_PROGRESS_RETRY_AFTER_S, fingerprint
from agents.models import ApiKey, Execution
from tests.asgi_client import Answer, asgi_request

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
  - {name: down, kind: simulated, simulation: {latency_ms: 0, error_rate: 1, seed: 1}}
  - {name: tortoise, kind: simulated, simulation: {latency_ms: 20000, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: broken, provider: down, upstream_model: b-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: slow-m, provider: tortoise, upstream_model: s-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m, max_tokens: 64, timeout_s: 5}
  - {name: other, model: m}
  - {name: failing, model: broken, max_retries: 0}
  - {name: slow, model: slow-m, timeout_s: 30}
"""

PATH = "/api/v1/agents/helper/execute"
HI = b'{"input": "hi"}'

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class World:
    keys: dict[str, str]
    ids: dict[str, int]


def _setup() -> World:
    config_apply(document=config_parse(DOC))
    made = {
        "execute": api_key_create(name="execute", scopes=["execute"]),
        "read": api_key_create(name="read", scopes=["read"]),
        "admin": api_key_create(name="admin", scopes=["admin"]),
        "helper-only": api_key_create(name="helper-only", scopes=["execute"], agents=["helper"]),
        "revoked": api_key_create(name="revoked", scopes=["execute"]),
        "expired": api_key_create(
            name="expired", scopes=["execute"], expires_at=timezone.now() - timedelta(hours=1)
        ),
    }
    ApiKey.objects.filter(name="revoked").update(revoked_at=timezone.now())
    return World(
        keys={name: made[name].plaintext for name in made},
        ids={name: made[name].api_key.pk for name in made},
    )


@pytest.fixture
async def world(settings: Any, tmp_path: Path) -> AsyncIterator[World]:
    settings.VAR_DIR = tmp_path
    created = await sync_to_async(_setup)()
    await sync_to_async(get_engine().config.reload)()
    yield created
    await engine_shutdown()


@pytest.fixture
def django_requests() -> Iterator[list[object]]:
    """One entry per request Django's handler took."""
    seen: list[object] = []

    def count(sender: object, **kwargs: object) -> None:
        seen.append(sender)

    request_started.connect(count)
    yield seen
    request_started.disconnect(count)


async def lean(*args: Any, **kwargs: Any) -> Answer:
    from console.asgi import application

    return await asgi_request(application, *args, **kwargs)


async def ninja(*args: Any, **kwargs: Any) -> Answer:
    from console.asgi import django_asgi_app

    return await asgi_request(django_asgi_app, *args, **kwargs)


def rebuilt() -> tuple[Any, Any]:
    """(lean app, Django) built now: Django's middleware reads its settings when it is loaded,
    so a test that changes them needs a Django (and a lean app falling back to it) built after."""
    from django.core.handlers.asgi import ASGIHandler

    from agents.doors.rest import lean_app

    django = ASGIHandler()
    return lean_app(fallback=django), django


def bearer(key: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {key}")


async def both(
    django_requests: list[object],
    *args: Any,
    lean_path: bool = True,
    apps: tuple[Any, Any] | None = None,
    **kwargs: Any,
) -> tuple[Answer, Answer]:
    """The same request through the application and through the ninja route."""
    before = len(django_requests)
    first = await (asgi_request(apps[0], *args, **kwargs) if apps else lean(*args, **kwargs))
    # The lean path never builds a Django request; what it hands over, Django answers.
    assert len(django_requests) - before == (0 if lean_path else 1)
    second = await (asgi_request(apps[1], *args, **kwargs) if apps else ninja(*args, **kwargs))
    assert len(django_requests) - before == (1 if lean_path else 2)
    return first, second


def assert_same(first: Answer, second: Answer) -> None:
    assert (first.status_code, first.content) == (second.status_code, second.content)
    assert first.semantic_headers() == second.semantic_headers()


async def executions() -> int:
    return await sync_to_async(Execution.objects.count)()


# --- refusals --------------------------------------------------------------------------------

BAD_BODIES = {
    "not JSON": b"{not json",
    "empty": b"",
    "JSON null": b"null",
    "a JSON list": b"[]",
    "a JSON string": b'"hi"',
    "not UTF-8": b'{"input": "\xff"}',
    "an unknown field": b'{"input": "hi", "colour": "red"}',
    "no input": b'{"max_tokens": 5}',
    "empty input": b'{"input": "   "}',
    "no messages": b'{"input": []}',
    "a bad role": b'{"input": [{"role": "wizard", "content": "x"}]}',
    "a message field too many": b'{"input": [{"role": "user", "content": "x", "name": "n"}]}',
    "too many messages": json.dumps({"input": [{"role": "user", "content": "x"}] * 201}).encode(),
    "input too long": json.dumps({"input": "x" * 200_001}).encode(),
    "a wrong type": b'{"input": "hi", "max_tokens": "lots"}',
    "max_tokens 0": b'{"input": "hi", "max_tokens": 0}',
    "max_tokens over the agent's cap": b'{"input": "hi", "max_tokens": 65}',
    "a bad session id": b'{"input": "hi", "session_id": "has spaces"}',
    "metadata over 8 KiB": json.dumps({"input": "hi", "metadata": {"k": "v" * 9000}}).encode(),
    "metadata not an object": b'{"input": "hi", "metadata": [1]}',
    "two problems at once": b'{"input": "", "colour": "red", "max_tokens": -1}',
    "a lone surrogate in input": b'{"input": "a\\ud800b"}',
    "a lone surrogate as raw bytes": b'{"input": "a\xed\xa0\x80b"}',
    "a lone surrogate in a message": b'{"input": [{"role": "user", "content": "\\udc00"}]}',
    "a lone surrogate in metadata": b'{"input": "hi", "metadata": {"k": ["\\ud800"]}}',
    "a lone surrogate in a metadata key": b'{"input": "hi", "metadata": {"\\ud800": 1}}',
    "a lone surrogate in the session id": b'{"input": "hi", "session_id": "\\ud800"}',
    "max_tokens as a string": b'{"input": "hi", "max_tokens": "10"}',
    "max_tokens true": b'{"input": "hi", "max_tokens": true}',
    "max_tokens 10.0": b'{"input": "hi", "max_tokens": 10.0}',
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_a_bad_body_is_refused_with_the_routes_status_and_message(
    world: World, django_requests: list[object], body: bytes
) -> None:
    first, second = await both(
        django_requests,
        "POST",
        PATH,
        headers=[bearer(world.keys["execute"]), ("Content-Type", "application/json")],
        body=body,
    )
    assert first.status_code in (400, 422)
    assert first.json()["error"]["type"] in ("invalid_request", "validation_error")
    assert_same(first, second)
    assert await executions() == 0


async def test_with_debug_on_the_parse_error_names_the_problem_on_both(
    world: World, django_requests: list[object], settings: Any
) -> None:
    settings.DEBUG = True
    first, second = await both(
        django_requests, "POST", PATH, headers=[bearer(world.keys["execute"])], body=b"{not json"
    )
    assert first.status_code == 400
    assert "Expecting property name" in first.json()["error"]["message"]
    assert_same(first, second)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer nope",
        "Bearer bw_" + "x" * 46,
        "Basic abc",
        "Token {execute}",
        "Bearer  {execute}",  # two spaces: ninja takes " bw_..." as the token
        "Bearer {execute} ",
        "Bearer {revoked}",
        "Bearer {expired}",
    ],
)
async def test_a_missing_bad_revoked_or_expired_key_is_the_routes_401(
    world: World, django_requests: list[object], authorization: str | None
) -> None:
    headers = [("Content-Type", "application/json")]
    if authorization is not None:
        headers.append(("Authorization", authorization.format(**world.keys)))
    first, second = await both(django_requests, "POST", PATH, headers=headers, body=HI)
    assert first.status_code == 401
    assert first["WWW-Authenticate"] == "Bearer"
    assert_same(first, second)


async def test_the_scheme_is_case_insensitive_as_on_the_route(
    world: World, django_requests: list[object]
) -> None:
    headers = [("Authorization", f"bEaReR {world.keys['execute']}")]
    first, second = await both(django_requests, "POST", PATH, headers=headers, body=HI)
    assert first.status_code == second.status_code == 200


async def test_two_authorization_headers_are_joined_and_refused_as_on_the_route(
    world: World, django_requests: list[object]
) -> None:
    key = world.keys["execute"]
    headers = [bearer(key), bearer(key)]
    first, second = await both(django_requests, "POST", PATH, headers=headers, body=HI)
    assert first.status_code == 401
    assert_same(first, second)


@pytest.mark.parametrize(
    ("persona", "agent", "status", "kind"),
    [
        ("read", "helper", 403, "permission_denied"),  # no execute scope
        ("helper-only", "other", 404, "not_found"),  # outside the key's allow-list
        ("execute", "ghost", 404, "not_found"),  # no such agent
        ("admin", "ghost", 404, "not_found"),
        ("execute", "a%20b", 404, "not_found"),
    ],
)
async def test_scope_and_allow_list_refusals_match_the_route(
    world: World, django_requests: list[object], persona: str, agent: str, status: int, kind: str
) -> None:
    first, second = await both(
        django_requests,
        "POST",
        f"/api/v1/agents/{agent}/execute",
        headers=[bearer(world.keys[persona])],
        body=HI,
    )
    assert (first.status_code, first.json()["error"]["type"]) == (status, kind)
    assert_same(first, second)
    assert await executions() == 0


async def test_a_bad_body_from_a_key_without_the_scope_is_422_as_on_the_route(
    world: World, django_requests: list[object]
) -> None:
    # The route validates the body before its view checks the scope; so does the lean path.
    first, second = await both(
        django_requests, "POST", PATH, headers=[bearer(world.keys["read"])], body=b"{}"
    )
    assert first.status_code == 422
    assert_same(first, second)


@pytest.mark.parametrize("how", ["declared", "chunked", "understated"])
async def test_a_body_over_the_limit_is_the_routes_413(
    world: World, django_requests: list[object], settings: Any, how: str
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    big = json.dumps({"input": "x" * 5000}).encode()
    headers = [bearer(world.keys["execute"])]
    body: bytes | list[bytes] = big
    if how == "chunked":  # no Content-Length: the limit applies to what arrives
        body = [big[:1000], big[1000:3000], big[3000:]]
    elif how == "understated":  # a Content-Length under the limit does not let more in
        headers.append(("Content-Length", "100"))
    first, second = await both(
        django_requests, "POST", PATH, headers=headers, body=body, content_length=how == "declared"
    )
    assert first.status_code == 413
    assert first.json()["error"]["type"] == "request_too_large"
    assert_same(first, second)


async def test_a_body_at_the_limit_is_accepted_by_both(
    world: World, django_requests: list[object], settings: Any
) -> None:
    body = json.dumps({"input": "x" * 100}).encode()
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = len(body)
    first, second = await both(
        django_requests, "POST", PATH, headers=[bearer(world.keys["execute"])], body=body
    )
    assert first.status_code == second.status_code == 200


async def test_an_unauthenticated_oversized_body_is_401_first_as_on_the_route(
    world: World, django_requests: list[object], settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    first, second = await both(django_requests, "POST", PATH, body=b"x" * 5000)
    assert first.status_code == 401
    assert_same(first, second)


async def test_a_malformed_content_length_is_the_routes_500(
    world: World, django_requests: list[object]
) -> None:
    first, second = await both(
        django_requests,
        "POST",
        PATH,
        headers=[bearer(world.keys["execute"]), ("Content-Length", "lots")],
        body=HI,
        content_length=False,
    )
    assert first.status_code == 500
    assert_same(first, second)


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_the_content_type_is_not_checked_by_either(
    world: World, django_requests: list[object], content_type: str | None
) -> None:
    # The route parses the body as JSON whatever it is labelled; refusing here would differ.
    headers = [bearer(world.keys["execute"])]
    if content_type:
        headers.append(("Content-Type", content_type))
    first, second = await both(django_requests, "POST", PATH, headers=headers, body=HI)
    assert first.status_code == second.status_code == 200
    assert first.json().keys() == second.json().keys()
    assert first.semantic_headers().keys() == second.semantic_headers().keys()


# --- answers ---------------------------------------------------------------------------------


async def test_a_success_has_the_routes_shape_and_headers(
    world: World, django_requests: list[object]
) -> None:
    first, second = await both(
        django_requests, "POST", PATH, headers=[bearer(world.keys["execute"])], body=HI
    )
    assert first.status_code == second.status_code == 200
    assert first["Content-Type"] == "application/json; charset=utf-8"
    assert first.semantic_headers().keys() == second.semantic_headers().keys()
    assert first["X-Frame-Options"] == second["X-Frame-Options"] == "DENY"
    assert first["Content-Length"] == str(len(first.content))
    a, b = first.json(), second.json()
    assert list(a) == list(b)  # same fields, same order
    assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}
    assert a["execution_id"] != b["execution_id"]
    assert (a["status"], a["agent"], a["model"]) == (b["status"], b["agent"], b["model"])


async def test_a_duplicate_of_a_request_still_running_is_409_with_retry_after_on_both(
    world: World, django_requests: list[object]
) -> None:
    store = idempotency_store()
    scoped = f"{world.ids['execute']}:{hashlib.sha256(b'dup-1').hexdigest()}"
    assert (await store.claim(scoped, fingerprint("POST", PATH, HI))).outcome == "started"
    try:
        headers = [bearer(world.keys["execute"]), ("Idempotency-Key", "dup-1")]
        first, second = await both(django_requests, "POST", PATH, headers=headers, body=HI)
    finally:
        await store.release(scoped)
    assert_same(first, second)
    assert first.status_code == 409
    assert first.json()["error"]["type"] == "conflict"
    assert first["Retry-After"] == str(IN_PROGRESS_RETRY_AFTER_S)


async def test_a_degraded_execution_is_200_with_the_fallback_on_both(
    world: World, django_requests: list[object]
) -> None:
    first, second = await both(
        django_requests,
        "POST",
        "/api/v1/agents/failing/execute",
        headers=[bearer(world.keys["execute"])],
        body=HI,
    )
    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == second.json()["status"] == "degraded"
    assert first.json()["output"] == second.json()["output"]
    assert "retry-after" not in first.headers
    assert "retry-after" not in second.headers
    assert first.semantic_headers().keys() == second.semantic_headers().keys()


async def test_a_client_that_hangs_up_gets_nothing_and_its_execution_is_cancelled_on_both(
    world: World, django_requests: list[object]
) -> None:
    # The upstream takes 20 s: an answer could only come if the execution were not cancelled.
    for send in (lean, ninja):
        answer = await send(
            "POST",
            "/api/v1/agents/slow/execute",
            headers=[bearer(world.keys["execute"])],
            body=HI,
            hang_up=True,
        )
        assert answer.status_code == 0


# --- Idempotency-Key ------------------------------------------------------------------------


async def test_a_replay_answers_the_same_bytes_whichever_path_ran_it(
    world: World, django_requests: list[object]
) -> None:
    headers = [bearer(world.keys["execute"]), ("Idempotency-Key", "order-1")]
    ran = await lean("POST", PATH, headers=headers, body=HI)
    assert ran.status_code == 200
    replayed_by_route = await ninja("POST", PATH, headers=headers, body=HI)
    replayed_lean = await lean("POST", PATH, headers=headers, body=HI)
    assert replayed_by_route.content == replayed_lean.content == ran.content
    assert replayed_by_route.semantic_headers() == replayed_lean.semantic_headers()

    headers = [bearer(world.keys["execute"]), ("Idempotency-Key", "order-2")]
    ran = await ninja("POST", PATH, headers=headers, body=HI)
    replayed_lean = await lean("POST", PATH, headers=headers, body=HI)
    assert replayed_lean.content == ran.content
    assert ran.json()["execution_id"] != replayed_by_route.json()["execution_id"]


async def test_the_same_key_with_another_body_is_the_routes_422(
    world: World, django_requests: list[object]
) -> None:
    headers = [bearer(world.keys["execute"]), ("Idempotency-Key", "order-3")]
    assert (await lean("POST", PATH, headers=headers, body=HI)).status_code == 200
    first, second = await both(
        django_requests, "POST", PATH, headers=headers, body=b'{"input": "bye"}'
    )
    assert first.status_code == 422
    assert first.json()["error"]["type"] == "idempotency_mismatch"
    assert_same(first, second)


async def test_a_key_still_in_progress_is_the_routes_409(
    world: World, django_requests: list[object]
) -> None:
    from agents.backends import idempotency_store
    from agents.executions.idempotency import fingerprint

    # A first request with this key is running: it holds the claim in the shared store.
    scoped = f"{world.ids['execute']}:{hashlib.sha256(b'order-4').hexdigest()}"
    claim = await idempotency_store().claim(scoped, fingerprint("POST", PATH, HI))
    assert claim.outcome == "started"
    headers = [bearer(world.keys["execute"]), ("Idempotency-Key", "order-4")]
    first, second = await both(django_requests, "POST", PATH, headers=headers, body=HI)
    assert first.status_code == 409
    assert first.json()["error"]["type"] == "conflict"
    assert_same(first, second)
    await idempotency_store().release(scoped)


@pytest.mark.parametrize("value", ["", "   ", "k" * 256])
async def test_an_unusable_idempotency_key_is_the_routes_422(
    world: World, django_requests: list[object], value: str
) -> None:
    headers = [bearer(world.keys["execute"]), ("Idempotency-Key", value)]
    first, second = await both(django_requests, "POST", PATH, headers=headers, body=HI)
    assert first.status_code == 422
    assert "Idempotency-Key" in first.json()["error"]["message"]
    assert_same(first, second)


async def test_idempotency_keys_are_per_api_key_on_both(
    world: World, django_requests: list[object]
) -> None:
    mine = [bearer(world.keys["execute"]), ("Idempotency-Key", "shared")]
    theirs = [bearer(world.keys["helper-only"]), ("Idempotency-Key", "shared")]
    a = await lean("POST", PATH, headers=mine, body=HI)
    b = await lean("POST", PATH, headers=theirs, body=HI)
    c = await ninja("POST", PATH, headers=theirs, body=HI)
    assert a.json()["execution_id"] != b.json()["execution_id"] == c.json()["execution_id"]


# --- what Django answers before the route ----------------------------------------------------


async def test_a_host_outside_allowed_hosts_is_left_to_django(
    world: World, django_requests: list[object]
) -> None:
    first, second = await both(
        django_requests,
        "POST",
        PATH,
        headers=[bearer(world.keys["execute"])],
        body=HI,
        host="evil.example",
        lean_path=False,
    )
    assert first.status_code == 400
    assert_same(first, second)


async def test_plain_http_when_https_is_required_is_left_to_django(
    world: World, django_requests: list[object], settings: Any
) -> None:
    settings.SECURE_SSL_REDIRECT = True
    first, second = await both(
        django_requests,
        "POST",
        PATH,
        headers=[bearer(world.keys["execute"])],
        body=HI,
        lean_path=False,
        apps=rebuilt(),
    )
    assert first.status_code == 301
    assert first["Location"] == f"https://localhost{PATH}"
    assert_same(first, second)


async def test_over_https_the_hsts_header_is_the_routes(
    world: World, django_requests: list[object], settings: Any
) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    first, second = await both(
        django_requests,
        "POST",
        PATH,
        headers=[bearer("nope")],
        body=HI,
        scheme="https",
        apps=rebuilt(),
    )
    assert first["Strict-Transport-Security"] == "max-age=3600; includeSubDomains"
    assert_same(first, second)


async def test_behind_a_proxy_the_forwarded_scheme_decides_as_in_django(
    world: World, django_requests: list[object], settings: Any
) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 60
    headers = [bearer("nope"), ("X-Forwarded-Proto", "https, http")]
    apps = rebuilt()
    first, second = await both(django_requests, "POST", PATH, headers=headers, body=HI, apps=apps)
    assert first.status_code == 401
    assert first["Strict-Transport-Security"] == "max-age=60"
    assert_same(first, second)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", PATH),
        ("PUT", PATH),
        ("POST", PATH + "/"),
        ("POST", "/api/v1/agents/helper/execute/extra"),
        ("POST", "/api/v1/agents//execute"),
    ],
)
async def test_other_methods_and_paths_still_go_to_django(
    world: World, django_requests: list[object], method: str, path: str
) -> None:
    first, second = await both(
        django_requests,
        method,
        path,
        headers=[bearer(world.keys["execute"])],
        body=HI,
        lean_path=False,
    )
    assert_same(first, second)


async def test_the_openapi_document_still_describes_the_endpoint(world: World) -> None:
    answer = await lean("GET", "/api/v1/openapi.json")
    operation = answer.json()["paths"]["/api/v1/agents/{name}/execute"]["post"]
    assert operation["summary"] == "Run an agent now"
    assert {"200", "401", "403", "404", "409", "422"} <= set(operation["responses"])
