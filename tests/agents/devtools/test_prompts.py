from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from agents.devtools.loadgen import REFERENCE_MIX
from agents.devtools.prompts import (
    DEMO_TTLS,
    POOLS,
    PromptPool,
    Template,
    demo_hit_rate,
    expected_hit_rate,
    expected_misses,
    pool_for,
)


def _simulated_hit_rate(pool: PromptPool, *, rate: float, ttl: float, duration: float) -> float:
    """Poisson arrivals on a simulated clock, a cache whose entries live ``ttl`` seconds; the
    mean of 20 seeded runs."""
    hits = requests = 0
    for seed in range(20):
        rng = random.Random(seed)
        stored: dict[str, float] = {}
        now = 0.0
        while True:
            now += rng.expovariate(rate)
            if now > duration:
                break
            prompt = pool.pick(rng)
            requests += 1
            if stored.get(prompt, -math.inf) > now:
                hits += 1
            else:
                stored[prompt] = now + ttl
    return hits / requests


@pytest.mark.parametrize("agent", ["customer-support", "code-review", "data-analyst"])
@pytest.mark.parametrize("duration", [300.0, 1800.0])
def test_the_hit_rate_arithmetic_matches_a_simulated_cache(agent: str, duration: float) -> None:
    rate = 3.0 * REFERENCE_MIX[agent] / sum(REFERENCE_MIX.values())
    pool, ttl = POOLS[agent], DEMO_TTLS[agent]
    expected = expected_hit_rate(pool, rate=rate, ttl=ttl, duration=duration)
    assert _simulated_hit_rate(pool, rate=rate, ttl=ttl, duration=duration) == pytest.approx(
        expected, abs=0.03
    )


@pytest.mark.parametrize("duration", [300.0, 600.0, 3600.0, None])
def test_the_demo_answers_30_to_45_percent_from_the_cache_at_its_rate(
    duration: float | None,
) -> None:
    assert 0.30 <= demo_hit_rate(REFERENCE_MIX, rate=3.0, duration=duration) <= 0.45


def test_the_ttls_of_the_arithmetic_are_the_demo_configs() -> None:
    import yaml
    from django.conf import settings

    with open(f"{settings.BASE_DIR}/demo/breakwater.yaml") as handle:
        agents = yaml.safe_load(handle)["agents"]
    assert {a["name"]: a["cache_ttl_s"] for a in agents} == DEMO_TTLS


def test_a_prompt_is_missed_once_per_ttl_and_once_more_per_renewal() -> None:
    assert expected_misses(1.0, 600, 300) == pytest.approx(1.0)  # asked often: one miss
    assert expected_misses(0.001, 600, 300) == pytest.approx(1 - math.exp(-0.3))
    assert expected_misses(1.0, 0, 300) == 300  # no cache: every request misses
    # Past the TTL, one more miss per cycle of 1/rate + ttl.
    assert expected_misses(1.0, 100, 1100) == pytest.approx(1 + 1000 / 101, rel=1e-3)


def test_an_agent_without_a_cache_never_hits() -> None:
    assert expected_hit_rate(POOLS["content-writer"], rate=1.0, ttl=0, duration=600) == 0


def test_the_pools_are_varied_and_only_the_frequently_asked_repeat() -> None:
    rng = random.Random(1)
    asked = Counter(pool_for("customer-support").pick(rng) for _ in range(2000))
    assert len(asked) > 800  # the long tail
    assert asked.most_common(1)[0][1] > 20  # the FAQ
    assert all(pool.size > 30 for pool in POOLS.values())


def test_the_same_seed_asks_the_same_questions() -> None:
    first = [pool_for("code-review").pick(random.Random(5)) for _ in range(3)]
    assert first == [pool_for("code-review").pick(random.Random(5)) for _ in range(3)]


def test_a_template_names_the_slot_it_lacks() -> None:
    with pytest.raises(ValueError, match="no slot for order"):
        Template("Where is #{order}?", 1.0)
    with pytest.raises(ValueError, match="slot 'x' is empty"):
        Template("{x}", 1.0, {"x": ()})
