"""The three front doors of an execution answer the same requests the same way (issue 11).

The doors: the lean REST door (``POST /api/v1/agents/{name}/execute``, ``agents.doors.rest``),
the OpenAI door (``/v1/chat/completions``, ``agents.doors.openai``), both in the one shell of
``agents.doors.shell``, and the ninja route for execute, Django's own (``agents.api``), reached
here through Django's handler as ``console/asgi.py`` hands it every request the lean doors do
not take. Each suite below runs on all three: the host check, the key, the scope, the body
limit, bad bodies (each in the door's own error format), the security headers and the request
id. And every door sends the security headers Django sends (issue 10, point 15): the lean
doors build theirs with Django's own middleware (``agents.doors.shell.security_headers``), so
a header middleware added to settings, or a setting changed, reaches them without a copy to
keep in step.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from agents.models import ApiKey
from core.request_id import current_request_id
from tests.asgi_client import FRAMING, PER_REQUEST, Answer, asgi_request

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
PER_RESPONSE = (
    FRAMING
    | PER_REQUEST
    | {
        "content-type",
        "content-length",
        "vary",
        "cache-control",
        "expires",
        "allow",
        "www-authenticate",
        "retry-after",
        "set-cookie",
    }
)
SECURITY = {
    "content-security-policy",
    "cross-origin-opener-policy",
    "referrer-policy",
    "x-content-type-options",
    "x-frame-options",
}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Door:
    name: str
    path: str
    ok: bytes  # a body it runs
    bad_schema: bytes  # JSON its schema refuses
    schema_status: int  # what it answers that with
    openai: bool  # OpenAI's error format, else the REST API's
    lean: bool  # a lean door, else Django's route
    errors: dict[str, str]  # refusal -> the error type it is answered with

    def app(self, django: Any) -> Any:
        """This door's ASGI app, ``django`` answering what it hands to Django."""
        from agents.doors import openai, rest

        if not self.lean:
            return django
        return (openai.lean_app if self.openai else rest.lean_app)(fallback=django)


REST_ERRORS = {
    "401": "authentication_error",
    "403": "permission_denied",
    "413": "request_too_large",
    "json": "invalid_request",
    "schema": "validation_error",
}
EXECUTE = "/api/v1/agents/helper/execute"
DOORS = [
    Door("rest", EXECUTE, b'{"input": "hi"}', b'{"input": 5}', 422, False, True, REST_ERRORS),
    Door("ninja", EXECUTE, b'{"input": "hi"}', b'{"input": 5}', 422, False, False, REST_ERRORS),
    Door(
        "openai",
        "/v1/chat/completions",
        b'{"model": "helper", "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "helper", "messages": []}',
        400,
        True,
        True,
        {
            "401": "invalid_request_error",
            "403": "permission_error",
            "413": "invalid_request_error",
            "json": "invalid_request_error",
            "schema": "invalid_request_error",
        },
    ),
]


