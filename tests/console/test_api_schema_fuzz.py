"""Schemathesis against ``/api/v1/openapi.json``: every operation of the API, called with a valid
admin key, keeps the contract its OpenAPI document states (issue 5).

The document is fetched from, and every request sent to, the real ASGI application
(``console.asgi.application``: Django, ninja, the key cache, the engine and its shared state) on
the suite's database and hot state: PostgreSQL and Redis in CI, SQLite and process memory without
them.

Checks: no 5xx; every status code is one the operation declares; the content type and the body
(errors included) are the declared ones. Inputs are valid and invalid (``mode: all``). Path
parameters name real objects most of the time (a dictionary per parameter), so handlers run past
their 404s: each operation's test seeds the same world, with the same ids (sequences reset).

Bounded and reproducible: a fixed seed, deterministic generation, a few examples per operation and
phase, no example database. Agents answer through the ``simulated`` provider (no network, no
money). Queued executions stay queued (a holding worker in embedded mode, a private Celery queue
nobody consumes in distributed mode): running them is tests/agents/api/test_queued.py's business.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.utils import timezone
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi as schemathesis_asgi

from agents import backends
from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown
from agents.models import ApiKey, Execution, ModelDeployment
from budgets.models import Budget
from core.memory import leak_stop
from core.worker import EmbeddedWorker
from incidents.models import Incident
from incidents.services import incident_event_add, incident_open

pytestmark = pytest.mark.django_db(transaction=True, reset_sequences=True)

# Examples per operation and phase: the whole file stays well under 90 s on a 2-core machine, and
# a failure found once is found again (fixed seed, deterministic generation).
MAX_EXAMPLES = 12
SEED = 52025

# Names no other test uses: breaker, rate-limit and budget state is keyed by agent name.
AGENT, SPARE = "fuzz-main", "fuzz-spare"
DOCUMENT = f"""
providers:
  - {{name: fuzz-sim, kind: simulated, simulation: {{latency_ms: 0, error_rate: 0, seed: 1}}}}
