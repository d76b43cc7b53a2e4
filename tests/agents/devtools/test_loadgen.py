from __future__ import annotations

import random
from collections import Counter

from aiohttp import web
from aiohttp.test_utils import TestServer

from agents.devtools.loadgen import REFERENCE_MIX, LoadStats, pick_question, run_load


async def test_it_offers_the_reference_mix_through_the_execute_api() -> None:
    seen: Counter[str] = Counter()
    questions: Counter[str] = Counter()
    auth: set[str] = set()

    async def execute(request: web.Request) -> web.Response:
        seen[request.match_info["name"]] += 1
        auth.add(request.headers.get("Authorization", ""))
        questions[(await request.json())["input"]] += 1
        return web.json_response({"status": "succeeded"})

    app = web.Application()
    app.router.add_post("/api/v1/agents/{name}/execute", execute)
    async with TestServer(app, host="127.0.0.1") as server:
        stats = await run_load(
            base_url=str(server.make_url("")).rstrip("/"),
            api_key="bw_test",
            rate=400.0,
            duration_s=2.0,
            seed=3,
        )
    total = sum(seen.values())
    assert total == stats.sent == stats.statuses["succeeded"]
    assert 400 <= total <= 1000  # Poisson arrivals at 400/s for 2 s, on a shared machine
    assert auth == {"Bearer bw_test"}
    share = seen["customer-support"] / total
    assert abs(share - 200_000 / sum(REFERENCE_MIX.values())) < 0.08
    assert set(seen) <= set(REFERENCE_MIX)
    # Some questions repeat, so the response cache has work.
    assert max(questions.values()) > 10


def test_questions_repeat_often_enough_for_a_cache() -> None:
    rng = random.Random(1)
    asked = Counter(pick_question("customer-support", rng) for _ in range(1000))
    assert asked.most_common(1)[0][1] > 300


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
