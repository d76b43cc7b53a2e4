"""The breakers a process knows to be open: refused locally until their recovery time."""

from __future__ import annotations

from agents.runtime.clock import FakeClock
from agents.runtime.execution.breakers import BreakerCache
from agents.runtime.state import BreakerConfig, BreakerState, Candidate, Transition
from agents.runtime.types import Deployment
from tests.agents.runtime.support import deployment

DEPLOYMENT_BREAKER = BreakerConfig(recovery_timeout_s=30.0)
AGENT_BREAKER = BreakerConfig(recovery_timeout_s=5.0)
PRIMARY = (deployment(1, "primary", max_concurrency=4, weight=2), deployment(2, "primary"))
BACKUP = (deployment(3, "backup"),)


def by_model(model: str) -> tuple[Deployment, ...]:
    return {"primary": PRIMARY, "backup": BACKUP}.get(model, ())


def cache() -> tuple[BreakerCache, FakeClock, list[Transition]]:
    clock = FakeClock()
    published: list[Transition] = []
    return BreakerCache(clock, DEPLOYMENT_BREAKER, published.append), clock, published


def opened(key: str, at: float) -> Transition:
    return Transition(key, BreakerState.CLOSED, BreakerState.OPEN, at, "failures")


def closed(key: str, at: float) -> Transition:
    return Transition(key, BreakerState.HALF_OPEN, BreakerState.CLOSED, at, "probe succeeded")


def test_nothing_is_known_open_at_first_and_every_deployment_is_a_candidate() -> None:
    breakers, _, _ = cache()
    assert breakers.is_open("agent:support") is False
    assert breakers.candidates("primary", PRIMARY) == (Candidate(1, 4, 2), Candidate(2, 100, 1))
    assert breakers.first_usable(("primary", "backup"), by_model) == 0


def test_a_breaker_reported_open_is_open_until_the_time_reported() -> None:
    breakers, clock, _ = cache()
    breakers.learn((), {"agent:support": clock.now() + 10})
    assert breakers.is_open("agent:support")
    clock.advance(9.9)
    assert breakers.is_open("agent:support")
    clock.advance(0.1)
    assert not breakers.is_open("agent:support")


def test_a_transition_to_open_lasts_its_own_breakers_recovery_time_and_is_published() -> None:
    breakers, clock, published = cache()
    now = clock.now()
    transitions = (opened("agent:support", now), opened("deployment:1", now))
    breakers.learn(transitions, {}, AGENT_BREAKER)
    assert breakers.open_until == {"agent:support": now + 5.0, "deployment:1": now + 30.0}
    assert published == list(transitions)


def test_without_the_agents_configuration_an_agent_breaker_lasts_the_deployments_time() -> None:
    breakers, clock, _ = cache()
    breakers.learn((opened("agent:support", clock.now()),), {})
    assert breakers.open_until == {"agent:support": clock.now() + 30.0}


def test_any_other_transition_ends_what_was_known() -> None:
    breakers, clock, published = cache()
    breakers.learn((opened("deployment:1", clock.now()),), {})
    breakers.learn((closed("deployment:1", clock.now()),), {})
    assert breakers.open_until == {}
    assert len(published) == 2


def test_a_deployment_known_open_is_no_candidate_and_a_model_without_any_is_skipped() -> None:
    breakers, clock, _ = cache()
    breakers.learn((), {"deployment:1": clock.now() + 10})
    assert breakers.candidates("primary", PRIMARY) == (Candidate(2, 100, 1),)
    breakers.learn((), {"deployment:2": clock.now() + 10})
    assert breakers.candidates("primary", PRIMARY) == ()
    assert breakers.first_usable(("primary", "backup"), by_model) == 1
    breakers.learn((), {"deployment:3": clock.now() + 10})
    assert breakers.first_usable(("primary", "backup"), by_model) is None


def test_once_every_known_breaker_is_due_for_a_probe_the_knowledge_is_dropped() -> None:
    breakers, clock, _ = cache()
    breakers.learn((), {"deployment:1": clock.now() + 10, "deployment:3": clock.now() + 20})
    clock.advance(15)
    assert breakers.candidates("primary", PRIMARY) == (Candidate(1, 4, 2), Candidate(2, 100, 1))
    assert breakers.candidates("backup", BACKUP) == ()  # deployment 3 is still known open
    clock.advance(5)
    assert breakers.candidates("backup", BACKUP) == (Candidate(3, 100, 1),)
    assert breakers.open_until == {}


def test_forgetting_drops_every_breaker_known_open() -> None:
    breakers, clock, _ = cache()
    breakers.learn((), {"agent:support": clock.now() + 10, "deployment:1": clock.now() + 10})
    breakers.forget()
    assert not breakers.is_open("agent:support")
    assert breakers.candidates("primary", PRIMARY) == (Candidate(1, 4, 2), Candidate(2, 100, 1))


def test_candidates_are_built_once_per_config_snapshot() -> None:
    breakers, _, _ = cache()
    first = breakers.candidates("primary", PRIMARY)
    assert breakers.candidates("primary", PRIMARY) is first
    changed = (deployment(1, "primary", max_concurrency=8), PRIMARY[1])
    assert breakers.candidates("primary", changed) == (Candidate(1, 8, 1), Candidate(2, 100, 1))
