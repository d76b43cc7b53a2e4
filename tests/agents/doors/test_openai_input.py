"""``/v1/chat/completions`` is as strict about its input as the REST API: text that cannot be
stored or sent (NUL, lone surrogates), metadata over 8 KiB and numbers or flags of the wrong
JSON type are 400s in OpenAI's format naming the field, before anything runs or is charged.
And an agent whose model has no price under a budget answers an OpenAI error, not a 500.

In process (``console.asgi.application``), so the database can be asked what was written."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from agents.models import Execution, ModelDeployment
from budgets.models import SpendEntry
from tests.asgi_client import Answer, asgi_request

pytestmark = pytest.mark.django_db(transaction=True)

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: later-unpriced, provider: sim, upstream_model: u-1,
     input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m, max_tokens: 64, daily_budget_usd: 10}
  - {name: unpriced, model: later-unpriced, daily_budget_usd: 10}
"""


@pytest.fixture
async def key(settings: Any, tmp_path: Path) -> AsyncIterator[str]:
    settings.VAR_DIR = tmp_path

    def setup() -> str:
        config_apply(document=config_parse(DOC))
        return api_key_create(name="sdk", scopes=["execute"]).plaintext

    made = await sync_to_async(setup)()
    await sync_to_async(get_engine().config.reload)()
    yield made
    await engine_shutdown()
    await sync_to_async(connections.close_all)()


async def chat(key: str, body: dict[str, Any] | bytes) -> Answer:
    from console.asgi import application

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await asgi_request(
        application,
        "POST",
        "/v1/chat/completions",
        headers=[("authorization", f"Bearer {key}"), ("content-type", "application/json")],
        body=raw,
    )


def ask(**fields: Any) -> dict[str, Any]:
    return {"model": "helper", "messages": [{"role": "user", "content": "hi"}], **fields}


async def assert_refused(answer: Answer, param: str, words: str) -> None:
    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")
    assert words in error["message"]
    assert not await Execution.objects.aexists()
    assert not await SpendEntry.objects.aexists()


# --- text that cannot be stored or sent --------------------------------------------------------

CONTENT = b'{"model": "helper", "messages": [{"role": "user", "content": "%s"}]}'


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (CONTENT % b"a\\ud800b", "messages.0.content"),
        (CONTENT % b"a\\udfff", "messages.0.content"),
        (CONTENT % b"a\xed\xa0\x80b", "messages.0.content"),  # the surrogate's raw UTF-8 bytes
        (b'{"model": "helper", "messages": [{"role": "system", "content": "ok"}, '
         b'{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
         "messages.1.content.0.text"),
        (b'{"model": "helper", "messages": [{"role": "user", "content": "hi"}], '
         b'"metadata": {"ticket": "\\ud800"}}', "metadata.ticket"),
        (b'{"model": "helper", "messages": [{"role": "user", "content": "hi"}], '
         b'"user": "\\ud800"}', "user"),
    ],
)  # fmt: skip
async def test_it_refuses_a_lone_surrogate_naming_the_field(
    key: str, raw: bytes, param: str
) -> None:
    await assert_refused(await chat(key, raw), param, "must not contain a lone surrogate")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (ask(messages=[{"role": "user", "content": "a\u0000b"}]), "messages.0.content"),
        (ask(messages=[{"role": "system", "content": "\u0000"}, {"role": "user", "content": "hi"}]),
         "messages.0.content"),
        (ask(metadata={"ticket": "x\u0000"}), "metadata.ticket"),
        (ask(metadata={"k\u0000": "v"}), "metadata"),
        (ask(user="u\u0000"), "user"),
        (ask(tools=[{"type": "function", "function": {"name": "f", "description": "\u0000"}}]),
         "tools.0.function.description"),
    ],
)  # fmt: skip
async def test_it_refuses_a_nul_character_naming_the_field(
    key: str, body: dict[str, Any], param: str
) -> None:
    await assert_refused(await chat(key, body), param, "must not contain the NUL character")


async def test_an_escaped_backslash_before_u0000_is_plain_text_and_answered(key: str) -> None:
    answer = await chat(
        key, ask(messages=[{"role": "user", "content": "C:\\u0000 and \U0001f30a"}])
    )
    assert answer.status_code == 200, answer.content
    assert "C:\\u0000" in answer.json()["choices"][0]["message"]["content"]


async def test_json_that_is_broken_otherwise_keeps_the_parsers_message(key: str) -> None:
    answer = await chat(
        key, b'{"model": "helper", "messages": [{"role": "user", "content": "\\x"}]}'
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "body"
    assert "Invalid JSON" in answer.json()["error"]["message"]


# --- metadata and JSON types -------------------------------------------------------------------


async def test_metadata_over_8_kib_is_refused_as_on_rest(key: str) -> None:
    answer = await chat(key, ask(metadata={"k": "v" * 9000}))
    await assert_refused(answer, "metadata", "must be at most 8 KiB as JSON")


async def test_metadata_under_8_kib_is_accepted(key: str) -> None:
    answer = await chat(key, ask(metadata={"k": "v" * 8000}))
    assert answer.status_code == 200, answer.content


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", ["10", True, 10.0])
async def test_a_token_cap_that_is_not_a_json_integer_is_refused(
    key: str, field: str, value: Any
) -> None:
    await assert_refused(await chat(key, ask(**{field: value})), field, "valid integer")


@pytest.mark.parametrize(("field", "value"), [("stream", "true"), ("stream", 1), ("n", "1")])
async def test_flags_and_counts_of_the_wrong_json_type_are_refused(
    key: str, field: str, value: Any
) -> None:
    await assert_refused(await chat(key, ask(**{field: value})), field, "should be a valid")


async def test_an_integer_token_cap_is_still_honoured(key: str) -> None:
    answer = await chat(key, ask(max_tokens=3))
    assert answer.status_code == 200, answer.content
    assert answer.json()["choices"][0]["finish_reason"] == "length"


# --- a model without a price under a budget ----------------------------------------------------


async def test_an_unpriced_model_under_a_budget_is_an_openai_503_not_a_500(key: str) -> None:
    # apply and the API refuse this configuration; the admin or SQL can still write it.
    await ModelDeployment.objects.filter(name="later-unpriced").aupdate(
        input_usd_per_mtok=None, output_usd_per_mtok=None
    )
    await sync_to_async(get_engine().config.reload)(force=True)
    answer = await chat(key, ask(model="unpriced"))
    assert answer.status_code == 503, answer.content
    error = answer.json()["error"]
    assert error["type"] == "service_unavailable"
    assert error["code"] == "price_unknown"
    assert "no price for later-unpriced" in error["message"]
    assert not await SpendEntry.objects.aexists()