@pytest.fixture(params=DOORS, ids=[door.name for door in DOORS])
def door(request: pytest.FixtureRequest) -> Door:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def keys(settings: Any, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    settings.VAR_DIR = tmp_path

    def setup() -> dict[str, str]:
        config_apply(document=config_parse(DOC))
        made = {
            "admin": api_key_create(name="all", scopes=["admin"]),
            "execute": api_key_create(name="execute", scopes=["execute"]),
            "read": api_key_create(name="read", scopes=["read"]),
            "revoked": api_key_create(name="revoked", scopes=["execute"]),
        }
        ApiKey.objects.filter(name="revoked").update(revoked_at=timezone.now())
        return {name: created.plaintext for name, created in made.items()}

    plaintext = await sync_to_async(setup)()
    await sync_to_async(get_engine().config.reload)()
    yield plaintext
    await engine_shutdown()


def _django() -> Any:
    """A Django handler built now: its middleware reads the settings when it is loaded."""
    from django.core.handlers.asgi import ASGIHandler

    return ASGIHandler()


def bearer(key: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {key}")


async def send(
    door: Door, *, headers: list[tuple[str, str]], body: bytes | None = None, **kwargs: Any
) -> Answer:
    app = door.app(_django())
    return await asgi_request(
        app, "POST", door.path, headers=headers, body=door.ok if body is None else body, **kwargs
    )


def assert_refusal(door: Door, answer: Answer, status: int, kind: str) -> dict[str, Any]:
    """A refusal in the door's own format: OpenAI's for /v1, the REST API's for the others."""
    assert answer.status_code == status, answer.content
    assert answer["content-type"].startswith("application/json")
    error = answer.json()["error"]
    fields = {"message", "type", "param", "code"} if door.openai else {"type", "message"}
    assert set(error) == fields
    assert error["type"] == door.errors[kind]
    assert isinstance(error["message"], str)
    assert error["message"]
    return error  # type: ignore[no-any-return]


# --- the host -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("debug", "allowed", "host", "refused"),
    [
        (False, None, "evil.example", True),
        (False, None, "localhost:8000", False),
        (False, ["api.example"], "api.example:443", False),
        (False, ["api.example"], "localhost", True),
        (False, [".example.com"], "eu.example.com", False),
        (False, [], "localhost", True),  # nothing allowed without DEBUG
        (True, [], "app.localhost", False),  # DEBUG allows the local names, as in Django
        (True, [], "evil.example", True),
        (False, None, "bad host!", True),
    ],
)
async def test_a_host_outside_allowed_hosts_is_djangos_400_on_every_door(
    door: Door,
    keys: dict[str, str],
    settings: Any,
    debug: bool,
    allowed: list[str] | None,
    host: str,
    refused: bool,
) -> None:
    settings.DEBUG = debug
    if allowed is not None:
        settings.ALLOWED_HOSTS = allowed
    answer = await send(door, headers=[bearer(keys["execute"])], host=host)
    if not refused:
        assert answer.status_code == 200
        return
    # Django's own answer to the same request, whichever door it came in by.
    django = await asgi_request(
        _django(), "POST", door.path, headers=[bearer(keys["execute"])], body=door.ok, host=host
    )
    assert answer.status_code == django.status_code == 400
    assert answer["content-type"] == django["content-type"]
    if not debug:  # DEBUG's technical page differs from one answer to the next
        assert answer.content == django.content
        assert answer.semantic_headers() == django.semantic_headers()
    assert GENERATED_ID.fullmatch(answer["x-request-id"])


async def test_plain_http_is_redirected_when_https_is_required_on_every_door(
    door: Door, keys: dict[str, str], settings: Any
) -> None:
    settings.SECURE_SSL_REDIRECT = True
    answer = await send(door, headers=[bearer(keys["execute"])])
    assert answer.status_code == 301
    assert answer["location"] == f"https://localhost{door.path}"
    over_https = await send(door, headers=[bearer(keys["execute"])], scheme="https")
    assert over_https.status_code == 200


# --- the key and its scope ------------------------------------------------------------------


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
        "Bearer  {execute}",  # two spaces: the token is " bw_...", as ninja reads it
        "Bearer {revoked}",
    ],
)
async def test_a_missing_invalid_or_revoked_key_is_401_on_every_door(
    door: Door, keys: dict[str, str], authorization: str | None
) -> None:
    headers = [] if authorization is None else [("Authorization", authorization.format(**keys))]
    answer = await send(door, headers=headers)
    error = assert_refusal(door, answer, 401, "401")
    assert answer["www-authenticate"] == "Bearer"
    if door.openai:
        assert error["code"] == "invalid_api_key"


async def test_a_key_in_the_query_string_is_not_a_credential_on_any_door(
    door: Door, keys: dict[str, str]
) -> None:
    # The websockets take ?key= (a browser cannot set their headers); on HTTP a key belongs in
    # the Authorization header, where proxies and access logs do not keep it.
    app = door.app(_django())
    answer = await asgi_request(app, "POST", f"{door.path}?key={keys['execute']}", body=door.ok)
    assert_refusal(door, answer, 401, "401")


