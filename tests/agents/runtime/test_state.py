"""One suite for both :class:`~agents.runtime.state.StateStore` implementations.

Every test runs on :class:`MemoryState` and on :class:`RedisState` (a fresh key prefix per test;
under ``BREAKWATER_REQUIRE_SERVICES=1`` a missing Redis fails the Redis half). Time is a
:class:`FakeClock` shared by the test and the store, so nothing sleeps.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agents.runtime.clock import FakeClock
from agents.runtime.memory import MemoryState
from agents.runtime.redis_state import RedisState
from agents.runtime.redis_wire import RedisWire
from agents.runtime.state import (
    Abandon,
    Admission,
    AdmitRequest,
    AttemptResult,
    BreakerConfig,
    BreakerState,
    BudgetHold,
    BudgetWindow,
    Candidate,
    Completion,
    Outcome,
    RateLimit,
    StateStore,
    Transition,
    WindowInit,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
KEY = "agent:support"
CFG = BreakerConfig(
    failure_threshold=3,
    recovery_timeout_s=60.0,
    half_open_max_calls=2,
    window_size=10,
    minimum_calls=100,
    probe_timeout_s=30.0,
)
NO_BREAKER = BreakerConfig(failure_threshold=1_000_000, minimum_calls=1_000_000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# redis: the function library (FCALL), as in production; redis-scripts: the same Lua as EVALSHA
# scripts, what RedisState falls back to on a Redis without Functions.
@pytest.fixture(params=["memory", "redis", "redis-scripts"])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryState(clock)
        return
    url: str = request.getfixturevalue("redis_url")
    client = aioredis.Redis.from_url(url)
    wire = RedisWire(url)  # the hot-path client, as in production
    prefix = f"bwtest:{uuid.uuid4().hex}"
    try:
        yield RedisState(wire, prefix=prefix, clock=clock, scripts=request.param == "redis-scripts")
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await wire.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def fail(store: StateStore, times: int, *, key: str = KEY, cfg: BreakerConfig = CFG) -> None:
    for _ in range(times):
        await store.breaker_record(key, cfg, Outcome.FAILURE, 0.1, False)


async def open_breaker(store: StateStore, *, key: str = KEY, cfg: BreakerConfig = CFG) -> None:
    await fail(store, cfg.failure_threshold, key=key, cfg=cfg)
    assert (await store.breaker_snapshot(key, cfg)).state == OPEN


def moved(
    clock: FakeClock, frm: BreakerState, to: BreakerState, reason: str, key: str = KEY
) -> Transition:
    return Transition(key, frm, to, clock.now(), reason)


# --- breaker: closed -> open ---


async def test_it_opens_at_exactly_failure_threshold_consecutive_failures(
    store: StateStore, clock: FakeClock
) -> None:
    await fail(store, 2)
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.consecutive_failures) == (CLOSED, 2)

    assert await store.breaker_record(KEY, CFG, Outcome.FAILURE, 0.1, False) == (
        moved(clock, CLOSED, OPEN, "3 consecutive failures"),
    )
    snap = await store.breaker_snapshot(KEY, CFG)
    assert snap.state == OPEN
    assert snap.open_until == clock.now() + 60.0
    assert (snap.consecutive_failures, snap.window_calls) == (0, 0)


async def test_a_success_resets_the_consecutive_failure_count(store: StateStore) -> None:
    await fail(store, 2)
    await store.breaker_record(KEY, CFG, Outcome.SUCCESS, 0.1, False)
    await fail(store, 2)
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.consecutive_failures) == (CLOSED, 2)
    await fail(store, 1)
    assert (await store.breaker_snapshot(KEY, CFG)).state == OPEN


async def test_an_ignored_outcome_neither_counts_nor_resets(store: StateStore) -> None:
    await fail(store, 2)
    assert await store.breaker_record(KEY, CFG, Outcome.IGNORED, 0.1, False) == ()
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.consecutive_failures, snap.window_calls) == (2, 2)


async def test_it_opens_on_the_failure_rate_once_minimum_calls_are_in_the_window(
    store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(
        failure_threshold=100, window_size=10, minimum_calls=4, failure_rate_threshold=0.5
    )
    for outcome in (Outcome.FAILURE, Outcome.SUCCESS, Outcome.FAILURE):
        assert await store.breaker_record(KEY, cfg, outcome, 0.1, False) == ()
    # 2 of 3 failed, but 3 calls are fewer than minimum_calls
    assert (await store.breaker_snapshot(KEY, cfg)).state == CLOSED
    assert await store.breaker_record(KEY, cfg, Outcome.SUCCESS, 0.1, False) == (
        moved(clock, CLOSED, OPEN, "failure rate 2/4"),
    )


async def test_it_opens_on_the_slow_call_rate(store: StateStore, clock: FakeClock) -> None:
    cfg = BreakerConfig(
        failure_threshold=100,
        window_size=10,
        minimum_calls=4,
        failure_rate_threshold=1.0,
        slow_call_s=1.0,
        slow_call_rate_threshold=0.5,
    )
    for duration in (2.0, 1.0, 0.5):  # exactly slow_call_s is not slow
        assert await store.breaker_record(KEY, cfg, Outcome.SUCCESS, duration, False) == ()
    snap = await store.breaker_snapshot(KEY, cfg)
    assert (snap.state, snap.window_calls, snap.window_slow) == (CLOSED, 3, 1)
    assert await store.breaker_record(KEY, cfg, Outcome.SUCCESS, 1.5, False) == (
        moved(clock, CLOSED, OPEN, "slow-call rate 2/4"),
    )


async def test_the_window_keeps_only_the_last_window_size_outcomes(store: StateStore) -> None:
    cfg = BreakerConfig(
        failure_threshold=100, window_size=4, minimum_calls=4, failure_rate_threshold=0.75
    )
    for outcome in (Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS, Outcome.SUCCESS):
        await store.breaker_record(KEY, cfg, outcome, 0.1, False)
    await store.breaker_record(KEY, cfg, Outcome.SUCCESS, 0.1, False)
    snap = await store.breaker_snapshot(KEY, cfg)
    assert (snap.state, snap.window_calls, snap.window_failures) == (CLOSED, 4, 1)
    await fail(store, 2, cfg=cfg)  # S S F F: 2/4 < 0.75
    assert (await store.breaker_snapshot(KEY, cfg)).state == CLOSED
    await fail(store, 1, cfg=cfg)  # S F F F: 3/4
    assert (await store.breaker_snapshot(KEY, cfg)).state == OPEN


# --- open -> half-open -> closed / open ---


async def test_an_open_breaker_rejects_with_the_remaining_recovery_time(
    store: StateStore, clock: FakeClock
) -> None:
    await open_breaker(store)
    clock.advance(25.0)
    assert await store.breaker_acquire(KEY, CFG) == (False, False, 35.0, ())
    clock.advance(34.5)
    assert await store.breaker_acquire(KEY, CFG) == (False, False, 0.5, ())


async def test_after_recovery_it_lets_exactly_half_open_max_calls_probes_through(
    store: StateStore, clock: FakeClock
) -> None:
    await open_breaker(store)
    clock.advance(60.0)
    assert await store.breaker_acquire(KEY, CFG) == (
        True,
        True,
        0.0,
        (moved(clock, OPEN, HALF_OPEN, "recovery timeout"),),
    )
    assert await store.breaker_acquire(KEY, CFG) == (True, True, 0.0, ())
    clock.advance(5.0)
    assert await store.breaker_acquire(KEY, CFG) == (False, False, 25.0, ())
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.probes_in_flight, snap.open_until) == (HALF_OPEN, 2, None)


async def test_all_probes_succeeding_closes_it(store: StateStore, clock: FakeClock) -> None:
    await open_breaker(store)
    clock.advance(60.0)
    await store.breaker_acquire(KEY, CFG)
    await store.breaker_acquire(KEY, CFG)
    assert await store.breaker_record(KEY, CFG, Outcome.SUCCESS, 0.1, True) == ()
    assert (await store.breaker_snapshot(KEY, CFG)).probes_in_flight == 1
    assert await store.breaker_record(KEY, CFG, Outcome.SUCCESS, 0.1, True) == (
        moved(clock, HALF_OPEN, CLOSED, "half-open probes succeeded"),
    )
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.consecutive_failures, snap.window_calls) == (CLOSED, 0, 0)
    assert await store.breaker_acquire(KEY, CFG) == (True, False, 0.0, ())


async def test_a_failing_probe_reopens_it(store: StateStore, clock: FakeClock) -> None:
    await open_breaker(store)
    clock.advance(60.0)
    await store.breaker_acquire(KEY, CFG)
    await store.breaker_acquire(KEY, CFG)
    await store.breaker_record(KEY, CFG, Outcome.SUCCESS, 0.1, True)
    clock.advance(1.0)
    assert await store.breaker_record(KEY, CFG, Outcome.FAILURE, 0.1, True) == (
        moved(clock, HALF_OPEN, OPEN, "half-open probe failed"),
    )
    assert (await store.breaker_snapshot(KEY, CFG)).open_until == clock.now() + 60.0
    assert await store.breaker_acquire(KEY, CFG) == (False, False, 60.0, ())


async def test_an_ignored_probe_frees_its_slot(store: StateStore, clock: FakeClock) -> None:
    cfg = BreakerConfig(failure_threshold=1, half_open_max_calls=1, probe_timeout_s=30.0)
    await open_breaker(store, cfg=cfg)
    clock.advance(60.0)
    assert (await store.breaker_acquire(KEY, cfg))[:2] == (True, True)
    assert (await store.breaker_acquire(KEY, cfg))[:2] == (False, False)
    assert await store.breaker_record(KEY, cfg, Outcome.IGNORED, 0.1, True) == ()
    assert (await store.breaker_snapshot(KEY, cfg)).state == HALF_OPEN
    assert await store.breaker_acquire(KEY, cfg) == (True, True, 0.0, ())


async def test_probes_with_no_answer_within_probe_timeout_reopen_it(
    store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(
        failure_threshold=1, recovery_timeout_s=60.0, half_open_max_calls=1, probe_timeout_s=10.0
    )
    await open_breaker(store, cfg=cfg)
    clock.advance(60.0)
    await store.breaker_acquire(KEY, cfg)
    clock.advance(9.5)
    assert await store.breaker_acquire(KEY, cfg) == (False, False, 0.5, ())
    clock.advance(0.5)
    assert await store.breaker_acquire(KEY, cfg) == (
        False,
        False,
        60.0,
        (moved(clock, HALF_OPEN, OPEN, "half-open probes timed out"),),
    )
    snap = await store.breaker_snapshot(KEY, cfg)
    assert (snap.state, snap.open_until) == (OPEN, clock.now() + 60.0)


async def test_an_open_breaker_always_says_until_when_it_is_open(
    store: StateStore, clock: FakeClock
) -> None:
    await open_breaker(store)
    opened_until = clock.now() + 60.0
    for wait in (0.0, 30.0, 29.5):
        clock.advance(wait)
        snap = await store.breaker_snapshot(KEY, CFG)
        assert (snap.state, snap.open_until) == (OPEN, opened_until)


async def test_past_its_recovery_time_an_open_breaker_reads_half_open_without_moving(
    store: StateStore, clock: FakeClock
) -> None:
    await open_breaker(store)
    clock.advance(60.0)
    for _ in range(2):  # a read changes nothing: the second one says the same
        snap = await store.breaker_snapshot(KEY, CFG)
        assert (snap.state, snap.open_until, snap.probes_in_flight) == (HALF_OPEN, None, 0)
    clock.advance(3600.0)  # however long nobody calls
    assert (await store.breaker_snapshot(KEY, CFG)).state == HALF_OPEN
    # The store itself still moves on the next acquire, which takes the first probe.
    assert await store.breaker_acquire(KEY, CFG) == (
        True,
        True,
        0.0,
        (moved(clock, OPEN, HALF_OPEN, "recovery timeout"),),
    )
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.open_until, snap.probes_in_flight) == (HALF_OPEN, None, 1)


@pytest.mark.parametrize(
    ("action", "state"),
    [
        ("force_open", BreakerState.FORCED_OPEN),
        ("force_close", BreakerState.FORCED_CLOSED),
        ("disable", BreakerState.DISABLED),
    ],
)
async def test_an_operator_mode_reads_the_same_past_the_recovery_time(
    store: StateStore, clock: FakeClock, action: Any, state: BreakerState
) -> None:
    await open_breaker(store)
    await store.breaker_command(KEY, action)
    clock.advance(61.0)
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.open_until, snap.probes_in_flight) == (state, None, 0)
    await store.breaker_command(KEY, "reset")
    assert (await store.breaker_snapshot(KEY, CFG)).state == CLOSED


async def test_late_results_while_open_change_nothing(store: StateStore, clock: FakeClock) -> None:
    await open_breaker(store)
    before = await store.breaker_snapshot(KEY, CFG)
    for outcome in Outcome:
        for probe in (False, True):
            assert await store.breaker_record(KEY, CFG, outcome, 5.0, probe) == ()
    assert await store.breaker_snapshot(KEY, CFG) == before
    clock.advance(60.0)
    await store.breaker_acquire(KEY, CFG)  # half-open, one probe out
    assert await store.breaker_record(KEY, CFG, Outcome.FAILURE, 0.1, False) == ()
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.probes_in_flight) == (HALF_OPEN, 1)


# --- operator commands ---


async def test_force_open_rejects_everything_until_reset(
    store: StateStore, clock: FakeClock
) -> None:
    assert await store.breaker_command(KEY, "force_open") == (
        moved(clock, CLOSED, BreakerState.FORCED_OPEN, "operator force_open"),
    )
    assert await store.breaker_acquire(KEY, CFG) == (False, False, 60.0, ())
    await fail(store, 5)
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.consecutive_failures, snap.open_until) == (
        BreakerState.FORCED_OPEN,
        0,
        None,
    )
    assert await store.breaker_command(KEY, "reset") == (
        moved(clock, BreakerState.FORCED_OPEN, CLOSED, "operator reset"),
    )
    assert await store.breaker_acquire(KEY, CFG) == (True, False, 0.0, ())


async def test_force_close_admits_everything_counts_outcomes_and_never_opens(
    store: StateStore, clock: FakeClock
) -> None:
    await open_breaker(store)
    assert await store.breaker_command(KEY, "force_close") == (
        moved(clock, OPEN, BreakerState.FORCED_CLOSED, "operator force_close"),
    )
    assert await store.breaker_acquire(KEY, CFG) == (True, False, 0.0, ())
    await fail(store, 10)
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.consecutive_failures, snap.window_failures) == (
        BreakerState.FORCED_CLOSED,
        10,
        10,
    )
    assert await store.breaker_command(KEY, "reset") == (
        moved(clock, BreakerState.FORCED_CLOSED, CLOSED, "operator reset"),
    )
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.consecutive_failures, snap.window_calls) == (CLOSED, 0, 0)


async def test_disable_admits_and_counts_nothing(store: StateStore, clock: FakeClock) -> None:
    assert await store.breaker_command(KEY, "disable") == (
        moved(clock, CLOSED, BreakerState.DISABLED, "operator disable"),
    )
    await fail(store, 10)
    assert await store.breaker_acquire(KEY, CFG) == (True, False, 0.0, ())
    snap = await store.breaker_snapshot(KEY, CFG)
    assert (snap.state, snap.consecutive_failures, snap.window_calls) == (
        BreakerState.DISABLED,
        0,
        0,
    )


async def test_reset_returns_an_open_breaker_to_closed_with_clean_counters(
    store: StateStore, clock: FakeClock
) -> None:
    await open_breaker(store)
    assert await store.breaker_command(KEY, "reset") == (
        moved(clock, OPEN, CLOSED, "operator reset"),
    )
    assert await store.breaker_acquire(KEY, CFG) == (True, False, 0.0, ())
    await fail(store, 2)
    assert (await store.breaker_snapshot(KEY, CFG)).state == CLOSED


async def test_a_command_that_changes_nothing_reports_no_transition(store: StateStore) -> None:
    assert await store.breaker_command(KEY, "reset") == ()
    assert len(await store.breaker_command(KEY, "force_open")) == 1
    assert await store.breaker_command(KEY, "force_open") == ()


# --- admit and select ---


def admit_request(
    *,
    lease_id: str = "exec-1",
    limits: tuple[RateLimit, ...] = (),
    candidates: tuple[Candidate, ...] = (Candidate(1, 10),),
    agent_breaker: BreakerConfig | None = CFG,
    deployment_breaker: BreakerConfig = CFG,
    lease_ttl_s: float = 30.0,
    budgets: tuple[BudgetHold, ...] = (),
) -> AdmitRequest:
    return AdmitRequest(
        lease_id=lease_id,
        lease_ttl_s=lease_ttl_s,
        agent_breaker_key=KEY if agent_breaker is not None else None,
        agent_breaker=agent_breaker,
        rate_limits=limits,
        candidates=candidates,
        deployment_breaker=deployment_breaker,
        budgets=budgets,
    )


async def take_lease(store: StateStore, deployment_id: int, lease_id: str) -> None:
    selection = await store.select(
        lease_id=lease_id,
        lease_ttl_s=30.0,
        candidates=(Candidate(deployment_id, 1_000),),
        breaker=NO_BREAKER,
    )
    assert selection.deployment_id == deployment_id


async def test_admit_takes_a_lease_and_rate_budget_and_picks_a_deployment(
    store: StateStore,
) -> None:
    rpm = RateLimit("rpm:support", limit=2, window_s=60.0, cost=1)
    admission = await store.admit(admit_request(limits=(rpm,)))
    assert admission == Admission(None, 0.0, 1, False, False)
    assert admission.ok
    assert await store.in_flight((1,)) == {1: 1}
    assert await store.rate_acquire((rpm,), "other") == (True, 0.0)
    assert (await store.rate_acquire((rpm,), "more"))[0] is False


async def test_admit_refuses_while_the_agent_breaker_is_open(
    store: StateStore, clock: FakeClock
) -> None:
    await open_breaker(store)
    opened_at = clock.now()
    clock.advance(20.0)
    rpm = RateLimit("rpm:support", limit=1, window_s=60.0, cost=1)
    admission = await store.admit(admit_request(limits=(rpm,)))
    assert admission == Admission(
        "circuit_open", 40.0, None, False, False, (), {KEY: opened_at + 60.0}
    )
    assert await store.in_flight((1,)) == {1: 0}
    assert await store.rate_acquire((rpm,), "probe-budget") == (True, 0.0)


async def test_admit_refused_by_a_rate_limit_takes_no_lease_and_no_probe(
    store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(failure_threshold=1, half_open_max_calls=1)
    await open_breaker(store, cfg=cfg)
    await open_breaker(store, key="deployment:1", cfg=cfg)
    clock.advance(60.0)  # both breakers would give their single probe to the next acquire
    rpm = RateLimit("rpm:support", limit=1, window_s=60.0, cost=1)
    assert await store.rate_acquire((rpm,), "earlier") == (True, 0.0)

    admission = await store.admit(
        admit_request(limits=(rpm,), agent_breaker=cfg, deployment_breaker=cfg)
    )
    assert (admission.refusal, admission.retry_after) == ("rate_limited", 60.0)
    assert (admission.deployment_id, admission.transitions) == (None, ())
    assert await store.in_flight((1,)) == {1: 0}
    for key in (KEY, "deployment:1"):
        assert (await store.breaker_acquire(key, cfg))[:2] == (True, True)


async def test_admit_refused_for_lack_of_a_deployment_consumes_no_rate_budget(
    store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(failure_threshold=1, half_open_max_calls=1)
    await open_breaker(store, cfg=cfg)
    clock.advance(60.0)  # the agent breaker would give its probe away
    await take_lease(store, 1, "busy")
    rpm = RateLimit("rpm:support", limit=1, window_s=60.0, cost=1)

    full = await store.admit(
        admit_request(limits=(rpm,), agent_breaker=cfg, candidates=(Candidate(1, 1),))
    )
    assert (full.refusal, full.retry_after, full.deployment_id) == ("no_deployment", 0.0, None)

    await open_breaker(store, key="deployment:2")
    clock.advance(10.0)
    broken = await store.admit(
        admit_request(
            limits=(rpm,), agent_breaker=cfg, candidates=(Candidate(1, 1), Candidate(2, 5))
        )
    )
    assert (broken.refusal, broken.retry_after) == ("circuit_open", 50.0)

    assert await store.in_flight((1, 2)) == {1: 1, 2: 0}
    assert (await store.breaker_acquire(KEY, cfg))[:2] == (True, True)  # the probe is still there
    assert await store.rate_acquire((rpm,), "budget-intact") == (True, 0.0)


async def test_admit_takes_the_agent_and_deployment_probes_when_half_open(
    store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(failure_threshold=1, half_open_max_calls=1)
    await open_breaker(store, cfg=cfg)
    await open_breaker(store, key="deployment:1", cfg=cfg)
    clock.advance(60.0)
    admission = await store.admit(admit_request(agent_breaker=cfg, deployment_breaker=cfg))
    assert (admission.deployment_id, admission.agent_probe, admission.deployment_probe) == (
        1,
        True,
        True,
    )
    assert admission.transitions == (
        moved(clock, OPEN, HALF_OPEN, "recovery timeout"),
        moved(clock, OPEN, HALF_OPEN, "recovery timeout", key="deployment:1"),
    )
    second = await store.admit(
        admit_request(lease_id="exec-2", agent_breaker=cfg, deployment_breaker=cfg)
    )
    assert second.refusal == "circuit_open"


async def test_selection_prefers_the_least_loaded_deployment_by_weight(store: StateStore) -> None:
    candidates = (Candidate(1, 100, weight=1), Candidate(2, 100, weight=3))
    chosen = []
    for n in range(6):
        selection = await store.select(
            lease_id=f"exec-{n}", lease_ttl_s=30.0, candidates=candidates, breaker=CFG
        )
        chosen.append(selection.deployment_id)
    # load/weight: ties go to the heavier deployment, then to the lower id
    assert chosen == [2, 1, 2, 2, 2, 1]
    assert await store.in_flight((1, 2)) == {1: 2, 2: 4}


async def test_weights_share_out_the_calls_of_a_quiet_deployment(store: StateStore) -> None:
    """At concurrency 1 every deployment is equally loaded (nothing in flight); the weights
    must still hold, decided by each lease id (an execution id, random) the same way in both
    stores."""
    candidates = (Candidate(1, 100, weight=1), Candidate(2, 100, weight=3))
    chosen = []
    for n in range(400):
        lease_id = f"{n * 2654435761 % 2**32:08x}-{n}"  # spread evenly, reproducibly
        selection = await store.select(
            lease_id=lease_id, lease_ttl_s=30.0, candidates=candidates, breaker=CFG
        )
        assert selection.deployment_id is not None
        chosen.append(selection.deployment_id)
        await store.release(
            lease_id=lease_id, deployment_id=selection.deployment_id, probe=False, breaker=CFG
        )
    assert 280 <= chosen.count(2) <= 320  # 3 in 4
    assert await store.in_flight((1, 2)) == {1: 0, 2: 0}


async def test_selection_skips_open_breakers_and_full_deployments(
    store: StateStore, clock: FakeClock
) -> None:
    await open_breaker(store, key="deployment:1")
    await take_lease(store, 2, "busy")
    candidates = (Candidate(1, 10), Candidate(2, 1), Candidate(3, 10, weight=1))
    opened_at = clock.now()
    clock.advance(15.0)
    selection = await store.select(
        lease_id="exec-1", lease_ttl_s=30.0, candidates=candidates, breaker=CFG
    )
    assert (selection.deployment_id, selection.refusal) == (3, None)
    assert selection.open_until == {"deployment:1": opened_at + 60.0}

    await open_breaker(store, key="deployment:3")
    refused = await store.select(
        lease_id="exec-2", lease_ttl_s=30.0, candidates=candidates, breaker=CFG
    )
    assert (refused.deployment_id, refused.refusal, refused.retry_after) == (
        None,
        "circuit_open",
        45.0,  # the breaker that recovers first
    )
    none_free = await store.select(
        lease_id="exec-3", lease_ttl_s=30.0, candidates=(Candidate(2, 1),), breaker=CFG
    )
    assert (none_free.refusal, none_free.retry_after) == ("no_deployment", 0.0)
    assert await store.in_flight((1, 2, 3)) == {1: 0, 2: 1, 3: 1}


async def test_leases_expire_after_lease_ttl(store: StateStore, clock: FakeClock) -> None:
    admission = await store.admit(
        admit_request(candidates=(Candidate(1, 1),), lease_ttl_s=30.0, agent_breaker=None)
    )
    assert admission.deployment_id == 1
    clock.advance(29.5)
    assert await store.in_flight((1,)) == {1: 1}
    assert (
        await store.admit(admit_request(lease_id="exec-2", candidates=(Candidate(1, 1),)))
    ).refusal == "no_deployment"
    clock.advance(0.5)
    assert await store.in_flight((1,)) == {1: 0}
    assert (
        await store.admit(admit_request(lease_id="exec-3", candidates=(Candidate(1, 1),)))
    ).deployment_id == 1


async def test_release_frees_the_lease_and_the_probe_slot(
    store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(failure_threshold=1, half_open_max_calls=1)
    await open_breaker(store, key="deployment:1", cfg=cfg)
    clock.advance(60.0)
    candidates = (Candidate(1, 10),)
    first = await store.select(lease_id="a", lease_ttl_s=30.0, candidates=candidates, breaker=cfg)
    assert (first.deployment_id, first.probe) == (1, True)
    second = await store.select(lease_id="b", lease_ttl_s=30.0, candidates=candidates, breaker=cfg)
    assert second.refusal == "circuit_open"

    await store.release(lease_id="a", deployment_id=1, probe=True, breaker=cfg)
    assert await store.in_flight((1,)) == {1: 0}
    third = await store.select(lease_id="c", lease_ttl_s=30.0, candidates=candidates, breaker=cfg)
    assert (third.deployment_id, third.probe) == (1, True)


async def test_complete_releases_the_lease_and_records_both_outcomes(
    store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(failure_threshold=1)
    admission = await store.admit(admit_request(agent_breaker=cfg, deployment_breaker=cfg))
    assert admission.deployment_id == 1
    transitions = await store.complete(
        Completion(
            attempt=AttemptResult(1, "exec-1", Outcome.FAILURE, 0.2, probe=False),
            deployment_breaker=cfg,
            agent_breaker_key=KEY,
            agent_breaker=cfg,
            agent_outcome=Outcome.FAILURE,
            agent_duration_s=0.3,
        )
    )
    assert transitions == (
        moved(clock, CLOSED, OPEN, "1 consecutive failures", key="deployment:1"),
        moved(clock, CLOSED, OPEN, "1 consecutive failures"),
    )
    assert await store.in_flight((1,)) == {1: 0}


async def test_a_completed_probe_closes_the_deployment_breaker(
    store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(failure_threshold=1, half_open_max_calls=1)
    await open_breaker(store, key="deployment:1", cfg=cfg)
    clock.advance(60.0)
    admission = await store.admit(admit_request(agent_breaker=None, deployment_breaker=cfg))
    assert admission.deployment_probe
    transitions = await store.complete(
        Completion(
            attempt=AttemptResult(1, "exec-1", Outcome.SUCCESS, 0.2, probe=True),
            deployment_breaker=cfg,
        )
    )
    assert transitions == (
        moved(clock, HALF_OPEN, CLOSED, "half-open probes succeeded", key="deployment:1"),
    )


async def test_complete_settles_a_token_reservation_to_the_real_usage(store: StateStore) -> None:
    tpm = RateLimit("tpm:support", limit=1000, window_s=60.0, cost=1000)
    assert (await store.admit(admit_request(limits=(tpm,), agent_breaker=None))).ok
    one_token = RateLimit("tpm:support", limit=1000, window_s=60.0, cost=1)
    assert (await store.rate_acquire((one_token,), "x"))[0] is False

    await store.complete(
        Completion(
            attempt=AttemptResult(1, "exec-1", Outcome.SUCCESS, 0.2, probe=False),
            deployment_breaker=CFG,
            entry_id="exec-1",
            rate_settlements=(("tpm:support", 60.0, 200),),
        )
    )
    eight_hundred = RateLimit("tpm:support", limit=1000, window_s=60.0, cost=800)
    assert await store.rate_acquire((eight_hundred,), "y") == (True, 0.0)
    assert (await store.rate_acquire((one_token,), "z"))[0] is False


async def test_settling_an_unknown_or_expired_entry_changes_nothing(
    store: StateStore, clock: FakeClock
) -> None:
    limit = RateLimit("tpm:support", limit=100, window_s=60.0, cost=100)
    assert await store.rate_acquire((limit,), "old") == (True, 0.0)
    await store.complete(
        Completion(
            attempt=None,
            deployment_breaker=CFG,
            entry_id="unknown",
            rate_settlements=(("tpm:support", 60.0, 0),),
        )
    )
    assert (await store.rate_acquire((RateLimit("tpm:support", 100, 60.0, 1),), "x"))[0] is False
    clock.advance(60.0)
    await store.complete(
        Completion(
            attempt=None,
            deployment_breaker=CFG,
            entry_id="old",
            rate_settlements=(("tpm:support", 60.0, 5000),),
        )
    )
    assert await store.rate_acquire((limit,), "new") == (True, 0.0)


# --- exact sliding windows ---


async def test_the_sliding_window_is_exact_with_no_burst_at_the_window_edge(
    store: StateStore, clock: FakeClock
) -> None:
    rpm = RateLimit("rpm:support", limit=10, window_s=60.0, cost=1)
    clock.advance(59.0)
    for n in range(10):
        assert await store.rate_acquire((rpm,), f"a{n}") == (True, 0.0)
    clock.advance(1.5)  # a fixed window would have started afresh at 60
    assert await store.rate_acquire((rpm,), "b") == (False, 58.5)
    clock.advance(58.0)
    assert await store.rate_acquire((rpm,), "b") == (False, 0.5)
    clock.advance(0.5)  # the entries admitted at 59 expire at exactly 119
    for n in range(10):
        assert await store.rate_acquire((rpm,), f"c{n}") == (True, 0.0)
    assert await store.rate_acquire((rpm,), "d") == (False, 60.0)


async def test_retry_after_is_when_enough_cost_has_expired(
    store: StateStore, clock: FakeClock
) -> None:
    def tpm(cost: int) -> RateLimit:
        return RateLimit("tpm:support", limit=10, window_s=60.0, cost=cost)

    for cost in (4, 4, 2):
        assert (await store.rate_acquire((tpm(cost),), f"e{cost}-{clock.now()}"))[0]
        clock.advance(10.0)
    # at +30: 10 used; 5 more fit once the first two entries (admitted at +0 and +10) expire
    assert await store.rate_acquire((tpm(5),), "big") == (False, 40.0)
    assert await store.rate_acquire((tpm(4),), "mid") == (False, 30.0)
    clock.advance(40.0)
    assert await store.rate_acquire((tpm(5),), "big") == (True, 0.0)


async def test_a_cost_above_the_limit_is_never_admitted(store: StateStore) -> None:
    limit = RateLimit("tpm:support", limit=10, window_s=60.0, cost=11)
    assert await store.rate_acquire((limit,), "huge") == (False, math.inf)


async def test_rate_limits_are_all_or_none(store: StateStore, clock: FakeClock) -> None:
    rpm = RateLimit("rpm:support", limit=5, window_s=60.0, cost=1)
    tpm = RateLimit("tpm:support", limit=100, window_s=30.0, cost=100)
    assert await store.rate_acquire((tpm,), "first") == (True, 0.0)
    clock.advance(10.0)
    assert await store.rate_acquire((rpm, tpm), "second") == (False, 20.0)
    for n in range(5):  # the refusal took none of the rpm budget
        assert await store.rate_acquire((rpm,), f"r{n}") == (True, 0.0)


# --- budgets: reservations at admission, top-ups, settlement, expiry ---

DAY = "budget:1:2026-11-28"
AGENT_DAY = "budget:2:2026-11-28"


def hold(amount: int, *, key: str = DAY, limit: int = 1_000, ttl_s: float = 86_400.0) -> BudgetHold:
    return BudgetHold(key=key, limit=limit, amount=amount, ttl_s=ttl_s)


def settle(entry_id: str, *settlements: tuple[str, int]) -> Completion:
    return Completion(
        attempt=None, deployment_breaker=CFG, entry_id=entry_id, budget_settlements=settlements
    )


@pytest.fixture
async def windows(store: StateStore) -> None:
    """DAY and AGENT_DAY known to the store, empty (as a rebuild from an empty ledger makes
    them): admission refuses windows it does not know."""
    assert await store.budget_prepare(
        (WindowInit(DAY, 0, 86_400.0), WindowInit(AGENT_DAY, 0, 86_400.0))
    ) == (DAY, AGENT_DAY)


async def test_admit_reserves_on_every_budget_and_reports_what_is_left(
    windows: None, store: StateStore
) -> None:
    admission = await store.admit(
        admit_request(budgets=(hold(300), hold(300, key=AGENT_DAY, limit=500)))
    )
    assert admission == Admission(None, 0.0, 1, False, False, (), {}, {DAY: 700, AGENT_DAY: 200})
    assert await store.budget_usage((DAY, AGENT_DAY, "budget:9:never")) == {
        DAY: (0, 300),
        AGENT_DAY: (0, 300),
        "budget:9:never": (0, 0),
    }


async def test_a_budget_filled_exactly_admits_and_one_micro_usd_more_is_refused(
    windows: None,
    store: StateStore,
) -> None:
    assert (await store.admit(admit_request(lease_id="done", budgets=(hold(250),)))).ok
    await store.complete(settle("done", (DAY, 250)))
    assert (await store.admit(admit_request(lease_id="live", budgets=(hold(350),)))).ok
    # spent 250 + reserved 350 + 400 == 1000
    exact = await store.admit(admit_request(lease_id="exact", budgets=(hold(400),)))
    assert (exact.refusal, exact.budget_remaining) == (None, {DAY: 0})
    over = await store.admit(admit_request(lease_id="over", budgets=(hold(1),)))
    assert over == Admission("budget_exceeded", 0.0, None, False, False, (), {}, {DAY: 0})
    assert await store.budget_usage((DAY,)) == {DAY: (250, 750)}


async def test_a_budget_refusal_takes_no_lease_no_rate_budget_no_probe_and_no_reservation(
    windows: None, store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(failure_threshold=1, half_open_max_calls=1)
    await open_breaker(store, cfg=cfg)
    await open_breaker(store, key="deployment:1", cfg=cfg)
    clock.advance(60.0)  # both breakers would give their single probe to the next acquire
    rpm = RateLimit("rpm:support", limit=1, window_s=60.0, cost=1)
    assert await store.budget_reserve((hold(900, key=AGENT_DAY),), "earlier", 30.0) == (
        True,
        {AGENT_DAY: 100},
    )

    # the first budget has room, the second has not: neither is reserved
    refused = await store.admit(
        admit_request(
            limits=(rpm,),
            agent_breaker=cfg,
            deployment_breaker=cfg,
            budgets=(hold(600), hold(101, key=AGENT_DAY)),
        )
    )
    assert refused == Admission(
        "budget_exceeded", 0.0, None, False, False, (), {}, {DAY: 1_000, AGENT_DAY: 100}
    )
    assert await store.budget_usage((DAY, AGENT_DAY)) == {DAY: (0, 0), AGENT_DAY: (0, 900)}
    assert await store.in_flight((1,)) == {1: 0}
    assert await store.rate_acquire((rpm,), "rate-intact") == (True, 0.0)
    for key in (KEY, "deployment:1"):
        assert (await store.breaker_acquire(key, cfg))[:2] == (True, True)


async def test_rate_deployment_and_breaker_refusals_take_no_reservation(
    windows: None, store: StateStore, clock: FakeClock
) -> None:
    budgets = (hold(400),)
    rpm = RateLimit("rpm:support", limit=1, window_s=60.0, cost=1)
    assert await store.rate_acquire((rpm,), "earlier") == (True, 0.0)
    limited = await store.admit(admit_request(lease_id="a", limits=(rpm,), budgets=budgets))
    assert (limited.refusal, limited.budget_remaining) == ("rate_limited", {})

    await take_lease(store, 1, "busy")
    full = await store.admit(
        admit_request(lease_id="b", candidates=(Candidate(1, 1),), budgets=budgets)
    )
    assert (full.refusal, full.budget_remaining) == ("no_deployment", {})

    await open_breaker(store, key="deployment:2")
    broken = await store.admit(
        admit_request(lease_id="c", candidates=(Candidate(2, 5),), budgets=budgets)
    )
    assert (broken.refusal, broken.budget_remaining) == ("circuit_open", {})

    await open_breaker(store)
    agent_open = await store.admit(admit_request(lease_id="d", budgets=budgets))
    assert (agent_open.refusal, agent_open.budget_remaining) == ("circuit_open", {})

    assert await store.budget_usage((DAY,)) == {DAY: (0, 0)}


async def test_settlement_replaces_the_reservation_with_the_actual_cost(
    windows: None,
    store: StateStore,
) -> None:
    budgets = (hold(500), hold(500, key=AGENT_DAY, limit=2_000))
    assert (await store.admit(admit_request(budgets=budgets))).ok
    assert (await store.admit(admit_request(lease_id="other", budgets=(hold(100),)))).ok
    await store.complete(settle("exec-1", (DAY, 120), (AGENT_DAY, 120)))
    assert await store.budget_usage((DAY, AGENT_DAY)) == {DAY: (120, 100), AGENT_DAY: (120, 0)}
    # a settlement sent again finds no reservation left: it counts once
    await store.complete(settle("exec-1", (DAY, 30)))
    # a negative cost is no refund
    await store.complete(settle("other", (DAY, -5)))
    assert await store.budget_usage((DAY,)) == {DAY: (120, 0)}
    # what was settled counts against the next admission
    assert (await store.admit(admit_request(lease_id="x", budgets=(hold(881),)))).refusal == (
        "budget_exceeded"
    )
    assert (await store.admit(admit_request(lease_id="y", budgets=(hold(880),)))).ok


async def test_top_ups_add_up_and_are_all_or_none_across_budgets(
    windows: None, store: StateStore
) -> None:
    def both(amount: int) -> tuple[BudgetHold, ...]:
        return (hold(amount), hold(amount, key=AGENT_DAY, limit=500))

    assert (await store.admit(admit_request(budgets=both(300)))).budget_remaining == {
        DAY: 700,
        AGENT_DAY: 200,
    }
    assert await store.budget_reserve(both(200), "exec-1", 30.0) == (
        True,
        {DAY: 500, AGENT_DAY: 0},
    )
    assert await store.budget_reserve(both(1), "exec-1", 30.0) == (
        False,
        {DAY: 500, AGENT_DAY: 0},
    )
    assert await store.budget_usage((DAY, AGENT_DAY)) == {DAY: (0, 500), AGENT_DAY: (0, 500)}
    # the whole reservation, top-ups included, is replaced by the settlement
    await store.complete(settle("exec-1", (DAY, 450), (AGENT_DAY, 450)))
    assert await store.budget_usage((DAY, AGENT_DAY)) == {DAY: (450, 0), AGENT_DAY: (450, 0)}
    assert await store.budget_reserve(both(50), "exec-2", 30.0) == (
        True,
        {DAY: 500, AGENT_DAY: 0},
    )


async def test_a_dead_executions_reservation_becomes_spend_when_its_lease_expires(
    windows: None, store: StateStore, clock: FakeClock
) -> None:
    assert (await store.admit(admit_request(lease_ttl_s=30.0, budgets=(hold(600),)))).ok
    late = admit_request(lease_id="late", budgets=(hold(500),))
    assert (await store.admit(late)).refusal == "budget_exceeded"
    clock.advance(29.75)
    assert await store.budget_usage((DAY,)) == {DAY: (0, 600)}
    assert (await store.admit(late)).budget_remaining == {DAY: 400}
    clock.advance(0.25)  # the reservation lives exactly lease_ttl_s: then it is spent
    assert await store.budget_usage((DAY,)) == {DAY: (600, 0)}
    assert (await store.admit(late)).refusal == "budget_exceeded"
    # a settlement arriving after the expiry changes nothing: the charge stands
    await store.complete(settle("exec-1", (DAY, 200)))
    assert await store.budget_usage((DAY,)) == {DAY: (600, 0)}


async def test_a_top_up_renews_the_expiry_of_the_whole_reservation(
    windows: None, store: StateStore, clock: FakeClock
) -> None:
    assert (await store.admit(admit_request(lease_ttl_s=30.0, budgets=(hold(300),)))).ok
    clock.advance(20.0)
    assert (await store.budget_reserve((hold(100),), "exec-1", 30.0))[0]
    clock.advance(29.75)  # 49.75 s after admission: the first 300 lives on with the top-up
    assert await store.budget_usage((DAY,)) == {DAY: (0, 400)}
    clock.advance(0.25)
    assert await store.budget_usage((DAY,)) == {DAY: (400, 0)}


async def test_admission_refuses_a_window_the_store_does_not_know_and_takes_nothing(
    store: StateStore,
) -> None:
    rpm = RateLimit("rpm:support", limit=1, window_s=60.0, cost=1)
    refused = await store.admit(
        admit_request(limits=(rpm,), budgets=(hold(10), hold(10, key=AGENT_DAY)))
    )
    assert (refused.refusal, refused.unknown_budgets) == ("budget_unknown", (DAY, AGENT_DAY))
    assert await store.in_flight((1,)) == {1: 0}
    assert await store.rate_acquire((rpm,), "rate-intact") == (True, 0.0)
    assert await store.budget_windows((DAY,)) == {DAY: BudgetWindow(0, 0, 0, 0, ready=False)}
    # a top-up on an unknown window is refused too
    assert (await store.budget_reserve((hold(10),), "exec-1", 30.0))[0] is False
    assert await store.budget_prepare((WindowInit(DAY, 0, 86_400.0),)) == (DAY,)
    again = await store.admit(
        admit_request(lease_id="exec-2", budgets=(hold(10), hold(10, key=AGENT_DAY)))
    )
    assert (again.refusal, again.unknown_budgets) == ("budget_unknown", (AGENT_DAY,))


async def test_a_settlement_never_recreates_a_window_that_is_gone(store: StateStore) -> None:
    await store.complete(settle("exec-1", (DAY, 7)))
    assert await store.budget_windows((DAY,)) == {DAY: BudgetWindow(0, 0, 0, 0, ready=False)}


async def test_prepare_writes_spend_and_running_reservations_once(
    store: StateStore, clock: FakeClock
) -> None:
    now = clock.now()
    init = WindowInit(
        DAY,
        spent=400,
        ttl_s=86_400.0,
        reservations=(("running", 100, now + 30.0), ("expired", 50, now - 1.0)),
    )
    assert await store.budget_prepare((init,)) == (DAY,)
    # the expired reservation is spent, as it would have become in the store
    assert await store.budget_windows((DAY,)) == {DAY: BudgetWindow(450, 100, 0, 0, ready=True)}
    # a second rebuild (another process, a later job) leaves a known window alone
    assert await store.budget_prepare((WindowInit(DAY, 999, 86_400.0),)) == ()
    assert await store.budget_usage((DAY,)) == {DAY: (450, 100)}
    # the rebuilt reservation settles like any other
    await store.complete(settle("running", (DAY, 30)))
    assert await store.budget_usage((DAY,)) == {DAY: (480, 0)}
    assert (await store.admit(admit_request(budgets=(hold(520),)))).ok
    assert (await store.admit(admit_request(lease_id="x", budgets=(hold(1),)))).refusal == (
        "budget_exceeded"
    )


async def test_a_settlement_while_the_window_was_gone_counts_instead_of_its_stale_reservation(
    store: StateStore, clock: FakeClock
) -> None:
    """Redis lost the window; an execution admitted before settles (nothing to settle into);
    the rebuild, reading a record still "running", would restore its reservation: it counts
    what it settled instead, and holds nothing."""
    await store.complete(settle("settled-early", (DAY, 70)))
    init = WindowInit(
        DAY,
        spent=400,
        ttl_s=86_400.0,
        reservations=(
            ("settled-early", 300, clock.now() + 30.0),
            ("still-running", 100, clock.now() + 30.0),
        ),
    )
    assert await store.budget_prepare((init,)) == (DAY,)
    assert await store.budget_usage((DAY,)) == {DAY: (470, 100)}


async def test_refusals_are_counted_with_the_smallest_amount_refused(
    windows: None, store: StateStore
) -> None:
    assert (await store.admit(admit_request(budgets=(hold(900),)))).ok
    for lease_id, amount in (("a", 300), ("b", 200), ("c", 250)):
        refused = await store.admit(admit_request(lease_id=lease_id, budgets=(hold(amount),)))
        assert refused.refusal == "budget_exceeded"
    assert (await store.budget_reserve((hold(150),), "exec-1", 30.0))[0] is False
    assert await store.budget_windows((DAY, AGENT_DAY)) == {
        DAY: BudgetWindow(0, 900, refused=4, min_refused=150, ready=True),
        AGENT_DAY: BudgetWindow(0, 0, 0, 0, ready=True),
    }


async def test_abandon_charges_reservations_drops_leases_and_marks_the_lease_gone(
    windows: None, store: StateStore
) -> None:
    rpm = RateLimit("rpm:support", limit=2, window_s=60.0, cost=1)
    both = (hold(300), hold(200, key=AGENT_DAY))
    assert (await store.admit(admit_request(lease_id="dead", limits=(rpm,), budgets=both))).ok
    assert (await store.budget_reserve((hold(100),), "dead", 30.0))[0]
    assert await store.in_flight((1,)) == {1: 1}
    held = await store.abandon(
        Abandon(
            lease_ids=("dead", "never-admitted"),
            deployment_ids=(1, 2),
            budget_keys=(DAY, AGENT_DAY),
            charge=True,
        )
    )
    assert held == {"dead": 400}  # its largest reservation, top-up included
    assert await store.in_flight((1,)) == {1: 0}
    assert await store.budget_usage((DAY, AGENT_DAY)) == {DAY: (400, 0), AGENT_DAY: (200, 0)}
    # charged once: a settlement or a second abandon finds nothing more
    await store.complete(settle("dead", (DAY, 10), (AGENT_DAY, 10)))
    assert await store.abandon(Abandon(("dead",), (1,), (DAY,))) == {}
    assert await store.budget_usage((DAY, AGENT_DAY)) == {DAY: (400, 0), AGENT_DAY: (200, 0)}
    # the rate-log entry is kept when charging (it was a call): one of two left
    assert await store.rate_acquire((rpm,), "next") == (True, 0.0)
    assert (await store.rate_acquire((rpm,), "over"))[0] is False


async def test_an_admission_arriving_after_its_abandon_takes_nothing(
    windows: None, store: StateStore
) -> None:
    rpm = RateLimit("rpm:support", limit=1, window_s=60.0, cost=1)
    late = admit_request(lease_id="stalled", limits=(rpm,), budgets=(hold(300),))
    # the caller gave up (a stall) and abandoned it before the admission was applied
    assert (
        await store.abandon(
            Abandon(("stalled",), (1,), (DAY,), rate_keys=("rpm:support",), charge=False)
        )
        == {}
    )
    assert (await store.admit(late)).refusal == "late"
    assert await store.in_flight((1,)) == {1: 0}
    assert await store.budget_usage((DAY,)) == {DAY: (0, 0)}
    assert await store.rate_acquire((rpm,), "intact") == (True, 0.0)


async def test_abandon_with_no_tombstone_lets_the_same_lease_id_be_admitted_again(
    windows: None, store: StateStore
) -> None:
    assert (await store.admit(admit_request(lease_id="requeued", budgets=(hold(300),)))).ok
    held = await store.abandon(Abandon(("requeued",), (1,), (DAY,), tombstone_ttl_s=0.0))
    assert held == {"requeued": 300}
    assert await store.budget_usage((DAY,)) == {DAY: (300, 0)}  # charged, as a dead attempt
    again = await store.admit(admit_request(lease_id="requeued", budgets=(hold(300),)))
    assert again.ok  # its next run is admitted, not refused as late
    assert await store.in_flight((1,)) == {1: 1}


async def test_abandon_without_charge_gives_back_what_an_applied_admission_took(
    windows: None, store: StateStore
) -> None:
    rpm = RateLimit("rpm:support", limit=1, window_s=60.0, cost=1)
    assert (await store.admit(admit_request(lease_id="x", limits=(rpm,), budgets=(hold(300),)))).ok
    assert await store.abandon(
        Abandon(("x",), (1,), (DAY,), rate_keys=("rpm:support",), charge=False)
    ) == {"x": 300}
    assert await store.in_flight((1,)) == {1: 0}
    assert await store.budget_usage((DAY,)) == {DAY: (0, 0)}
    assert await store.rate_acquire((rpm,), "again") == (True, 0.0)


# --- where MemoryState departs from the documented state machine ---


async def test_a_refused_admit_reopens_an_agent_breaker_whose_probes_timed_out(
    request: pytest.FixtureRequest, store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(
        failure_threshold=1, recovery_timeout_s=60.0, half_open_max_calls=1, probe_timeout_s=10.0
    )
    await open_breaker(store, cfg=cfg)
    clock.advance(60.0)
    assert (await store.admit(admit_request(agent_breaker=cfg))).agent_probe
    # the process that held the probe dies: no complete() ever comes
    clock.advance(10.0)
    refused = await store.admit(admit_request(lease_id="exec-2", agent_breaker=cfg))
    assert refused == Admission(
        "circuit_open",
        60.0,
        None,
        False,
        False,
        (moved(clock, HALF_OPEN, OPEN, "half-open probes timed out"),),
        {KEY: clock.now() + 60.0},
    )
    clock.advance(60.0)
    again = await store.admit(admit_request(lease_id="exec-3", agent_breaker=cfg))
    assert (again.refusal, again.agent_probe) == (None, True)


async def test_a_refused_admit_reopens_deployments_whose_probes_timed_out_and_reports_them(
    request: pytest.FixtureRequest, store: StateStore, clock: FakeClock
) -> None:
    cfg = BreakerConfig(
        failure_threshold=1, recovery_timeout_s=60.0, half_open_max_calls=1, probe_timeout_s=10.0
    )
    await open_breaker(store, key="deployment:1", cfg=cfg)
    clock.advance(60.0)
    first = await store.admit(admit_request(agent_breaker=None, deployment_breaker=cfg))
    assert first.deployment_probe
    clock.advance(10.0)
    refused = await store.admit(
        admit_request(lease_id="exec-2", agent_breaker=None, deployment_breaker=cfg)
    )
    assert (refused.refusal, refused.retry_after) == ("circuit_open", 60.0)
    assert refused.transitions == (
        moved(clock, HALF_OPEN, OPEN, "half-open probes timed out", key="deployment:1"),
    )
    assert refused.open_until == {"deployment:1": clock.now() + 60.0}
    clock.advance(60.0)
    again = await store.admit(
        admit_request(lease_id="exec-3", agent_breaker=None, deployment_breaker=cfg)
    )
    assert (again.deployment_id, again.deployment_probe) == (1, True)


# --- Redis only ---


async def test_without_a_clock_redis_state_takes_time_from_redis(
    redis_client: aioredis.Redis,
) -> None:
    prefix = f"bwtest:{uuid.uuid4().hex}"
    state = RedisState(redis_client, prefix=prefix)
    cfg = BreakerConfig(failure_threshold=1)
    try:
        seconds, micros = await redis_client.time()
        before = seconds + micros / 1e6
        (transition,) = await state.breaker_record(KEY, cfg, Outcome.FAILURE, 0.1, False)
        seconds, micros = await redis_client.time()
        after = seconds + micros / 1e6
        assert before <= transition.at <= after
        snap = await state.breaker_snapshot(KEY, cfg)
        assert snap.open_until == transition.at + 60.0
    finally:
        keys = [key async for key in redis_client.scan_iter(match=f"{prefix}:*")]
        await redis_client.delete(*keys)


async def test_every_redis_key_but_breaker_state_expires(redis_client: aioredis.Redis) -> None:
    prefix = f"bwtest:{uuid.uuid4().hex}"
    state = RedisState(redis_client, prefix=prefix)
    cfg = BreakerConfig(failure_threshold=5)
    try:
        admission = await state.admit(
            admit_request(
                limits=(RateLimit("rpm:support", 10, 60.0, 1),),
                lease_ttl_s=30.0,
                agent_breaker=cfg,
            )
        )
        assert admission.ok
        await state.breaker_record(KEY, cfg, Outcome.FAILURE, 0.1, False)
        ttls = {
            key.decode().removeprefix(prefix + ":"): await redis_client.pttl(key)
            async for key in redis_client.scan_iter(match=f"{prefix}:*")
        }
        breaker_keys = {key for key in ttls if key.startswith("br:")}
        assert breaker_keys == {f"br:{KEY}"}  # one hash, its outcome window included
        assert [ttls.pop(key) for key in breaker_keys] == [-1]
        assert set(ttls) == {"rl:rpm:support", "rl:rpm:support:h", "lease:1"}
        # a rate log is kept its window and a second more (renewed about once a second)
        assert 60_000 < ttls["rl:rpm:support"] <= 61_000
        assert 60_000 < ttls["rl:rpm:support:h"] <= 61_000
        assert 29_000 < ttls["lease:1"] <= 30_000
    finally:
        keys = [key async for key in redis_client.scan_iter(match=f"{prefix}:*")]
        await redis_client.delete(*keys)


async def test_budget_windows_expire_after_their_ttl(redis_client: aioredis.Redis) -> None:
    prefix = f"bwtest:{uuid.uuid4().hex}"
    state = RedisState(redis_client, prefix=prefix)
    try:
        assert await state.budget_prepare((WindowInit(DAY, 0, 60.0),)) == (DAY,)
        admission = await state.admit(
            admit_request(agent_breaker=None, budgets=(hold(10, ttl_s=3_600.0),))
        )
        assert admission.ok
        await state.complete(settle("exec-1", (DAY, 7)))
        # a settlement into a window whose keys are gone (or never were) writes only a note of
        # it for the window's rebuild, kept an hour
        await state.complete(settle("exec-1", ("budget:1:gone", 7)))
        ttls = {
            key.decode().removeprefix(prefix + ":"): await redis_client.pttl(key)
            async for key in redis_client.scan_iter(match=f"{prefix}:bg:*")
        }
        # the reservations' set emptied on settlement: Redis deleted it
        assert set(ttls) == {f"bg:{DAY}", "bg:budget:1:gone:o"}
        assert 3_599_000 < ttls["bg:budget:1:gone:o"] <= 3_600_000
        assert 3_600_000 < ttls[f"bg:{DAY}"] <= 3_601_000  # its TTL and a second more
        assert await state.budget_reserve((hold(20, ttl_s=7_200.0),), "exec-2", 30.0) == (
            True,
            {DAY: 973},
        )
        for key in (f"bg:{DAY}", f"bg:{DAY}:x"):  # a later expiry asked for: renewed
            assert 7_200_000 < await redis_client.pttl(f"{prefix}:{key}") <= 7_201_000
    finally:
        keys = [key async for key in redis_client.scan_iter(match=f"{prefix}:*")]
        await redis_client.delete(*keys)


async def test_redis_state_loads_its_function_library_again_when_redis_lost_it(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    prefix = f"bwtest:{uuid.uuid4().hex}"
    state = RedisState(redis_client, prefix=prefix)
    cfg = BreakerConfig(failure_threshold=2)
    try:
        await state.breaker_record(KEY, cfg, Outcome.FAILURE, 0.1, False)
        library = state._functions["breaker_record"].rsplit("_breaker_record", 1)[0]
        await redis_client.function_delete(library)  # as a restarted or flushed Redis would
        (transition,) = await state.breaker_record(KEY, cfg, Outcome.FAILURE, 0.1, False)
        assert transition.to_state == BreakerState.OPEN
    finally:
        keys = [key async for key in redis_client.scan_iter(match=f"{prefix}:*")]
        await redis_client.delete(*keys)


async def test_on_a_redis_without_functions_redis_state_runs_the_same_calls_as_scripts(
    redis_client: aioredis.Redis,
) -> None:
    prefix = f"bwtest:{uuid.uuid4().hex}"
    state = RedisState(redis_client, prefix=prefix)

    class NoFunctions:
        """A client of a Redis older than 7.0, as far as FUNCTION and FCALL go."""

        async def execute_command(self, *args: Any) -> Any:
            if args[0] in ("FCALL", "FUNCTION"):
                raise ResponseError(f"unknown command '{args[0]}', with args beginning with:")
            return await redis_client.execute_command(*args)  # type: ignore[no-untyped-call]

    state = RedisState(NoFunctions(), prefix=prefix)
    cfg = BreakerConfig(failure_threshold=2)
    try:
        admission = await state.admit(
            admit_request(limits=(RateLimit("rpm:support", 1, 60.0, 1),), agent_breaker=cfg)
        )
        assert admission.ok
        refused = await state.admit(
            admit_request(lease_id="exec-2", limits=(RateLimit("rpm:support", 1, 60.0, 1),))
        )
        assert refused.refusal == "rate_limited"
        await redis_client.script_flush()  # NOSCRIPT next: the script is sent again
        await state.breaker_record(KEY, cfg, Outcome.FAILURE, 0.1, False)
        (transition,) = await state.breaker_record(KEY, cfg, Outcome.FAILURE, 0.1, False)
        assert transition.to_state == BreakerState.OPEN
    finally:
        keys = [key async for key in redis_client.scan_iter(match=f"{prefix}:*")]
        await redis_client.delete(*keys)
