"""``manage.py seed_history``: realistic past executions for demos and scale benchmarks.

The history follows the reference deployment (the write-up ``demo/breakwater.yaml`` models):
its per-agent mix of volumes, latencies, success rates and costs
("Performance by Agent"), about 99.95 % of executions answered, and its three incidents (an
upstream outage absorbed by the breaker and the fallback model, a cost spike stopped by the
daily budget, a slow memory leak). Every configured agent gets its share; unknown agent names
get the profile of the reference's "Others".

Rows are what the real path writes: ``agents.Execution`` as the recorder stores a finished
event (statuses, fallback reasons, the answering model and deployment, attempts, tokens, cost
from the deployment's prices rounded up to 8 places, steps shaped like the executor's), one
``budgets.SpendEntry`` per execution that cost something or was answered from the cache (what
``agents.executions.recording.store`` appends, so ``budgets_reconcile`` and the windows rebuilt
from the ledger agree with the rows), resolved incidents with timelines and postmortems, and the
rollups built from the rows (:func:`rollups_build`).

Speed: rows are generated in time order (minute by minute, with time-ordered UUIDv7 ids, so
every index grows at its end) from one seeded ``random.Random`` and lookup tables, each row one
``%`` format of a template prepared per agent and outcome; PostgreSQL gets them through
``COPY ... FROM STDIN`` in chunks (``--batch``), SQLite through ``bulk_create``. One
transaction: a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from queue import Full, Queue
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from agents.models import Agent, Execution, ModelDeployment
from agents.runtime.fallbacks import DEFAULT_FALLBACK_MESSAGES
from budgets.models import PriceVersion, SpendEntry, SpendRollup, TrafficRollup
from budgets.rollups import rollup_day_refresh, rollups_rebuild, traffic_rollups_refresh
from incidents.models import Incident, IncidentEvent, IncidentStatus, Severity

MAX_EXECUTIONS = 100_000_000
MAX_DAYS = 400
DEFAULT_BATCH = 50_000
MAX_BATCH = 1_000_000
APPLY_HINT = "run `python manage.py apply -f demo/breakwater.yaml` first"

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


class HistoryError(ValueError):
    """Bad options or configuration, found before anything is written."""


# --- the reference deployment's mix ----------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One agent's line of the reference's "Performance by Agent" table."""

    requests_per_day: int
    latency_ms: int
    success_rate: float
    cost_per_day_usd: float


REFERENCE: dict[str, Profile] = {
    "customer-support": Profile(200_000, 800, 0.96, 800.0),
    "code-review": Profile(150_000, 1500, 0.94, 900.0),
    "data-analyst": Profile(80_000, 2000, 0.92, 400.0),
    "content-writer": Profile(40_000, 1800, 0.95, 250.0),
}
OTHERS = Profile(5_000, 1000, 0.93, 25.0)  # "Others (6)": 30K/day, $150/day between six
FAILED_RATE = 0.0005  # 99.95 % answered (succeeded or degraded with the fallback message)
CACHE_RATE = 0.25  # of an agent's requests, when it has a response cache
CHEAP_RATE = 0.3  # of the paid calls of an agent with a cheap model, judged simple
RETRY_RATE = 0.04  # of the paid calls: one failed attempt, then the retry answered
FALLBACK_OK_RATE = 0.025  # of the paid calls: the primary timed out, the fallback answered
# Why the degraded ones were degraded (an agent without tools has no tool_error).
DEGRADED_MIX = (
    ("rate_limited", 0.30),
    ("timeout", 0.30),
    ("llm_error", 0.22),
    ("circuit_open", 0.10),
    ("budget_exceeded", 0.05),
    ("tool_error", 0.03),
)
INPUT_PER_OUTPUT = 4  # input tokens per output token (system prompt + context + question)
TABLE = 1024  # size of the lookup tables the rows draw from
MESSAGE_KEY = {
    "rate_limited": "rate_limit",
    "timeout": "timeout",
    "llm_error": "llm_error",
    "tool_error": "tool_error",
    "budget_exceeded": "budget",
    "circuit_open": "unavailable",
}
PROMPTS = (
    "Where is my order #{n}?",
    "Can you help me with ticket {n}?",
    "Please look at item {n} and tell me what you think.",
    "Summarise request {n} in three bullet points.",
    "What changed in version 2.{n}?",
    "I need an answer about case {n} today.",
    "Explain the result of query {n}.",
    "Draft a short reply for customer {n}.",
)
ANSWERS = (
    "Here is what I found: the request is in progress and should complete within two days.",
    "Done. I checked the details and everything looks correct; nothing else is needed.",
    "Three points: the main cause is known, a fix is ready, and it ships this week.",
    "The short answer is yes. The longer answer depends on the plan you are on.",
)


def diurnal_weight(at: datetime) -> float:
    """Relative traffic at ``at`` (UTC): a daytime peak at 14:00, a night trough at 02:00 of a
    fifth of it, and weekends at 70 %."""
    hour = at.hour + at.minute / 60
    weight = 1.0 + 0.8 * math.cos(2 * math.pi * (hour - 14) / 24)
    return weight * (0.7 if at.weekday() >= 5 else 1.0)


# --- the plan: everything checked and read before anything is written --------------------------


@dataclass(frozen=True)
class Target:
    """A deployment an execution can be answered by, with its price in 1e-6 USD per 1M
    tokens (so token x price is in 1e-12 USD, exact)."""

    id: int
    model: str
    input_price: int | None
    output_price: int | None
    input_usd_per_mtok: Decimal | None
    output_usd_per_mtok: Decimal | None


@dataclass(frozen=True)
class AgentPlan:
    name: str
    profile: Profile
    share: int  # executions of this agent
    primary: tuple[Target, ...]
    fallback: tuple[Target, ...]
    cheap: tuple[Target, ...]
    cached: bool
    has_tools: bool
    max_tokens: int
    timeout_ms: int
    attempt_timeout_ms: int
    fallback_messages: dict[str, str]


@dataclass(frozen=True)
class Window:
    """An incident's stretch of time (epoch seconds) and the agent it hit."""

    kind: str  # outage | cost_spike | leak
    agent: str
    start: float
    end: float