models:
  - {{name: fuzz-m, provider: fuzz-sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
  - {{name: fuzz-cheap, provider: fuzz-sim, upstream_model: c-1, input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.2}}
agents:
  - name: {AGENT}
    model: fuzz-m
    fallback_models: [fuzz-cheap]
    max_tokens: 256
    timeout_s: 5
    daily_budget_usd: 100
    fallback_messages: {{timeout: "try again later"}}
  - {{name: {SPARE}, model: fuzz-cheap, daily_budget_usd: 5}}
budgets:
  - {{scope: global, daily_limit_usd: 1000, monthly_limit_usd: 10000}}
"""

# What the seeding creates, with sequences reset: the same ids in every test.
DEPLOYMENTS = [1, 2]
BUDGETS = [1, 2, 3, 4, 5]  # main, spare, global daily and monthly, the key's
INCIDENTS = [1, 2]
KEYS = [2]  # a spare key: revoking the admin key (1) would leave the rest of the run at 401
FINISHED = ["00000000-0000-4000-8000-00000000f001", "00000000-0000-4000-8000-00000000f002"]
QUEUED = ["00000000-0000-4000-8000-00000000c001", "00000000-0000-4000-8000-00000000c002"]
RUNNING = ["00000000-0000-4000-8000-00000000a001"]


def _seed() -> str:
    """The world every operation's test starts from; returns the admin key."""
    created = api_key_create(name="fuzz-admin", scopes=["admin"])
    api_key_create(name="fuzz-spare", scopes=["read"], agents=[])
    config_apply(
        document=config_parse(
            DOCUMENT
            + f"  - {{scope: api_key, target: {created.api_key.prefix}, daily_limit_usd: 50}}\n"
        )
    )
    deployment = ModelDeployment.objects.get(name="fuzz-m").pk
    now = timezone.now()
    Execution.objects.create(
        id=FINISHED[0],
        agent_name=AGENT,
        api_key=created.api_key,
        status="succeeded",
        input=[{"role": "user", "content": "what is a breakwater?"}],
        output="A barrier built out into the sea.",
        model="fuzz-m",
        deployment_id=deployment,
        attempts=1,
        input_tokens=12,
        output_tokens=9,
        cost_usd=Decimal("0.00003"),
        latency_ms=41,
        session_id="s-1",
        metadata={"ticket": 7},
        steps=[
            {
                "kind": "attempt",
                "model": "fuzz-m",
                "deployment": deployment,
                "outcome": "ok",
                "detail": "",
                "latency_ms": 40.5,
                "input_tokens": 12,
                "output_tokens": 9,
            }
        ],
        created_at=now - timedelta(minutes=5),
        finished_at=now - timedelta(minutes=5) + timedelta(milliseconds=41),
    )
    Execution.objects.create(
        id=FINISHED[1],
        agent_name=SPARE,
        api_key=created.api_key,
        status="degraded",
        input=[{"role": "user", "content": "hi"}],
        output="try again later",
        attempts=3,
        fallback_used=True,
        fallback_reason="timeout",
        latency_ms=5000,
        error={"type": "timeout", "message": "the provider did not answer in 5 s"},
        created_at=now - timedelta(minutes=3),
        finished_at=now - timedelta(minutes=3) + timedelta(seconds=5),
    )
    for ids, status in ((QUEUED, "queued"), (RUNNING, "running")):
        for id_ in ids:
            Execution.objects.create(
                id=id_,
                agent_name=AGENT,
                api_key=created.api_key,
                status=status,
                input=[{"role": "user", "content": "later"}],
                created_at=now - timedelta(seconds=30),
            )
    incident, _ = incident_open(
        kind="breaker_open",
        dedup_key=f"breaker:agent:{AGENT}",
        title=f"Circuit breaker open: agent {AGENT}",
        message="breaker opened after 5 failures",
        agent_name=AGENT,
    )
    incident_event_add(incident=incident, kind="comment", message="looking", actor="ops")
    incident_open(
        kind="manual",
        dedup_key="manual:fuzz",
        title="Upstream latency",
        message="declared by ops",
        severity="minor",
    )
    # The dictionaries below name these ids; a seeding that made others would fuzz 404s only.
    assert sorted(ModelDeployment.objects.values_list("pk", flat=True)) == DEPLOYMENTS
    assert sorted(Budget.objects.values_list("pk", flat=True)) == BUDGETS
    assert sorted(Incident.objects.values_list("pk", flat=True)) == INCIDENTS
    assert created.api_key.pk == 1
    assert sorted(ApiKey.objects.values_list("pk", flat=True)) == [1, *KEYS]
    return created.plaintext


class HoldingWorker(EmbeddedWorker):
    """Embedded mode's in-process worker, holding what it is handed instead of running it."""

    def submit(self, name: str, **kwargs: Any) -> Future[Any]:
        held: Future[Any] = Future()
        held.set_result(None)
        return held


@pytest.fixture
def queues(settings: Any) -> Iterator[None]:
    """Where enqueued executions go: nowhere that runs them."""
    if django_settings.EMBEDDED:
        holding = HoldingWorker(threads=1)  # this process's worker until stopped
        yield
        async_to_sync(holding.stop)()
        return
    from core.redis import get_redis

    queue = f"bwtest-fuzz-{uuid.uuid4().hex[:12]}"
    settings.BREAKWATER_EXECUTION_QUEUE = queue
    yield
    get_redis().delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


@pytest.fixture
def shared_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hot state (breakers, rate limits, budget counters, cache) as this test found it: a fresh
    in-memory store (embedded mode), or every ``bw:`` Redis key put back (distributed mode).
    Deployment ids are reused (sequences reset), so a breaker forced open here must not stay."""
    monkeypatch.setattr(backends, "_memory_state", None)
    monkeypatch.setattr(backends, "_memory_cache", None)
    if django_settings.EMBEDDED:
        yield
        return
    from core.redis import get_redis

    redis = get_redis()
    before = {
        key: (redis.dump(key), redis.pttl(key)) for key in redis.scan_iter(match="bw:*", count=1000)
    }
    yield
    for key in set(redis.scan_iter(match="bw:*", count=1000)) - set(before):
        redis.delete(key)
    for key, (value, ttl_ms) in before.items():
        if value is None:  # expired before it could be read
            continue
        if redis.dump(key) != value:
            redis.restore(key, max(ttl_ms, 0), value, replace=True)


async def _served(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``console.asgi.application`` as ``serve`` runs it: the serving loop's engine stops when
    the server does (here: the ASGI lifespan Schemathesis drives, ended by each test)."""
    if scope["type"] != "lifespan":
        from console.asgi import application

        await application(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await engine_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


@pytest.fixture
def admin_key(settings: Any, tmp_path: Path, queues: None, shared_state: None) -> Iterator[str]:
    settings.VAR_DIR = tmp_path  # this test's own execution journal
    yield _seed()
    # The engine of the loop that served the requests stops before the database is flushed.
    schemathesis_asgi.shutdown_lifespans()


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            "response_headers_conformance": {"enabled": True},
        },
        "dictionaries": {
            # JSON allows "\u0000"; PostgreSQL text and jsonb do not. And an emoji (outside the
            # BMP), a right-to-left override, a blank.
            "awkward": {"values": ["\u0000", "a\u0000b", "\U0001f30a", "\u202e", " "]},
            "agents": {"values": [AGENT, SPARE]},
            "models": {"values": ["fuzz-m", "fuzz-cheap"]},
            "deployments": {"values": DEPLOYMENTS},
            "budgets": {"values": BUDGETS},
            "incidents": {"values": INCIDENTS},
            "keys": {"values": KEYS},
            "executions": {"values": FINISHED + QUEUED + RUNNING},
            "cancellable": {"values": QUEUED + RUNNING},
        },
        "parameters": {
            "path.name": {"dictionary": "agents", "probability": 0.8},
            "path.deployment_id": {"dictionary": "deployments", "probability": 0.8},
            "path.budget_id": {"dictionary": "budgets", "probability": 0.8},
            "path.incident_id": {"dictionary": "incidents", "probability": 0.8},
            "path.key_id": {"dictionary": "keys", "probability": 0.8},
            "path.execution_id": {"dictionary": "executions", "probability": 0.8},
            "query.agent": {"dictionary": "agents", "probability": 0.5},
            # Agent and incident bodies that name real models and agents get past "unknown".
            "body.model": {"dictionary": "models", "probability": 0.8},
            "body.cheap_model": {"dictionary": "models", "probability": 0.5},
            "body.fallback_models[*]": {"dictionary": "models", "probability": 0.5},
            "body.agent": {"dictionary": "agents", "probability": 0.8},
            "body.agents[*]": {"dictionary": "agents", "probability": 0.5},
            # Now and then, text that SQLite stores and PostgreSQL refuses (and friends), in
            # the fields that end up in a text or jsonb column.
            **{
                f"body.{field}": {"dictionary": "awkward", "probability": 0.2}
                for field in (
                    "input",
                    "input[*].content",
                    "session_id",
                    "reason",
                    "title",
                    "message",
                    "comment",
                    "impact",
                    "description",
                    "system_prompt",
                )
            },
        },
        "operations": [
            {
                "include-path": "/api/v1/executions/{execution_id}/cancel",
                "parameters": {
                    "path.execution_id": {"dictionary": "cancellable", "probability": 0.8}
                },
            },
        ],
    }
)

# Fetched at collection, before pytest-django adds the test client's host to ALLOWED_HOSTS.
schema = schemathesis.openapi.from_asgi(
    "/api/v1/openapi.json", _served, config=CONFIG, headers={"Host": "localhost"}
)


@schema.parametrize()
# One seeded world per operation, shared by its examples (they may change it, as clients would).
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_operation_keeps_the_contract_its_openapi_states(
    case: schemathesis.Case, admin_key: str
) -> None:
    try:
        case.call_and_validate(headers={"Authorization": f"Bearer {admin_key}"})
    finally:
        # POST /api/v1/drills/memory/leak makes this very process leak (up to 100 MiB/s):
        # stopped after each example, before its next tick.
        leak_stop()
