"""The breakers this process knows to be open.

The shared state decides every breaker; this is what its answers said. A breaker it reported
open stays known open until its recovery time (``open_until``), so a call to it is refused here
without a round trip. Past that time it is due for a half-open probe, which only the shared
state can grant: the knowledge is then stale and no longer used.
"""

from __future__ import annotations

from collections.abc import Callable

from agents.runtime.clock import Clock
from agents.runtime.state import BreakerConfig, BreakerState, Candidate, Transition
from agents.runtime.types import Deployment

Deployments = Callable[[str], tuple[Deployment, ...]]  # a model's deployments (the config's)


def deployment_key(deployment_id: int) -> str:
    return f"deployment:{deployment_id}"


class BreakerCache:
    __slots__ = ("_all", "_clock", "_deployment_breaker", "_on_transition", "open_until")

    def __init__(
        self,
        clock: Clock,
        deployment_breaker: BreakerConfig,
        on_transition: Callable[[Transition], None],
    ) -> None:
        self._clock = clock
        self._deployment_breaker = deployment_breaker
        self._on_transition = on_transition  # every transition learnt is published once
        # breaker key -> wall-clock time until which it is known to be open
        self.open_until: dict[str, float] = {}
        # model -> (its deployments as the config gave them, their candidates)
        self._all: dict[str, tuple[tuple[Deployment, ...], tuple[Candidate, ...]]] = {}

    def forget(self) -> None:
        """Drop everything known (after an operator's command: the shared state decides)."""
        self.open_until.clear()

    def is_open(self, key: str) -> bool:
        """Whether the breaker ``key`` is known to be open now."""
        return bool(self.open_until) and self.open_until.get(key, 0.0) > self._clock.now()

    def candidates(self, model: str, deployments: tuple[Deployment, ...]) -> tuple[Candidate, ...]:
        """The candidates for a lease among ``model``'s ``deployments`` (the config's current
        snapshot): all of them but those known to be open."""
        cached = self._all.get(model)
        if cached is None or cached[0] is not deployments:  # a new config snapshot
            cached = (
                deployments,
                tuple(Candidate(d.id, d.max_concurrency, d.weight) for d in deployments),
            )
            self._all[model] = cached
        if not self.open_until:  # no breaker known to be open: all of them
            return cached[1]
        now = self._clock.now()
        if all(until <= now for until in self.open_until.values()):
            self.open_until.clear()  # every one of them is due for a probe: ask the state
            return cached[1]
        return tuple(
            c for c in cached[1] if self.open_until.get(deployment_key(c.deployment_id), 0.0) <= now
        )

    def first_usable(self, chain: tuple[str, ...], deployments: Deployments) -> int | None:
        """The index in ``chain`` of the first model with a deployment not known open."""
        for index, model in enumerate(chain):
            if self.candidates(model, deployments(model)):
                return index
        return None

    def learn(
        self,
        transitions: tuple[Transition, ...],
        open_until: dict[str, float],
        agent_breaker: BreakerConfig | None = None,
    ) -> None:
        """Remember what a state call answered: the breakers it found open (until when), and
        the transitions it made (an open one lasts its breaker's recovery time; any other ends
        what was known). ``agent_breaker``: the configuration of the agent breakers among them.
        """
        for key, until in open_until.items():
            self.open_until[key] = until
        for transition in transitions:
            if transition.to_state == BreakerState.OPEN:
                config = (
                    agent_breaker
                    if agent_breaker is not None and transition.key.startswith("agent:")
                    else self._deployment_breaker
                )
                self.open_until[transition.key] = transition.at + config.recovery_timeout_s
            else:
                self.open_until.pop(transition.key, None)
            self._on_transition(transition)