async def test_a_key_without_the_execute_scope_is_403_on_every_door(
    door: Door, keys: dict[str, str]
) -> None:
    answer = await send(door, headers=[bearer(keys["read"])])
    error = assert_refusal(door, answer, 403, "403")
    assert "'execute'" in error["message"]


# --- the body -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["declared", "chunked"])
async def test_a_body_over_the_limit_is_413_on_every_door(
    door: Door, keys: dict[str, str], settings: Any, how: str
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    big = door.ok.replace(b'"hi"', json.dumps("x" * 5000).encode())
    body: bytes | list[bytes] = big
    if how == "chunked":  # no Content-Length: the limit applies to what arrives
        body = [big[:1000], big[1000:3000], big[3000:]]
    app = door.app(_django())
    answer = await asgi_request(
        app,
        "POST",
        door.path,
        headers=[bearer(keys["execute"])],
        body=body,
        content_length=how == "declared",
    )
    assert_refusal(door, answer, 413, "413")


async def test_a_body_at_the_limit_is_taken_on_every_door(
    door: Door, keys: dict[str, str], settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = len(door.ok)
    answer = await send(door, headers=[bearer(keys["execute"])])
    assert answer.status_code == 200


@pytest.mark.parametrize("body", [b"{not json", b'{"input": "hi"', b"\xff\xfe"])
async def test_a_body_that_is_not_json_is_400_on_every_door(
    door: Door, keys: dict[str, str], body: bytes
) -> None:
    answer = await send(door, headers=[bearer(keys["execute"])], body=body)
    assert_refusal(door, answer, 400, "json")


async def test_a_body_its_schema_refuses_is_the_doors_validation_error(
    door: Door, keys: dict[str, str]
) -> None:
    answer = await send(door, headers=[bearer(keys["execute"])], body=door.bad_schema)
    error = assert_refusal(door, answer, door.schema_status, "schema")
    field = "messages" if door.openai else "input"
    assert error["message"].startswith(f"{field}: ")
    if door.openai:
        assert error["param"] == field


# --- the headers ----------------------------------------------------------------------------


def _security(answer: Answer) -> dict[str, str]:
    return {k: v for k, v in answer.headers.items() if k not in PER_RESPONSE}


async def _each_answer(door: Door, keys: dict[str, str], scheme: str) -> dict[str, Answer]:
    """A success and each refusal, through ``door``."""
    execute = [bearer(keys["execute"])]
    cases: dict[str, tuple[list[tuple[str, str]], bytes]] = {
        "200": (execute, door.ok),
        "401": ([], door.ok),
        "403": ([bearer(keys["read"])], door.ok),
        "413": (execute, b"x" * 5000),
        "json": (execute, b"{not json"),
        "schema": (execute, door.bad_schema),
    }
    app = door.app(_django())
    answers = {}
    for name, (headers, body) in cases.items():
        answers[name] = await asgi_request(
            app, "POST", door.path, headers=headers, body=body, scheme=scheme
        )
    return answers


@pytest.fixture
def https(settings: Any) -> None:
    """BREAKWATER_HTTPS's security settings (HSTS); each test builds its Django after this."""
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_every_answer_of_every_door_carries_the_security_headers_django_sends(
    door: Door, keys: dict[str, str], settings: Any, https: None, scheme: str
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    reference = _security(
        await asgi_request(
            _django(), "GET", "/api/v1/agents", headers=[bearer(keys["admin"])], scheme=scheme
        )
    )
    expected = SECURITY | ({"strict-transport-security"} if scheme == "https" else set())
    assert set(reference) == expected
    assert "'unsafe-inline'" not in reference["content-security-policy"]
    answers = await _each_answer(door, keys, scheme)
    assert answers["200"].status_code == 200
    for name, answer in answers.items():
        assert _security(answer) == reference, name


async def test_the_lean_doors_follow_a_change_of_the_security_settings(
    door: Door, keys: dict[str, str], settings: Any
) -> None:
    settings.SECURE_REFERRER_POLICY = "no-referrer"
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    for name, answer in (await _each_answer(door, keys, "http")).items():
        assert answer["referrer-policy"] == "no-referrer", name
        assert answer["x-frame-options"] == "SAMEORIGIN", name


async def test_other_django_routes_and_v1_answers_carry_the_same_headers(
    keys: dict[str, str],
) -> None:
    # The rest of /v1 (its own 404, the models list) and a console page, beside the doors.
    from agents.doors import openai

    django = _django()
    v1 = openai.lean_app(fallback=django)
    auth = [bearer(keys["admin"])]
    reference = _security(await asgi_request(django, "GET", "/api/v1/agents", headers=auth))
    answers = {
        "v1 models": await asgi_request(v1, "GET", "/v1/models", headers=auth),
        "v1 404": await asgi_request(v1, "GET", "/v1/nothing", headers=auth),
        "v1 405": await asgi_request(v1, "GET", "/v1/chat/completions", headers=auth),
        "django 401": await asgi_request(django, "GET", "/api/v1/agents"),
        "login page": await asgi_request(django, "GET", "/login/"),
    }
    assert answers["v1 models"].status_code == 200
    for name, answer in answers.items():
        assert _security(answer) == reference, name
        assert GENERATED_ID.fullmatch(answer["x-request-id"]), name


# --- the request id -------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["req-123", "a.b:c_d-E", "x" * 64])
async def test_a_sane_request_id_is_echoed_on_every_answer_of_every_door(
    door: Door, keys: dict[str, str], request_id: str
) -> None:
    execute = [bearer(keys["execute"]), ("X-Request-ID", request_id)]
    for headers, expected in [(execute, 200), ([("X-Request-ID", request_id)], 401)]:
        answer = await send(door, headers=headers)
        assert answer.status_code == expected
        assert answer["x-request-id"] == request_id


@pytest.mark.parametrize(
    "request_id", [None, "", "x" * 65, "has space", "a,b", "<script>", "é", "id\r\nx: y"]
)
async def test_without_a_sane_request_id_each_answer_gets_a_new_one_on_every_door(
    door: Door, keys: dict[str, str], request_id: str | None
) -> None:
    headers = [bearer(keys["execute"])]
    if request_id is not None:
        headers.append(("X-Request-ID", request_id))
    first = await send(door, headers=headers)
    second = await send(door, headers=headers)
    assert first.status_code == second.status_code == 200
    assert GENERATED_ID.fullmatch(first["x-request-id"])
    assert GENERATED_ID.fullmatch(second["x-request-id"])
    assert first["x-request-id"] != second["x-request-id"]


async def test_the_shell_binds_the_request_id_for_the_doors_code() -> None:
    from agents.doors.shell import Receive, Request, Responder, lean_door

    seen: list[str] = []

    async def handle(request: Request, receive: Receive, out: Responder) -> None:
        seen.append(current_request_id())
        await out.json(200, b"{}")

    async def django(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a request for the door went to Django")

    app = lean_door(handle, fallback=django)
    echoed = await asgi_request(app, "GET", "/x", headers=[("X-Request-ID", "trace-1")])
    made = await asgi_request(app, "GET", "/x")
    assert seen == ["trace-1", made["x-request-id"]]
    assert echoed["x-request-id"] == "trace-1"
    assert current_request_id() == ""  # unbound once the request is answered


# --- the doors read the same key the same way ----------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        (None, None),
        ("", None),
        ("Basic abc", None),
        ("Bearer", ""),
        ("Bearer abc", "abc"),
        ("bEaReR abc", "abc"),
        ("Bearer  abc", " abc"),
        ("Bearer abc ", "abc "),
        ("Bearer abc,Bearer abc", "abc,Bearer abc"),  # two headers, joined as Django joins them
    ],
)
def test_the_bearer_token_is_read_as_ninja_reads_it(
    authorization: str | None, token: str | None
) -> None:
    from django.test import RequestFactory
    from ninja.security import HttpBearer

    from agents.doors.auth import bearer_token

    class Ninja(HttpBearer):
        def authenticate(self, request: Any, token: str) -> str:
            return token

    request = RequestFactory().post("/")
    if authorization is not None:
        request.META["HTTP_AUTHORIZATION"] = authorization
    assert bearer_token(authorization) == token
    assert Ninja()(request) == token
