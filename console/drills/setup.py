"""What every drill sets up and takes down: its fakellm upstreams, the providers and models
that point at them, its agent, and (unless one is given) its API key.

Providers and models are written with config as code's ``config_apply`` (audited, the
configuration version moves, so every serving process has them within about a second): the API
has no provider endpoint. The agent goes through ``POST /api/v1/agents`` like any client's.
Everything is named ``drill-<run>-...`` and removed at the end, even when the drill fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async

from agents.devtools.fakellm.faults import FaultConfig
from agents.devtools.fakellm.server import FakeLLM
from console.drills import services
from console.drills.client import ApiClient, DrillError

# Agent fields a drill copies from ``--agent``: its safeguards. Not its model chain (the drill
# has its own upstreams), its cache (every drill request must reach the upstream), its rate
# limits (the drill offers more than a real agent's share), its budget (a drill sets its own)
# nor its tools.
COPIED_FIELDS = (
    "system_prompt",
    "timeout_s",
    "attempt_timeout_s",
    "max_retries",
    "max_tokens",
    "breaker",
    "fallback_messages",
)


@dataclass
class Upstream:
    """A fakellm the drill runs, and the provider and model pointing at it."""

    role: str  # primary, fallback, ...
    server: FakeLLM
    baseline: FaultConfig
    provider: str
    model: str
    deployment_id: int | None = None

    @property
    def faults(self) -> Any:
        return self.server.state.faults

    def inject(self, config: FaultConfig) -> None:
        self.faults.set_config(config, reseed=False)

    def heal(self) -> None:
        self.faults.set_config(self.baseline, reseed=False)

    @property
    def calls(self) -> int:
        return int(self.server.state.stats.total)


@dataclass
class Setup:
    """One drill's world. ``log`` receives a line per step."""

    run_id: int
    base_url: str
    api_key: str | None
    log: Callable[[str], None]
    actor: str = "system:drill"
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    agent: str | None = None
    _key_id: int | None = None
    client: ApiClient | None = None

    @property
    def prefix(self) -> str:
        return f"drill-{self.run_id}"

    @property
    def api(self) -> ApiClient:
        if self.client is None:
            raise RuntimeError("Setup used outside 'async with'")
        return self.client

    async def __aenter__(self) -> Setup:
        key = self.api_key
        if key is None:
            created = await sync_to_async(services.drill_key_create)(
                run_id=self.run_id, actor=self.actor
            )
            self._key_id, key = created
            self.log(f"created a temporary admin API key for the drill (id {self._key_id})")
        self.client = ApiClient(self.base_url, key)
        await self.client.__aenter__()
        try:
            await self.client.wait_authorised()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- building ---------------------------------------------------------------------------

    async def add_upstreams(self, specs: list[tuple[str, FaultConfig, float, float]]) -> None:
        """Start one fakellm per ``(role, faults, input $/Mtok, output $/Mtok)`` and write a
        provider and a model for each."""
        rows = []
        for role, faults, price_in, price_out in specs:
            server = await FakeLLM(faults).start()
            name = f"{self.prefix}-{role}"
            self.upstreams[role] = Upstream(role, server, faults, name, name)
            rows.append((name, f"{server.url}/v1", name, price_in, price_out))
            self.log(f"upstream {role}: fakellm on {server.url} (model {name})")
        await sync_to_async(services.drill_upstreams_create)(rows=rows, actor=self.actor)

    async def add_agent(self, spec: dict[str, Any], *, template: str | None) -> str:
        """Create the drill's agent (``spec`` over the copied fields of ``template``)."""
        body: dict[str, Any] = {}
        if template:
            status, found = await self.api.call("GET", f"/api/v1/agents/{template}")
            if status == 404:
                raise DrillError(f"--agent: no agent {template!r} on {self.base_url}")
            if status != 200:
                raise DrillError(f"GET /api/v1/agents/{template}: HTTP {status}")
            body = {k: found[k] for k in COPIED_FIELDS if found.get(k) is not None}
            self.log(f"drill agent copies the safeguards of {template!r}: {', '.join(body)}")
        body |= spec
        body["name"] = f"{self.prefix}-{spec.get('name', 'agent')}"
        body.setdefault("description", f"Drill {self.run_id}; removed when the drill ends.")
        if body.get("attempt_timeout_s") and body["attempt_timeout_s"] > body.get("timeout_s", 30):
            body["attempt_timeout_s"] = body.get("timeout_s", 30)
        await self.api.ok("POST", "/api/v1/agents", payload=body)
        self.agent = body["name"]
        deployments = await self.api.ok("GET", "/api/v1/deployments")
        by_model = {item["model"]: item["id"] for item in deployments["items"]}
        for upstream in self.upstreams.values():
            upstream.deployment_id = by_model.get(upstream.model)
        self.log(
            f"agent {self.agent}: model {body['model']}, fallbacks "
            f"{body.get('fallback_models') or 'none'}, breaker {body.get('breaker') or 'default'}"
        )
        await self.wait_servable()
        return self.agent

    async def wait_servable(self, deadline_s: float = 15.0) -> None:
        """Every serving process has the agent within about a second of its creation: wait
        until it answers (404 until then)."""
        assert self.agent is not None
        end = time.monotonic() + deadline_s
        while True:
            status, body = await self.api.call("GET", f"/api/v1/agents/{self.agent}/breaker")
            if status == 200:
                return
            if time.monotonic() > end:
                raise DrillError(f"agent {self.agent} not served after {deadline_s:g} s: {body}")
            await asyncio.sleep(0.2)

    # --- taking down ------------------------------------------------------------------------

    async def close(self) -> None:
        """Delete the agent, the models and providers, stop the upstreams, revoke the key.
        Each step is tried even if one before it failed."""
        if self.agent is not None and self.client is not None:
            try:
                status, body = await self.client.call("DELETE", f"/api/v1/agents/{self.agent}")
                if status not in (204, 404):
                    self.log(f"cleanup: could not delete agent {self.agent}: HTTP {status} {body}")
                else:
                    self.log(f"cleanup: agent {self.agent} deleted")
            except DrillError as exc:
                self.log(f"cleanup: could not delete agent {self.agent}: {exc}")
            self.agent = None
        if self.upstreams:
            names = [(u.provider, u.model) for u in self.upstreams.values()]
            try:
                await sync_to_async(services.drill_upstreams_delete)(rows=names, actor=self.actor)
                self.log(f"cleanup: {len(names)} drill provider(s) and model(s) deleted")
            except Exception as exc:
                self.log(f"cleanup: could not delete the drill's providers: {exc}")
            for upstream in self.upstreams.values():
                with contextlib.suppress(Exception):
                    await upstream.server.close()
            self.upstreams.clear()
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None
        if self._key_id is not None:
            await sync_to_async(services.drill_key_revoke)(key_id=self._key_id, actor=self.actor)
            self.log("cleanup: temporary API key revoked")
            self._key_id = None


def utc_now() -> datetime:
    return datetime.now(tz=UTC)
