from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agents.devtools.loadgen import (
    CHAT_AGENTS,
    MODES,
    REFERENCE_MIX,
    LoadStats,
    Traffic,
    pick_question,
    run_load,
    stream_outcome,
)


async def test_it_offers_the_reference_mix_synchronously_queued_and_streamed() -> None:
    seen: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    auth: set[str] = set()

    async def execute(request: web.Request) -> web.Response:
        seen[request.match_info["name"]] += 1
        paths["execute"] += 1
        auth.add(request.headers.get("Authorization", ""))
        return web.json_response({"status": "succeeded"})

    async def queue(request: web.Request) -> web.Response:
        seen[request.match_info["name"]] += 1
        paths["executions"] += 1
        return web.json_response({"status": "queued"}, status=202)

    async def stream(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["stream"] is True
        seen[body["model"]] += 1
        paths["stream"] += 1
        return web.Response(text="data: [DONE]\n\n", content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/api/v1/agents/{name}/execute", execute)
    app.router.add_post("/api/v1/agents/{name}/executions", queue)
    app.router.add_post("/v1/chat/completions", stream)
    async with TestServer(app, host="127.0.0.1") as server:
        stats = await run_load(
            base_url=str(server.make_url("")).rstrip("/"),
            api_key="bw_test",
            rate=400.0,
            duration_s=2.0,
            seed=3,
        )
    total = sum(seen.values())
    assert total == stats.sent == sum(stats.statuses.values())
    # Poisson arrivals at 400/s for 2 s; a loaded machine falls behind (the mix itself is
    # checked without a clock below).
    assert 100 <= total <= 1000
    assert auth == {"Bearer bw_test"}
    assert set(seen) <= set(REFERENCE_MIX)
    assert stats.statuses["queued"] == paths["executions"] > 0
    assert stats.statuses["streamed"] == paths["stream"] > 0


def test_agents_and_modes_follow_the_reference_weights() -> None:
    traffic = Traffic(random.Random(2))
    requests = [traffic.next() for _ in range(20_000)]
    agents = Counter(r.agent for r in requests)
    modes = Counter(r.mode for r in requests)
    total = sum(REFERENCE_MIX.values())
    for agent, weight in REFERENCE_MIX.items():
        assert abs(agents[agent] / len(requests) - weight / total) < 0.01, agent
    for mode, share in MODES.items():
        assert abs(modes[mode] / len(requests) - share) < 0.01, mode


def test_chat_agents_continue_some_conversations_in_a_session() -> None:
    traffic = Traffic(random.Random(4), agents=["customer-support"])
    requests = [traffic.next() for _ in range(2000)]
    sessions = Counter(r.session_id for r in requests if r.session_id is not None)
    assert all(r.session_id is None for r in requests if r.mode != "sync")
    assert max(sessions.values()) > 1  # follow-ups
    assert len(sessions) > 1000  # most conversations are one question
    assert "customer-support" in CHAT_AGENTS


def test_other_agents_send_no_session() -> None:
    traffic = Traffic(random.Random(4), agents=["code-review"])
    assert all(traffic.next().session_id is None for _ in range(200))


def test_requests_go_to_the_door_of_their_mode() -> None:
    traffic = Traffic(random.Random(9))
    urls = {}
    for _ in range(200):
        request = traffic.next()
        url, body = request.call("http://h")
        urls[request.mode] = url
        if request.mode == "stream":
            assert body["model"] == request.agent
        else:
            assert body["input"] == request.text
    assert urls["stream"] == "http://h/v1/chat/completions"
    assert urls["queued"].endswith("/executions")
    assert urls["sync"].endswith("/execute")


def test_the_same_seed_sends_the_same_traffic() -> None:
    first = [Traffic(random.Random(5)).next() for _ in range(1)]
    assert first == [Traffic(random.Random(5)).next() for _ in range(1)]
    assert pick_question("code-review", random.Random(1)) == pick_question(
        "code-review", random.Random(1)
    )


def test_the_summary_reports_statuses_errors_and_latency() -> None:
    stats = LoadStats(sent=3)
    stats.statuses["succeeded"] = 2
    stats.http_errors[503] = 1
    stats.latencies_ms.extend([10.0, 20.0, 30.0])
    summary = stats.summary()
    assert "sent 3" in summary
    assert "succeeded 2" in summary
    assert "HTTP 503: 1" in summary
    assert "p50 20 ms" in summary


async def test_a_recorded_run_tags_each_request_and_retries_rest_with_the_same_key() -> None:
    keys: Counter[str] = Counter()
    tags: dict[str, str] = {}

    async def execute(request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers.get("Idempotency-Key", "")
        keys[key] += 1
        tags[key] = body["metadata"]["request"]
        if keys[key] == 1:  # the server dies under the first try: no HTTP answer
            assert request.transport is not None
            request.transport.close()
        return web.json_response({"execution_id": f"e-{key}", "status": "succeeded"})

    async def stream(request: web.Request) -> web.Response:
        body = await request.json()
        keys["stream " + body["metadata"]["request"]] += 1
        assert "Idempotency-Key" not in request.headers
        request.transport.close()  # type: ignore[union-attr]
        return web.Response(text="data: [DONE]\n\n", content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/api/v1/agents/{name}/execute", execute)
    app.router.add_post("/api/v1/agents/{name}/executions", execute)
    app.router.add_post("/v1/chat/completions", stream)
    records: list[dict[str, object]] = []
    async with TestServer(app, host="127.0.0.1") as server:
        stats = await run_load(
            base_url=str(server.make_url("")).rstrip("/"),
            api_key="bw_test",
            rate=200.0,
            duration_s=0.5,
            seed=3,
            record=records.append,
            run_id="t",
            retries=1,
        )
    assert len(records) == stats.sent > 0
    assert len({r["request"] for r in records}) == len(records)
    rest = [r for r in records if r["mode"] != "stream"]
    streams = [r for r in records if r["mode"] == "stream"]
    assert rest
    assert streams
    for r in rest:  # one retry, same key: the second try answered
        assert r["tries"] == 2
        assert keys[str(r["request"])] == 2
        assert tags[str(r["request"])] == r["request"]
        assert r["execution_id"] == f"e-{r['request']}"
        assert r["status"] == "succeeded"
    for r in streams:  # never retried: /v1 has no idempotency key
        assert r["tries"] == 1
        assert keys[f"stream {r['request']}"] == 1
        assert r["http"] is None
        assert r["execution_id"] is None


@pytest.mark.parametrize("retry_after", ["0.1", None])
async def test_a_retry_told_to_come_back_later_comes_back_until_it_is_answered(
    retry_after: str | None,
) -> None:
    tries: Counter[str] = Counter()

    async def execute(request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        tries[key] += 1
        if tries[key] == 1:  # the server dies under the first try
            assert request.transport is not None
            request.transport.close()
        if tries[key] in (2, 3):  # the first is "still in progress" for two more tries
            headers = {"Retry-After": retry_after} if retry_after else {}
            error = {"type": "conflict", "message": "still being processed"}
            return web.json_response({"error": error}, status=409, headers=headers)
        return web.json_response({"execution_id": f"e-{key}", "status": "succeeded"})

    app = web.Application()
    app.router.add_post("/api/v1/agents/{name}/execute", execute)
    app.router.add_post("/api/v1/agents/{name}/executions", execute)
    records: list[dict[str, object]] = []
    async with TestServer(app, host="127.0.0.1") as server:
        await run_load(
            base_url=str(server.make_url("")).rstrip("/"),
            api_key="bw_test",
            rate=50.0,
            duration_s=0.3,
            seed=3,
            agents=["data-analyst"],  # no chat agent: no stream
            record=records.append,
            run_id="t",
            retries=1,
        )
    rest = [r for r in records if r["mode"] != "stream"]
    assert rest
    for r in rest:
        if retry_after:  # resent after Retry-After, with the same key, until answered
            assert (r["tries"], r["http"], r["status"]) == (4, 200, "succeeded")
        else:  # no Retry-After: the 409 is the answer
            assert (r["tries"], r["http"]) == (2, 409)


def test_a_stream_is_complete_with_its_done_line_and_no_error_event() -> None:
    chunk = b'data: {"id": "chatcmpl-abc", "choices": []}\n\n'
    assert stream_outcome(chunk + b"data: [DONE]\n\n") == ("abc", True)
    assert stream_outcome(chunk) == ("abc", False)
    error = b'data: {"error": {"type": "server_error"}}\n\n'
    assert stream_outcome(chunk + error + b"data: [DONE]\n\n") == ("abc", False)


async def test_a_slow_loop_catches_up_so_the_offered_rate_is_the_one_asked_for() -> None:
    async def execute(request: web.Request) -> web.Response:
        return web.json_response({"status": "succeeded"})

    app = web.Application()
    app.router.add_post("/api/v1/agents/{name}/execute", execute)
    app.router.add_post("/api/v1/agents/{name}/executions", execute)
    app.router.add_post("/v1/chat/completions", execute)

    async def hog() -> None:  # a busy event loop: every sleep overshoots by about 20 ms
        while True:
            time.sleep(0.02)  # noqa: ASYNC251 - the point: it blocks the loop
            await asyncio.sleep(0)

    async with TestServer(app, host="127.0.0.1") as server:
        busy = asyncio.create_task(hog())
        try:
            stats = await run_load(
                base_url=str(server.make_url("")).rstrip("/"),
                api_key="bw_test",
                rate=200.0,
                duration_s=2.0,
                seed=3,
            )
        finally:
            busy.cancel()
    # 400 offered on average (Poisson); a loop that slept each gap would send about 50
    assert stats.sent >= 200
