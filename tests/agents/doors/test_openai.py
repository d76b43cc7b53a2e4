"""The OpenAI-compatible endpoint, driven by the official ``openai`` SDK against a live server."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import openai
import pytest

from tests.live import free_port, manage, serve, wait_http

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
  - {name: down, kind: simulated, simulation: {latency_ms: 0, error_rate: 1, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: broken, provider: down, upstream_model: b-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m, max_tokens: 64, system_prompt: "Be brief."}
  - {name: scarce, model: m, rate_limit: {rpm: 1}}
  - {name: narrow, model: m, max_tokens: 64, rate_limit: {tpm: 10}}
  - {name: failing, model: broken, max_retries: 0}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """A live `manage.py serve` (embedded mode, its own SQLite) and two keys."""
    var = tmp_path_factory.mktemp("openai")
    manage(var, "migrate", "--noinput", "-v0")
    manage(var, "apply", "-f", "-", stdin=DOC)
    key = manage(var, "create_api_key", "--name", "sdk", "--scopes", "execute,read").strip()
    reader = manage(var, "create_api_key", "--name", "r", "--scopes", "read").strip()
    port = free_port()
    process = serve(var, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz")
        yield f"{base}/v1", key, reader
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def _client(server: tuple[str, str, str], key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0], api_key=key or server[1], max_retries=0)


def test_models_lists_the_agents(server: tuple[str, str, str]) -> None:
    names = sorted(model.id for model in _client(server).models.list())
    assert names == ["failing", "helper", "narrow", "scarce"]


def test_a_completion_answers_with_content_and_usage(server: tuple[str, str, str]) -> None:
    completion = _client(server).chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "Where is my order?"}]
    )
    assert completion.object == "chat.completion"
    assert completion.model == "helper"
    assert "Where is my order?" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_streaming_delivers_deltas_a_finish_reason_and_usage(
    server: tuple[str, str, str],
) -> None:
    stream = _client(server).chat.completions.create(
        model="helper",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream please" in text
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_the_async_client_works_too(server: tuple[str, str, str]) -> None:
    client = openai.AsyncOpenAI(base_url=server[0], api_key=server[1], max_retries=0)
    completion = await client.chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "async hello"}]
    )
    assert "async hello" in (completion.choices[0].message.content or "")
    await client.close()


def test_an_unknown_model_is_404_model_not_found(server: tuple[str, str, str]) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        _client(server).chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"


def test_a_bad_key_is_401(server: tuple[str, str, str]) -> None:
    with pytest.raises(openai.AuthenticationError):
        _client(server, "bw_not_a_real_key").models.list()


def test_a_key_without_execute_is_403(server: tuple[str, str, str]) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        _client(server, server[2]).chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "hi"}]
        )


def test_a_rate_limited_agent_answers_429_with_retry_after(server: tuple[str, str, str]) -> None:
    client = _client(server)
    client.chat.completions.create(model="scarce", messages=[{"role": "user", "content": "1"}])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="scarce", messages=[{"role": "user", "content": "2"}])
    assert caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60


def test_a_request_larger_than_the_tokens_per_minute_limit_is_a_400_not_a_500(
    server: tuple[str, str, str],
) -> None:
    """No minute could ever admit it: backing off cannot help (it crashed on Retry-After: inf)."""
    with pytest.raises(openai.BadRequestError) as caught:
        _client(server).chat.completions.create(
            model="narrow", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "rate_limit_exceeded"


def test_a_failing_upstream_degrades_to_a_503(server: tuple[str, str, str]) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        _client(server).chat.completions.create(
            model="failing", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 503


def test_max_tokens_above_the_agents_cap_is_refused(server: tuple[str, str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _client(server).chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "hi"}], max_tokens=65
        )
    assert "max_tokens" in str(caught.value)