@dataclass(frozen=True)
class HistoryPlan:
    executions: int
    days: int
    seed: int
    batch: int
    now: datetime
    start: datetime
    agents: tuple[AgentPlan, ...]
    windows: tuple[Window, ...]


def _targets(by_model: dict[str, list[ModelDeployment]], name: str) -> tuple[Target, ...]:
    out = []
    for d in by_model.get(name, []):
        pin, pout = d.input_usd_per_mtok, d.output_usd_per_mtok
        # A deployment's weight is its share of the calls: repeat it in the pick table.
        out.extend(
            [
                Target(
                    id=d.pk,
                    model=d.name,
                    input_price=None if pin is None else int(pin * 1_000_000),
                    output_price=None if pout is None else int(pout * 1_000_000),
                    input_usd_per_mtok=pin,
                    output_usd_per_mtok=pout,
                )
            ]
            * max(1, min(d.weight, 8))
        )
    return tuple(out)


def _shares(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, exactly (largest remainder); each weight
    gets at least one while there are enough to go round."""
    whole = sum(weights)
    raw = [total * w / whole for w in weights]
    shares = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    for i in range(len(shares)):
        if shares[i] == 0:
            donor = max(range(len(shares)), key=lambda j: shares[j])
            if shares[donor] > 1:
                shares[donor] -= 1
                shares[i] = 1
    return shares


def history_plan(
    *,
    executions: int,
    days: int,
    agents: Sequence[str] | None = None,
    seed: int | None = None,
    batch: int = DEFAULT_BATCH,
    now: datetime | None = None,
) -> HistoryPlan:
    """Check the options and read the configuration; raises :class:`HistoryError` naming what
    is wrong. Reads only."""
    problems = []
    if isinstance(executions, bool) or not isinstance(executions, int) or executions < 1:
        problems.append(f"--executions must be a whole number > 0 (got {executions!r})")
    elif executions > MAX_EXECUTIONS:
        problems.append(f"--executions must be <= {MAX_EXECUTIONS:,} (got {executions:,})")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        problems.append(f"--days must be between 1 and {MAX_DAYS} (got {days!r})")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        problems.append(f"--batch must be between 1 and {MAX_BATCH:,} (got {batch!r})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        problems.append(f"--seed must be a whole number >= 0 (got {seed!r})")
    configured = {a.name: a for a in Agent.objects.order_by("name")}
    if not configured:
        problems.append(f"no agents are configured: {APPLY_HINT}")
    if agents is not None:
        wanted = [name.strip() for name in agents if name.strip()]
        if not wanted:
            problems.append("--agents names no agent")
        unknown = sorted({name for name in wanted if name not in configured})
        if unknown and configured:
            problems.append(
                f"--agents: unknown agent{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
                f" (configured: {', '.join(configured)})"
            )
        chosen = [configured[name] for name in dict.fromkeys(wanted) if name in configured]
    else:
        chosen = list(configured.values())
    by_model: dict[str, list[ModelDeployment]] = {}
    for d in ModelDeployment.objects.filter(enabled=True).order_by("name", "id"):
        by_model.setdefault(d.name, []).append(d)
    for agent in chosen:
        if agent.model not in by_model:
            problems.append(
                f"agent {agent.name}: its model {agent.model} has no enabled deployment"
            )
    if problems:
        raise HistoryError("; ".join(problems))
    now = (now or timezone.now()).astimezone(UTC)
    start = now - timedelta(days=days)
    profiles = [REFERENCE.get(a.name, OTHERS) for a in chosen]
    shares = _shares(executions, [p.requests_per_day for p in profiles])
    plans = []
    for agent, profile, share in zip(chosen, profiles, shares, strict=True):
        primary = _targets(by_model, agent.model)
        fallback = tuple(t for name in agent.fallback_models for t in _targets(by_model, name))
        timeout_ms = int(agent.timeout_s * 1000)
        attempt_ms = int((agent.attempt_timeout_s or agent.timeout_s / 2) * 1000)
        messages = {**DEFAULT_FALLBACK_MESSAGES, **(agent.fallback_messages or {})}
        plans.append(
            AgentPlan(
                name=agent.name,
                profile=profile,
                share=share,
                primary=primary,
                fallback=fallback or primary,
                cheap=_targets(by_model, agent.cheap_model) if agent.cheap_model else (),
                cached=agent.cache_ttl_s > 0,
                has_tools=bool(agent.tools),
                max_tokens=agent.max_tokens,
                timeout_ms=timeout_ms,
                attempt_timeout_ms=min(attempt_ms, timeout_ms),
                fallback_messages={k: str(v) for k, v in messages.items()},
            )
        )
    return HistoryPlan(
        executions=executions,
        days=days,
        seed=seed if seed is not None else random.SystemRandom().randrange(2**32),
        batch=batch,
        now=now,
        start=start,
        agents=tuple(plans),
        windows=_windows(plans, start, now),
    )


def _windows(plans: Sequence[AgentPlan], start: datetime, now: datetime) -> tuple[Window, ...]:
    """The reference's three incidents, placed at fixed points of the span: the outage on the
    busiest agent, the memory leak on the second, the cost spike on the third."""
    ranked = sorted(plans, key=lambda p: (-p.share, p.name))
    ranked = [p for p in ranked if p.share > 0]
    if not ranked:
        return ()
    span = (now - start).total_seconds()
    t0 = start.timestamp()

    def at(fraction: float) -> float:
        return float(math.floor((t0 + span * fraction) / 60) * 60)

    outage = at(0.38)
    spike = at(0.62)
    leak = at(0.80)
    return (
        Window("outage", ranked[0].name, outage, outage + min(1800.0, span / 20)),
        Window("leak", ranked[1 % len(ranked)].name, leak, leak + min(6 * 3600.0, span / 8)),
        Window("cost_spike", ranked[2 % len(ranked)].name, spike, spike + min(7200.0, span / 12)),
    )


# --- rows ----------------------------------------------------------------------------------------

EXECUTION_COLUMNS = (
    "id", "agent_name", "api_key_id", "status", "input", "output", "model", "deployment_id",
    "attempts", "fallback_used", "fallback_reason", "cached", "input_tokens", "output_tokens",
    "cost_usd", "model_choice", "saved_usd", "latency_ms", "session_id", "metadata", "steps",
    "error", "created_at", "started_at", "finished_at", "owner", "reserved_usd", "queued_at",
)  # fmt: skip
SPEND_COLUMNS = (
    "execution_id", "at", "agent_name", "api_key_id", "model", "deployment_id", "input_tokens",
    "output_tokens", "input_usd_per_mtok", "output_usd_per_mtok", "cost_usd", "charged_micros",
    "cached", "saved_usd",
)  # fmt: skip


def _text(value: str) -> str:
    """``value`` as a field of PostgreSQL's COPY text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _lit(value: str) -> str:
    """``value`` as a COPY field inside a ``%`` template (a constant part of the lines)."""
    return _text(value).replace("%", "%%")


def _json(value: Any) -> str:
    """A JSON COPY field, passed to a template as an argument."""
    return _text(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _json_lit(value: Any) -> str:
    """A JSON value as a constant part of a template."""
    return _lit(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _step(kind: str, model: str | None, deployment: int | None, outcome: str, detail: str) -> str:
    """A step as ``Step.as_dict`` writes it, with ``%s %d %d`` for latency and tokens."""
    head = json.dumps(
        {"kind": kind, "model": model, "deployment": deployment, "outcome": outcome,
         "detail": detail},
        separators=(",", ":"),
    )[:-1]  # fmt: skip
    return _lit(head) + ',"latency_ms":%s,"input_tokens":%d,"output_tokens":%d}'


def _price(value: Decimal | None) -> str:
    return "\\N" if value is None else format(value, "f")


def _usd(units_1e8: int) -> str:
    return f"{units_1e8 // 100_000_000}.{units_1e8 % 100_000_000:08d}"


def _cost_1e8(target: Target, tokens_in: int, tokens_out: int) -> int:
    """Cost in 1e-8 USD, rounded up (the recorder's 8 places, ``ROUND_CEILING``)."""
    if target.input_price is None or target.output_price is None:
        return 0
    exact = tokens_in * target.input_price + tokens_out * target.output_price  # 1e-12 USD
    return -(-exact // 10_000)


@dataclass
class _Outcome:
    """One kind of execution an agent has, with its COPY templates prepared."""

    kind: str
    status: str
    target: Target | None  # the deployment that answered (or was last tried)
    reason: str | None
    attempts: int
    cached: bool
    choice: str
    paid: bool  # tokens were spent: cost > 0 and a ledger entry
    steps: str  # template: one (latency, in, out) triple per variable step
    step_vars: int
    line: str = ""
    spend: str = ""
    variants: list[_Variant] = field(default_factory=list)


@dataclass(frozen=True)
class _Variant:
    """One prepared row of an outcome: everything but the id and the times."""

    line: str  # the execution line between the id and the times
    latency_ms: int
    spend: str  # the ledger line after the id and the time ("" = no entry)
    cost_1e8: int


def _outcomes(plan: AgentPlan, rng: random.Random) -> list[_Outcome]:
    """Every outcome the agent's rows are drawn from, one per (kind, deployment)."""
    out: list[_Outcome] = []
    cheap = plan.cheap

    def attempt(t: Target, outcome: str, detail: str = "") -> str:
        return _step("attempt", t.model, t.id, outcome, detail)

    for t in plan.primary:
        out.append(_Outcome("ok", "succeeded", t, None, 1, False, "standard", True,
                            attempt(t, "ok"), 1))  # fmt: skip
        out.append(
            _Outcome(
                "retry", "succeeded", t, None, 2, False, "standard", True,
                attempt(t, "ProviderError", "upstream answered 502 Bad Gateway") + ","
                + attempt(t, "ok"), 2,
            )
        )  # fmt: skip
        out.append(
            _Outcome(
                "cached", "succeeded", t, None, 0, True, "standard", False,
                _lit(json.dumps({"kind": "cache", "model": t.model, "deployment": t.id,
                                  "outcome": "hit", "detail": "saved "}, separators=(",", ":"))
                      [:-2]) + '%s USD; original %d/%d tokens","latency_ms":0.0,'
                '"input_tokens":0,"output_tokens":0}', 0,
            )
        )  # fmt: skip
        out.append(
            _Outcome(
                "failed", "failed", t, None, 1, False, "standard", False,
                attempt(t, "ClientError", "upstream answered 400: context length exceeded"), 1,
            )
        )  # fmt: skip
        for f in plan.fallback:
            # The primary timed out: the attempt, the fallback step, the fallback's answer.
            fb = _lit(json.dumps({"kind": "fallback", "model": f.model, "deployment": None,
                                  "outcome": "timeout", "detail": "", "latency_ms": 0.0,
                                  "input_tokens": 0, "output_tokens": 0},
                                 separators=(",", ":")))  # fmt: skip
            out.append(
                _Outcome(
                    "fallback_timeout", "succeeded", f, "timeout", 2, False, "standard", True,
                    attempt(t, "Timeout", "attempt deadline reached") + "," + fb + ","
                    + attempt(f, "ok"), 2,
                )
            )  # fmt: skip
            # The primary's breakers are known open: the executor starts on the fallback model
            # (no step for the skip), with fallback_reason circuit_open.
            out.append(
                _Outcome(
                    "fallback_circuit_open", "succeeded", f, "circuit_open", 1, False,
                    "standard", True, attempt(f, "ok"), 1,
                )
            )  # fmt: skip
    for t in cheap:
        out.append(_Outcome("cheap", "succeeded", t, None, 1, False, "cheap:simple", True,
                            attempt(t, "ok"), 1))  # fmt: skip
    for reason, _ in DEGRADED_MIX:
        if reason == "tool_error" and not plan.has_tools:
            continue
        if reason in ("rate_limited", "circuit_open", "budget_exceeded"):
            refused = _lit(json.dumps({"kind": "refused", "model": None, "deployment": None,
                                        "outcome": reason, "detail": "", "latency_ms": 0.0,
                                        "input_tokens": 0, "output_tokens": 0},
                                       separators=(",", ":")))  # fmt: skip
            out.append(_Outcome(f"degraded_{reason}", "degraded", None, reason, 0, False,
                                "standard", False, refused, 0))  # fmt: skip
            continue
        t, f = plan.primary[0], plan.fallback[-1]
        if reason == "timeout":
            steps = (
                attempt(t, "Timeout", "attempt deadline reached")
                + ","
                + _lit(json.dumps({"kind": "fallback", "model": f.model, "deployment": None,
                                    "outcome": "timeout", "detail": "", "latency_ms": 0.0,
                                    "input_tokens": 0, "output_tokens": 0},
                                   separators=(",", ":")))
                + ","
                + attempt(f, "DeadlineReached", "execution deadline reached")
            )  # fmt: skip
            out.append(_Outcome("degraded_timeout", "degraded", f, reason, 2, False, "standard",
                                False, steps, 2))  # fmt: skip
        elif reason == "llm_error":
            steps = (
                attempt(t, "ProviderError", "upstream answered 500")
                + ","
                + attempt(t, "ProviderError", "upstream answered 500")
                + ","
                + _lit(json.dumps({"kind": "fallback", "model": f.model, "deployment": None,
                                    "outcome": "llm_error", "detail": "", "latency_ms": 0.0,
                                    "input_tokens": 0, "output_tokens": 0},
                                   separators=(",", ":")))
                + ","
                + attempt(f, "ProviderError", "upstream answered 503")
            )  # fmt: skip
            out.append(_Outcome("degraded_llm_error", "degraded", f, reason, 3, False,
                                "standard", False, steps, 3))  # fmt: skip
        else:  # tool_error: the model answered, a tool then failed
            steps = attempt(t, "ok") + "," + _lit(
                json.dumps({"kind": "tool", "model": None, "deployment": None,
                            "outcome": "ToolFailed", "detail": "lookup: upstream timed out"},
                           separators=(",", ":"))[:-1]
            ) + ',"latency_ms":35.0,"input_tokens":0,"output_tokens":0}'  # fmt: skip
            out.append(_Outcome("degraded_tool_error", "degraded", t, reason, 1, False,
                                "standard", True, steps, 1))  # fmt: skip
    for o in out:
        _templates(plan, o)
    return out


def _templates(plan: AgentPlan, o: _Outcome) -> None:
    """The COPY lines of ``o`` with the per-row fields left as ``%`` placeholders:
    id, input, output, tokens in/out, cost, saved, latency, steps, created, finished."""
    t = o.target
    model = _lit(t.model) if t else ""
    deployment = str(t.id) if t else "\\N"
    output = (
        "%s"
        if o.status == "succeeded"
        else _lit(plan.fallback_messages[MESSAGE_KEY[o.reason or "llm_error"]])
        if o.status == "degraded"
        else ""
    )
    error = (
        _json_lit(
            {"type": "client_error", "message": "upstream answered 400: context length exceeded"}
        )
        if o.status == "failed"
        else "\\N"
    )
    # From the agent's name to the error: the id goes before, the two times after.
    o.line = "\t" + "\t".join(
        [
            _lit(plan.name), "\\N", o.status, "%s", output, model, deployment,
            str(o.attempts), "t" if o.reason else "f", o.reason or "\\N",
            "t" if o.cached else "f", "%d", "%d", "%s", o.choice, "%s", "%d", "", "{}",
            "[%s]", error,
        ]
    ) + "\t"  # fmt: skip
    if o.paid or o.cached:
        assert t is not None
        # After the execution id and the time.
        o.spend = "\t" + "\t".join(
            [
                _lit(plan.name), "\\N", model, deployment, "%d", "%d",
                _price(t.input_usd_per_mtok), _price(t.output_usd_per_mtok), "%s", "%d",
                "t" if o.cached else "f", "%s",
            ]
        ) + "\n"  # fmt: skip


LINE_END = "\t\t0\t\\N\n"  # owner, reserved_usd, queued_at


@dataclass
class _AgentState:
    plan: AgentPlan
    outcomes: dict[str, list[_Outcome]]
    latency: list[int]  # ms, lognormal around the profile's average
    tokens_out: list[int]
    tokens_in: list[int]
    inputs: list[str]
    degraded_cut: list[tuple[float, str]]
    cum_target: float = 0.0  # running share of the agent's executions
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)


def _agent_state(plan: AgentPlan, rng: random.Random, windows: Sequence[Window]) -> _AgentState:
    outcomes: dict[str, list[_Outcome]] = {}
    for o in _outcomes(plan, rng):
        outcomes.setdefault(o.kind, []).append(o)
    profile = plan.profile
    sigma = 0.45
    mu = math.log(profile.latency_ms) - sigma * sigma / 2  # mean = the profile's average
    latency = sorted(max(120, int(rng.lognormvariate(mu, sigma))) for _ in range(TABLE))
    rng.shuffle(latency)
    # Tokens so that the paid calls cost what the reference's agent spends a day.
    paid = max(0.05, 1 - (CACHE_RATE if plan.cached else 0) - (1 - profile.success_rate))
    per_call_usd = profile.cost_per_day_usd / profile.requests_per_day / paid
    t = plan.primary[0]
    out_mean = max(40, int(plan.max_tokens * 0.45))
    in_mean = out_mean * INPUT_PER_OUTPUT
    if t.input_price is not None and t.output_price is not None:
        per_call = per_call_usd * 1e12  # in the prices' unit: 1e-12 USD
        per_out = INPUT_PER_OUTPUT * t.input_price + t.output_price
        if per_out > 0:
            out_mean = max(40, min(out_mean, int(per_call / per_out)))
        if t.input_price > 0:
            in_mean = max(60, int((per_call - out_mean * t.output_price) / t.input_price))
    tokens_out = [
        max(1, min(plan.max_tokens, int(rng.lognormvariate(math.log(out_mean) - 0.125, 0.5))))
        for _ in range(TABLE)
    ]
    tokens_in = [
        max(8, int(rng.lognormvariate(math.log(in_mean) - 0.08, 0.4))) for _ in range(TABLE)
    ]
    inputs = [
        _json([{"role": "user", "content": PROMPTS[i % len(PROMPTS)].format(n=1000 + i * 37)}])
        for i in range(64)
    ]
    mix = [(r, w) for r, w in DEGRADED_MIX if r != "tool_error" or plan.has_tools]
    total = sum(w for _, w in mix)
    cut, acc = [], 0.0
    for reason, weight in mix:
        acc += weight / total
        cut.append((acc, f"degraded_{reason}"))
    return _AgentState(
        plan=plan,
        outcomes=outcomes,
        latency=latency,
        tokens_out=tokens_out,
        tokens_in=tokens_in,
        inputs=inputs,
        degraded_cut=cut,
        windows=[w for w in windows if w.agent == plan.name],
    )


_ANSWERS = [_text(a) for a in ANSWERS]
_VARIANT_DIGIT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def _minute_prefixes() -> Callable[[int], str]:
    cache: dict[int, str] = {}

    def prefix(minute: int) -> str:
        text = cache.get(minute)
        if text is None:
            if len(cache) > 4096:
                cache.clear()
            text = cache[minute] = datetime.fromtimestamp(minute * 60, tz=UTC).strftime(
                "%Y-%m-%d %H:%M:"
            )
        return text

    return prefix


@dataclass
class Chunk:
    executions: list[str]
    spend: list[str]


@dataclass
class Tally:
    """What was generated, per agent and in each incident window (for the postmortems)."""

    by_agent: dict[str, dict[str, int]] = field(default_factory=dict)
    window_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    window_cost_1e8: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    spend_rows: int = 0


def generate(plan: HistoryPlan, tally: Tally | None = None) -> Iterator[Chunk]:
    """The history as chunks of COPY text lines (``plan.batch`` executions each), in time
    order. Deterministic: the same plan (seed, now, configuration) gives the same lines."""
    tally = tally if tally is not None else Tally()
    rng = random.Random(plan.seed)
    rand = rng.random
    bits = rng.getrandbits
    states = [_agent_state(a, rng, plan.windows) for a in plan.agents if a.share > 0]
    for s in states:
        _prepare(s, bits)
    for s in states:
        tally.by_agent[s.plan.name] = {}
    for w in plan.windows:
        tally.window_rows[w.kind] = {}
        tally.window_cost_1e8[w.kind] = 0
    t_start = plan.start.timestamp()
    t_end = plan.now.timestamp()
    first_minute = int(t_start // 60)
    last_minute = int(t_end // 60)
    minutes = range(first_minute, last_minute + 1)
    # Minute weights (diurnal shape), clipped to the span at both ends.
    weights = []
    for m in minutes:
        lo, hi = max(t_start, m * 60.0), min(t_end, m * 60.0 + 60)
        if hi <= lo:
            weights.append(0.0)
            continue
        weights.append(diurnal_weight(datetime.fromtimestamp(m * 60, tz=UTC)) * (hi - lo) / 60)
    total_weight = sum(weights)
    prefix = _minute_prefixes()
    # 2**20 pieces of 12 hex digits for the ids, drawn from the seed *and* the end of the
    # history: the same seed run again later writes other ids (the times may coincide).
    ids = random.Random(f"{plan.seed}:{plan.now.isoformat()}")
    rand_hex = ids.randbytes(12 * 2**20 // 2 + 1).hex()
    executions: list[str] = []
    spend: list[str] = []
    cumulative = 0.0
    n_states = len(states)
    for index, m in enumerate(minutes):
        weight = weights[index]
        if weight == 0.0:
            continue
        cumulative += weight
        fraction = cumulative / total_weight
        lo = max(t_start, m * 60.0)
        hi = min(t_end, m * 60.0 + 60)
        for si in range(n_states):
            s = states[si]
            n = round(s.plan.share * fraction) - s.done
            if n <= 0:
                continue
            s.done += n
            offsets = sorted(lo + (hi - lo) * rand() for _ in range(n))
            for created in offsets:
                _row(s, created, t_end, rand, bits, prefix, rand_hex, executions, spend, tally)
            if len(executions) >= plan.batch:
                yield Chunk(executions, spend)
                executions, spend = [], []
    if executions:
        yield Chunk(executions, spend)


def _window_at(s: _AgentState, created: float) -> Window | None:
    for w in s.windows:
        if w.start <= created < w.end:
            return w
    return None


VARIANTS = 128  # prepared rows per outcome (a power of two: picked with getrandbits)


def _variant(
    s: _AgentState, o: _Outcome, latency: int, token_scale: float, bits: Callable[[int], int]
) -> _Variant:
    """One row of outcome ``o``: its tokens, cost, latency and steps (``latency``: the
    answering attempt's, drawn from the agent's table)."""
    plan = s.plan
    t = o.target
    ti = to = cost = saved = 0
    steps: tuple[Any, ...]
    if o.cached:
        assert t is not None
        latency = 3 + bits(5)
        ti0, to0 = s.tokens_in[bits(10)], s.tokens_out[bits(10)]
        saved = _cost_1e8(t, ti0, to0)
        steps = (_usd(saved), ti0, to0)
    elif o.paid:
        assert t is not None
        ti = int(s.tokens_in[bits(10)] * token_scale)
        to = min(plan.max_tokens, int(s.tokens_out[bits(10)] * token_scale))
        if o.status == "degraded":  # tool_error: the answer's tokens were spent, then a tool failed
            to //= 4
        cost = _cost_1e8(t, ti, to)
        if o.step_vars == 1:
            steps = (f"{latency}.0", ti, to)
        else:  # a failed first attempt (a timeout or a 502), then the answer
            first = plan.attempt_timeout_ms if o.kind == "fallback_timeout" else 300 + bits(8)
            steps = (f"{first}.0", 0, 0, f"{latency}.0", ti, to)
            latency += first
    elif o.status == "failed":
        latency = 150 + bits(7)
        steps = (f"{latency}.0", 0, 0)
    elif o.step_vars == 0:  # refused before any attempt
        latency = 1 + bits(3)
        steps = ()
    elif o.kind == "degraded_timeout":
        first = plan.attempt_timeout_ms
        latency = max(first + 1, plan.timeout_ms - bits(6))
        steps = (f"{first}.0", 0, 0, f"{latency - first}.0", 0, 0)
    else:  # llm_error: two attempts on the primary, one on the fallback
        one = 250 + bits(8)
        latency = 3 * one + 500
        steps = (f"{one}.0", 0, 0, f"{one}.0", 0, 0, f"{one}.0", 0, 0)
    cost_s, saved_s = _usd(cost), _usd(saved)
    args: tuple[Any, ...] = (s.inputs[bits(6)],)
    if o.status == "succeeded":
        args += (_ANSWERS[bits(2)],)
    line = o.line % (*args, ti, to, cost_s, saved_s, latency, o.steps % steps)
    spend = o.spend % (ti, to, cost_s, -(-cost // 100), saved_s) if o.spend else ""
    return _Variant(line, latency, spend, cost)


def _prepare(s: _AgentState, bits: Callable[[int], int]) -> None:
    for choices in s.outcomes.values():
        for o in choices:
            o.variants = [_variant(s, o, s.latency[bits(10)], 1.0, bits) for _ in range(VARIANTS)]


def _row(
    s: _AgentState,
    created: float,
    t_end: float,
    rand: Callable[[], float],
    bits: Callable[[int], int],
    prefix: Callable[[int], str],
    rand_hex: str,
    executions: list[str],
    spend: list[str],
    tally: Tally,
) -> None:
    plan = s.plan
    window = _window_at(s, created) if s.windows else None
    r = rand()
    kind = ""
    scale_latency = 1.0
    token_scale = 1.0
    if window is not None:
        progress = (created - window.start) / (window.end - window.start)
        if window.kind == "outage":
            # The primary is down: the first minute times out, then its breaker is open and
            # the fallback model answers; a few find the fallback saturated too.
            if created - window.start < 60:
                kind = "fallback_timeout" if r < 0.8 else "degraded_timeout"
            else:
                kind = "fallback_circuit_open" if r < 0.97 else "degraded_circuit_open"
        elif window.kind == "leak":
            # Latency creeps up to 3x; near the end attempts start timing out.
            scale_latency = 1 + 2 * progress
            if progress > 0.7 and r < 0.15 * progress:
                kind = "degraded_timeout"
        elif window.kind == "cost_spike":
            # A runaway prompt: 8x the tokens, until the daily budget stops half the calls.
            token_scale = 8.0
            if progress > 0.6 and r < 0.5:
                kind = "degraded_budget_exceeded"
    if not kind:
        succeeded = plan.profile.success_rate
        if r < FAILED_RATE:
            kind = "failed"
        elif r < FAILED_RATE + (1 - succeeded):
            x = (r - FAILED_RATE) / (1 - succeeded)
            kind = s.degraded_cut[-1][1]
            for cut, name in s.degraded_cut:
                if x <= cut:
                    kind = name
                    break
        elif plan.cached and (r - FAILED_RATE - (1 - succeeded)) < CACHE_RATE * succeeded:
            kind = "cached"
        else:
            y = rand()
            if y < RETRY_RATE:
                kind = "retry"
            elif y < RETRY_RATE + FALLBACK_OK_RATE:
                kind = "fallback_timeout"
            elif plan.cheap and y > 1 - CHEAP_RATE:
                kind = "cheap"
            else:
                kind = "ok"
    choices = s.outcomes[kind]
    o = choices[bits(10) % len(choices)] if len(choices) > 1 else choices[0]
    if scale_latency != 1.0 or token_scale != 1.0:
        v = _variant(s, o, int(s.latency[bits(10)] * scale_latency), token_scale, bits)
    else:
        v = o.variants[bits(7)]
    finished = created + v.latency_ms / 1000
    if finished > t_end:  # never in the future
        created -= finished - t_end
        finished = t_end
    cm = int(created // 60)
    fm = int(finished // 60)
    created_s = f"{prefix(cm)}{created - cm * 60:09.6f}+00:00"
    # A UUIDv7: 48 bits of milliseconds, version 7, variant 10, then 12 random hex digits (a
    # piece of ``rand_hex``: formatting a 64-bit number per row costs 2 µs) and the row's
    # number, so ids are unique by construction.
    k = bits(20) * 12
    rr = rand_hex[k : k + 12]
    tally.rows += 1
    eid = f"{int(created * 1000):012x}7{rr[:3]}{_VARIANT_DIGIT[rr[3]]}{rr[4:]}{tally.rows:07x}"
    executions.append(
        f"{eid}{v.line}{created_s}\t{created_s}\t{prefix(fm)}{finished - fm * 60:09.6f}+00:00"
        f"{LINE_END}"
    )
    if v.spend:
        spend.append(f"{eid}\t{created_s}{v.spend}")
        tally.spend_rows += 1
    counts = tally.by_agent[plan.name]
    counts[kind] = counts.get(kind, 0) + 1
    if window is not None:
        wc = tally.window_rows[window.kind]
        wc[kind] = wc.get(kind, 0) + 1
        tally.window_cost_1e8[window.kind] += v.cost_1e8


# --- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedResult:
    seed: int
    executions: int
    spend_entries: int
    incidents: int
    price_versions: int
    rollup_rows: int
    days: int
    insert_s: float
    rollup_s: float

    @property
    def rows_per_s(self) -> float:
        return self.executions / self.insert_s if self.insert_s > 0 else float("inf")


def _unescape(field_text: str) -> str | None:
    if field_text == "\\N":
        return None
    out, i = [], 0
    while i < len(field_text):
        ch = field_text[i]
        if ch == "\\" and i + 1 < len(field_text):
            nxt = field_text[i + 1]
            out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


_JSON_COLUMNS = {"input", "metadata", "steps", "error"}
_MONEY_COLUMNS = {"cost_usd", "saved_usd", "reserved_usd", "input_usd_per_mtok",
                  "output_usd_per_mtok"}  # fmt: skip
_INT_COLUMNS = {"api_key_id", "deployment_id", "attempts", "input_tokens", "output_tokens",
                "latency_ms", "charged_micros"}  # fmt: skip
_BOOL_COLUMNS = {"fallback_used", "cached"}
_TIME_COLUMNS = {"created_at", "started_at", "finished_at", "queued_at", "at"}


def _values(line: str, columns: Sequence[str]) -> dict[str, Any]:
    """One COPY line back to field values (the SQLite path writes the very same rows)."""
    values: dict[str, Any] = {}
    for name, raw in zip(columns, line.rstrip("\n").split("\t"), strict=True):
        text = _unescape(raw)
        if text is None:
            values[name] = None
        elif name in ("id", "execution_id"):
            values[name] = uuid.UUID(text)
        elif name in _JSON_COLUMNS:
            values[name] = json.loads(text)
        elif name in _MONEY_COLUMNS:
            values[name] = Decimal(text)
        elif name in _INT_COLUMNS:
            values[name] = int(text)
        elif name in _BOOL_COLUMNS:
            values[name] = text == "t"
        elif name in _TIME_COLUMNS:
            values[name] = datetime.fromisoformat(text)
        else:
            values[name] = text
    return values


def _copy(table: str, columns: Sequence[str], lines: list[str]) -> None:
    if not lines:
        return
    sql = f'COPY "{table}" ({", ".join(columns)}) FROM STDIN'
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg 3's cursor under Django's wrapper
        with raw.copy(sql) as copy:
            copy.write("".join(lines))


def _insert(model: type[Any], columns: Sequence[str], lines: list[str]) -> None:
    """The other databases: one ``executemany`` of the rows, each value prepared by its
    model field (as ``bulk_create`` would, without its per-statement variable limit: SQLite
    allows 999, 37 executions a statement)."""
    if not lines:
        return
    fields = [model._meta.get_field(name) for name in columns]
    table = connection.ops.quote_name(model._meta.db_table)
    names = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    rows = []
    for line in lines:
        values = _values(line, columns)
        rows.append(
            [
                f.get_db_prep_save(values[name], connection=connection)
                for f, name in zip(fields, columns, strict=True)
            ]
        )
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)  # noqa: S608


def _write(chunk: Chunk) -> None:
    if connection.vendor == "postgresql":
        _copy(Execution._meta.db_table, EXECUTION_COLUMNS, chunk.executions)
        _copy(SpendEntry._meta.db_table, SPEND_COLUMNS, chunk.spend)
        return
    _insert(Execution, EXECUTION_COLUMNS, chunk.executions)
    _insert(SpendEntry, SPEND_COLUMNS, chunk.spend)


def _price_history(plan: HistoryPlan) -> int:
    """The prices the ledger entries carry were in force over the whole history: each
    deployment whose first ``PriceVersion`` is later than the history's start gets one from
    the start, with that first version's prices (history is appended to, never rewritten)."""
    added = 0
    targets = {t.id: t for a in plan.agents for t in (*a.primary, *a.fallback, *a.cheap)}
    for deployment in ModelDeployment.objects.filter(pk__in=targets).select_related("provider"):
        first = (
            PriceVersion.objects.filter(deployment_id=deployment.pk)
            .order_by("effective_from", "id")
            .first()
        )
        if first is not None and first.effective_from <= plan.start:
            continue
        PriceVersion(
            deployment_id=deployment.pk,
            model=deployment.name,
            provider=deployment.provider.name,
            upstream_model=deployment.upstream_model,
            input_usd_per_mtok=first.input_usd_per_mtok if first else deployment.input_usd_per_mtok,
            output_usd_per_mtok=first.output_usd_per_mtok
            if first
            else deployment.output_usd_per_mtok,
            cached_input_usd_per_mtok=first.cached_input_usd_per_mtok
            if first
            else deployment.cached_input_usd_per_mtok,
            effective_from=plan.start,
        ).save()
        added += 1
    return added


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def _incidents(plan: HistoryPlan, tally: Tally) -> int:
    """The three incidents of the windows, resolved, with timelines and postmortems."""
    made = 0
    agents = {a.name: a for a in plan.agents}
    for w in plan.windows:
        a = agents[w.agent]
        rows = tally.window_rows.get(w.kind, {})
        total = sum(rows.values())
        minutes = round((w.end - w.start) / 60)
        if w.kind == "outage":
            answered = rows.get("fallback_circuit_open", 0) + rows.get("fallback_timeout", 0)
            degraded = sum(n for k, n in rows.items() if k.startswith("degraded"))
            d = a.primary[0]
            ids = sorted({t.id for t in a.primary})
            down = ("deployments " if len(ids) > 1 else "deployment ") + ", ".join(map(str, ids))
            fb = a.fallback[0].model
            incident = Incident(
                kind="breaker_open",
                dedup_key=f"breaker:deployment:{d.id}",
                severity=Severity.MAJOR,
                status=IncidentStatus.RESOLVED,
                title=f"Circuit breaker open: deployment {d.id}",
                agent_name=a.name,
                opened_at=_when(w.start + 45),
                acknowledged_at=_when(w.start + 240),
                acknowledged_by="oncall",
                resolved_at=_when(w.end),
                impact=f"{minutes} min outage of {d.model} ({down}); {total:,} "
                f"requests of {a.name} in the window, {answered:,} answered by the fallback "
                f"model {fb}, {degraded:,} degraded with the fallback message, none failed.",
                root_cause=f"The upstream provider of {d.model} returned timeouts and 503s for "
                f"{minutes} minutes (a regional outage on their side).",
                resolution="The deployment breaker opened after the failure threshold and "
                f"routed calls to {fb}; half-open probes closed it once the upstream answered.",
                lessons="Always have a backup: every agent keeps a fallback model on another "
                "provider, and its breaker opens in seconds, not minutes.",
            )
            events = [
                (w.start + 45, "opened", "breaker opened (failure rate 0.8 over 20 calls)"),
                (w.start + 240, "acknowledged", "acknowledged by oncall"),
                (w.start + 45 + 60, "half_open", "probing recovery"),
                (w.start + 45 + 61, "recurred", "breaker opened (probe failed)"),
                (w.end - 60, "half_open", "probing recovery"),
                (w.end, "resolved", "breaker closed (probe succeeded)"),
            ]
        elif w.kind == "cost_spike":
            cost = Decimal(tally.window_cost_1e8.get(w.kind, 0)) / 100_000_000
            refused = rows.get("degraded_budget_exceeded", 0)
            incident = Incident(
                kind="cost_spike",
                dedup_key=f"cost_spike:{a.name}",
                severity=Severity.MAJOR,
                status=IncidentStatus.RESOLVED,
                title=f"Cost spike on {a.name}: 8x its baseline",
                agent_name=a.name,
                opened_at=_when(w.start + 300),
                acknowledged_at=_when(w.start + 900),
                acknowledged_by="oncall",
                resolved_at=_when(w.end + 300),
                impact=f"${cost:,.2f} spent by {a.name} in {minutes} min at 8x the usual "
                f"tokens per call; {refused:,} calls refused once its daily budget was used.",
                root_cause="A prompt change sent whole result sets back to the model as "
                "context, multiplying the input tokens of every call.",
                resolution="The agent's daily budget stopped the spend; the prompt change was "
                "reverted.",
                lessons="Monitor costs in real time: spike alerts at 3x the 6-hour baseline, "
                "and a daily budget on every agent.",
            )
            events = [
                (w.start + 300, "opened", "spend 8x the baseline over 5 minutes"),
                (w.start + 900, "acknowledged", "acknowledged by oncall"),
                (w.start + (w.end - w.start) * 0.6, "comment", "daily budget reached"),
                (w.end + 300, "resolved", "spend back under 1.5x the baseline"),
            ]
        else:  # leak
            timeouts = rows.get("degraded_timeout", 0)
            incident = Incident(
                kind="error_rate",
                dedup_key=f"error_rate:{a.name}",
                severity=Severity.MINOR,
                status=IncidentStatus.RESOLVED,
                title=f"Latency rising on {a.name}: p95 3x over {minutes // 60} h",
                agent_name=a.name,
                opened_at=_when(w.start + (w.end - w.start) * 0.5),
                acknowledged_at=_when(w.start + (w.end - w.start) * 0.6),
                acknowledged_by="oncall",
                resolved_at=_when(w.end),
                impact=f"Gradual degradation over {minutes} min: latency of {a.name} up to 3x, "
                f"{timeouts:,} requests timed out near the end.",
                root_cause="A memory leak in the worker pods: garbage collection pauses grew "
                "until attempts hit their timeout.",
                resolution="The pods were restarted, then restarted daily until the leak was "
                "fixed.",
                lessons="Monitor memory usage per process, not only latency.",
            )
            events = [
                (w.start + (w.end - w.start) * 0.5, "opened", "p95 latency above the SLO"),
                (w.start + (w.end - w.start) * 0.6, "acknowledged", "acknowledged by oncall"),
                (w.end - 120, "comment", "worker pods restarted"),
                (w.end, "resolved", "latency back to normal"),
            ]
        incident.save()
        IncidentEvent.objects.bulk_create(
            [
                IncidentEvent(
                    incident=incident,
                    at=_when(at),
                    kind=kind,
                    message=message,
                    actor="oncall" if kind in ("acknowledged", "comment") else "system",
                    data={"seeded": True},
                )
                for at, kind, message in sorted(events)
            ]
        )
        made += 1
    return made


def rollups_build(days: Iterable[date]) -> int:
    """Build every rollup of ``days`` (UTC) from the raw rows; returns the rows kept. The one
    place the seeder builds rollups: the daily ``SpendRollup`` rows, and the traffic rollups
    (minute rows, folded into hours and days) a day at a time, oldest first. Minute rows older
    than they are kept are pruned as the later days are built, hour and day rows stay."""
    now = timezone.now()
    kept = 0
    for day in sorted(set(days)):
        kept += rollup_day_refresh(day=day)
        day_end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        kept += traffic_rollups_refresh(
            now=min(day_end - timedelta(microseconds=1), now), minutes=24 * 60
        )
    return kept


def history_days(plan: HistoryPlan) -> list[date]:
    first = plan.start.date()
    return [first + timedelta(days=i) for i in range((plan.now.date() - first).days + 1)]


def _ahead(chunks: Iterator[Chunk], depth: int = 2) -> Iterator[Chunk]:
    """``chunks``, generated on a thread up to ``depth`` ahead: the next chunk is made while
    the database ingests this one (the generator holds the GIL, the COPY mostly waits)."""
    queue: Queue[Chunk | BaseException | None] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        queue.put(chunk, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            queue.put(exc)

    worker = threading.Thread(target=produce, name="seed-history", daemon=True)
    worker.start()
    try:
        while True:
            item = queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def history_seed(plan: HistoryPlan, *, progress: ProgressFn | None = None) -> SeedResult:
    """Write the history of ``plan`` (one transaction), then build its rollups."""
    tally = Tally()
    started = time.perf_counter()
    done = 0
    with transaction.atomic():
        versions = _price_history(plan)
        for chunk in _ahead(generate(plan, tally)):
            _write(chunk)
            done += len(chunk.executions)
            if progress is not None:
                progress("executions", done, plan.executions)
        incidents = _incidents(plan, tally)
    inserted = time.perf_counter()
    days = history_days(plan)
    rollup_rows = 0
    for i, day in enumerate(days, 1):
        rollup_rows += rollups_build([day])
        if progress is not None:
            progress("rollups", i, len(days))
    # Today and yesterday once more, with their minute parts and the watermark: the rollups
    # job goes on from here instead of reading the history as new (budgets/rollups.py).
    rollups_rebuild(now=plan.now)
    if connection.vendor == "postgresql":
        # Rows written in one transaction have no statistics until autovacuum gets to them:
        # the planner would guess (a sort of 436K minute rows for the prune's first 2,000).
        with connection.cursor() as cursor:
            for model in (Execution, SpendEntry, SpendRollup, TrafficRollup):
                cursor.execute(f"ANALYZE {model._meta.db_table}")
    finished = time.perf_counter()
    return SeedResult(
        seed=plan.seed,
        executions=done,
        spend_entries=tally.spend_rows,
        incidents=incidents,
        price_versions=versions,
        rollup_rows=rollup_rows,
        days=len(days),
        insert_s=inserted - started,
        rollup_s=finished - inserted,
    )


__all__ = [
    "HistoryError",
    "HistoryPlan",
    "SeedResult",
    "diurnal_weight",
    "generate",
    "history_days",
    "history_plan",
    "history_seed",
    "rollups_build",
]
