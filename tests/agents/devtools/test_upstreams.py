from __future__ import annotations

import asyncio

import aiohttp
import pytest
import yaml
from django.conf import settings

from agents.devtools.upstreams import (
    BACKGROUND_ERROR_RATE,
    DEMO_UPSTREAMS,
    OUTAGE_TARGETS,
    DemoUpstreams,
    OutageSchedule,
    Upstream,
    provider_urls,
    run_outages,
)


def test_every_provider_of_the_demo_config_is_a_demo_upstream() -> None:
    with open(f"{settings.BASE_DIR}/demo/breakwater.yaml") as handle:
        providers = yaml.safe_load(handle)["providers"]
    assert {p["name"]: p["base_url"] for p in providers} == provider_urls()
    assert {p["name"]: p["kind"] for p in providers} == {u.provider: u.kind for u in DEMO_UPSTREAMS}


def test_outages_come_every_few_minutes_last_30_to_45_s_and_rotate() -> None:
    schedule = OutageSchedule()
    outages = [schedule.outage(n) for n in range(10)]
    assert [o.start_s for o in outages[:3]] == [90.0, 330.0, 570.0]
    assert all(30 <= o.end_s - o.start_s <= 45 for o in outages)
    assert [o.providers for o in outages[:5]] == list(OUTAGE_TARGETS)
    assert outages[5].providers == OUTAGE_TARGETS[0]
    assert [o.slow for o in outages[:3]] == [False, True, False]


def test_the_outage_under_way_is_found_by_elapsed_time() -> None:
    schedule = OutageSchedule(every_s=100, min_s=10, max_s=10, first_s=50)
    assert schedule.at(49.9) is None
    first = schedule.at(50)
    assert first is not None
    assert first.index == 0
    assert schedule.at(60) is None
    second = schedule.at(155)
    assert second is not None
    assert second.index == 1


def test_the_same_seed_gives_the_same_outages_and_another_seed_others() -> None:
    assert OutageSchedule(seed=3).outage(4) == OutageSchedule(seed=3).outage(4)
    lengths = {OutageSchedule(seed=s).outage(0).end_s for s in range(5)}
    assert len(lengths) > 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_s": 0}, "outage length"),
        ({"min_s": 50, "max_s": 40}, "outage length"),
        ({"every_s": 40}, "outage every"),
        ({"first_s": -1}, "first outage"),
        ({"targets": ()}, "outage targets"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_setting(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        OutageSchedule(**kwargs)  # type: ignore[arg-type]


def test_the_upstreams_fail_in_the_background_at_1_5_percent() -> None:
    assert {u.faults.error_rate for u in DEMO_UPSTREAMS} == {BACKGROUND_ERROR_RATE}
    assert len({u.faults.seed for u in DEMO_UPSTREAMS}) == len(DEMO_UPSTREAMS)


async def test_an_outage_makes_its_upstream_fail_and_its_end_restores_it() -> None:
    one = DEMO_UPSTREAMS[0]
    upstreams = DemoUpstreams((Upstream(one.provider, one.kind, 0, one.faults),))
    await upstreams.start()
    server = upstreams.servers[one.provider]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    try:
        schedule = OutageSchedule(
            every_s=2, min_s=1, max_s=1, first_s=0, targets=((one.provider,),)
        )
        clock = [0.0]
        changes: list[str] = []
        statuses: list[int] = []
        async with aiohttp.ClientSession() as session:

            async def sleep(seconds: float) -> None:
                # Fake time: the sleep advances the clock; ask the upstream once per step.
                clock[0] += seconds
                async with session.post(
                    f"{server.url}/v1/chat/completions",
                    json=body,
                    headers={"x-fakellm-fault": "latency=0"},
                ) as response:
                    statuses.append(response.status)
                if len(changes) >= 3:
                    raise asyncio.CancelledError

            with pytest.raises(asyncio.CancelledError):
                await run_outages(
                    upstreams,
                    schedule,
                    monotonic=lambda: clock[0],
                    sleep=sleep,
                    on_change=changes.append,
                )
        # The first sleep runs before the outage, the second during it, the third after it.
        assert statuses[1] == 503
        assert "outage 1:" in changes[0]
        assert "over" in changes[1]
        assert server.state.faults.config == one.faults  # back to its start-up faults
    finally:
        await upstreams.close()
