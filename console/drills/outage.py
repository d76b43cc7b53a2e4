"""Drill ``outage``: the reference deployment's incident 1, "LLM API outage: 30 min downtime;
solution: circuit breaker + fallback model".

The drill agent's primary model is a fakellm of the drill's own, its fallback model another.
After a warm-up, the primary answers every call with a 503 for ``seconds``, then recovers.
Measured: how long the primary's deployment breaker took to open, how many upstream calls it
let through before and while open, what the users got during the outage (answers from the
fallback model, degraded answers, failures), the ``breaker_open`` incident (opened, resolved)
and how long after the recovery the breaker closed again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from agents.devtools.fakellm.faults import FaultConfig
from console.drills import observe
from console.drills.report import Report, clock, quantiles, seconds
from console.drills.setup import Setup
from console.drills.traffic import Traffic, tally

OPEN = {"open", "forced_open", "half_open"}


@dataclass(frozen=True)
class OutageOptions:
    seconds: float = 45.0  # how long the primary is down (the demo's outages: 30-45 s)
    warmup_s: float = 5.0
    rate: float = 5.0  # requests/s offered throughout
    recovery_wait_s: float = 90.0  # after the outage: the longest wait for the breaker to close
    latency_ms: float = 120.0  # both upstreams' answer time
    poll_s: float = 0.2


def _healthy(latency_ms: float, seed: int) -> FaultConfig:
    return FaultConfig(latency_ms=latency_ms, jitter_ms=latency_ms / 4, output_tokens=40, seed=seed)


AGENT = {
    "name": "outage",
    "system_prompt": "You are a friendly, concise customer-support agent for an online store.",
    "timeout_s": 10,
    "attempt_timeout_s": 4,
    "max_retries": 2,
    "max_tokens": 256,
    "breaker": {"failure_threshold": 5, "recovery_timeout_s": 60, "half_open_max_calls": 1},
    "cache_ttl_s": 0,
}


async def run(setup: Setup, options: OutageOptions, *, template: str | None) -> Report:
    log = setup.log
    await setup.add_upstreams(
        [
            ("primary", _healthy(options.latency_ms, 1), 0.15, 0.60),
            ("fallback", _healthy(options.latency_ms, 2), 0.80, 4.00),
        ]
    )
    primary, fallback = setup.upstreams["primary"], setup.upstreams["fallback"]
    spec = dict(AGENT) | {"model": primary.model, "fallback_models": [fallback.model]}
    agent = await setup.add_agent(spec, template=template)
    if primary.deployment_id is None:
        raise RuntimeError("the primary's deployment is not listed by GET /api/v1/deployments")
    deployment = primary.deployment_id
    api = setup.api
    traffic = Traffic(api, agent, options.rate)
    traffic.start()
    log(f"warm-up: {options.rate:g} requests/s for {options.warmup_s:g} s")
    await asyncio.sleep(options.warmup_s)

    # --- the outage -------------------------------------------------------------------------
    calls_at_fault = primary.calls
    primary.inject(replace(primary.baseline, error_rate=1.0, error_status=503, retry_after=None))
    fault_at, fault_mono = time.time(), time.monotonic()
    traffic.phase = "outage"
    log(f"fault: the primary upstream answers 503 to every call, for {options.seconds:g} s")
    opened_seen: float | None = None
    calls_before_open: int | None = None
    end = fault_mono + options.seconds
    while time.monotonic() < end:
        if opened_seen is None:
            breaker = await observe.deployment_breaker(api, deployment)
            if breaker["state"] in OPEN:
                opened_seen = time.time()
                calls_before_open = primary.calls - calls_at_fault
                log(
                    f"breaker of deployment {deployment} is {breaker['state']} "
                    f"({opened_seen - fault_at:.2f} s after the fault)"
                )
        await asyncio.sleep(options.poll_s)
    calls_during_outage = primary.calls - calls_at_fault

    # --- recovery ---------------------------------------------------------------------------
    primary.heal()
    healed_at, healed_mono = time.time(), time.monotonic()
    traffic.phase = "recovery"
    calls_at_heal = primary.calls
    log(
        "recovery: the primary answers again; waiting for the breaker to close and the "
        f"incident to resolve (at most {options.recovery_wait_s:g} s)"
    )

    def ours(incident: dict[str, Any]) -> bool:
        key = f"deployment:{deployment}"
        return incident["kind"] == "breaker_open" and any(
            (e.get("data") or {}).get("key") == key for e in incident.get("timeline", [])
        )

    closed_seen: float | None = None
    incident: dict[str, Any] | None = None
    while time.monotonic() < healed_mono + options.recovery_wait_s:
        if closed_seen is None:
            breaker = await observe.deployment_breaker(api, deployment)
            if breaker["state"] == "closed":
                closed_seen = time.time()
                log(f"breaker closed ({closed_seen - healed_at:.2f} s after the recovery)")
        found = await observe.incidents(api, since=fault_at, match=ours)
        incident = found[0] if found else None
        # Done once the breaker is closed and its incident resolved (or, if no incident was
        # ever opened, 10 s after the recovery: nothing more will come).
        settled = incident is not None and incident["status"] == "resolved"
        if closed_seen is not None and (
            settled or (incident is None and time.monotonic() > healed_mono + 10)
        ):
            break
        await asyncio.sleep(max(options.poll_s, 0.5))
    await asyncio.sleep(1.0)  # a few answers from the recovered primary
    await traffic.stop()
    log(f"traffic stopped: {len(traffic.samples)} requests")
    found = await observe.incidents(api, since=fault_at, match=ours)
    incident = found[0] if found else None
    recorded = await observe.executions_recorded(api, agent, expected=len(traffic.samples))
    notified = await observe.notifications_settled(api, {incident["id"]} if incident else set())

    # --- figures ----------------------------------------------------------------------------
    report = Report()
    phases = {
        p: [s for s in traffic.samples if s.phase == p] for p in ("baseline", "outage", "recovery")
    }
    outage = tally(phases["outage"])
    served_fallback = outage.get(f"answered:{fallback.model}", 0)
    served_primary = outage.get(f"answered:{primary.model}", 0)
    degraded = sum(v for k, v in outage.items() if k.startswith("degraded:"))
    failed = sum(v for k, v in outage.items() if not k.startswith(("answered:", "degraded:")))
    opened_at = observe.event_at(incident, "opened") if incident else None
    resolved_at = observe.event_at(incident, "resolved") if incident else None
    breaker_open_at = opened_at or opened_seen
    breaker_closed_at = resolved_at or closed_seen

    report.section("set-up")
    report.add("agent", "drill agent", agent)
    report.add("template", "copied from", template or "-")
    report.add("rate", "traffic", options.rate, f"{options.rate:g} requests/s")
    report.add("outage_s", "outage length", options.seconds, seconds(options.seconds))
    report.add("fault_at", "fault injected at", fault_at, clock(fault_at))
    report.section("breaker")
    time_to_open = None if breaker_open_at is None else breaker_open_at - fault_at
    report.add("time_to_open_s", "time to open the breaker", time_to_open, seconds(time_to_open))
    report.add("primary_calls_before_open", "primary calls before it opened", calls_before_open)
    report.add(
        "primary_calls_during_outage",
        "primary calls during the outage",
        calls_during_outage,
        f"{calls_during_outage} ({calls_before_open or 0} before the breaker opened, "
        f"{calls_during_outage - (calls_before_open or 0)} half-open probes after)",
    )
    time_to_close = None if breaker_closed_at is None else breaker_closed_at - healed_at
    report.add(
        "time_to_close_s", "breaker closed after recovery", time_to_close, seconds(time_to_close)
    )
    report.section("requests during the outage")
    report.add("outage_requests", "requests", len(phases["outage"]))
    report.add("served_by_fallback", "served by the fallback model", served_fallback)
    report.add("served_by_primary", "served by the primary", served_primary)
    report.add("degraded", "degraded (fallback message)", degraded)
    report.add("failed", "failed (error or no answer)", failed)
    report.add("outage_latency", "latency", quantiles([s.latency_s for s in phases["outage"]]))
    report.section("incident")
    report.add("incident_id", "incident", incident["id"] if incident else None)
    report.add(
        "incident_opened_at",
        "opened",
        epoch_or_none(incident, "opened_at"),
        "-"
        if incident is None
        else f"{clock(observe.epoch(incident['opened_at']))}"
        f" ({(observe.epoch(incident['opened_at']) or 0) - fault_at:.2f} s after the fault)",
    )
    resolved = epoch_or_none(incident, "resolved_at")
    report.add(
        "incident_resolved_at",
        "resolved",
        resolved,
        "-"
        if resolved is None
        else f"{clock(resolved)} ({resolved - healed_at:.2f} s after the recovery)",
    )
    observe.notification_rows(report, notified)
    report.section("totals")
    recovery = tally(phases["recovery"])
    report.add(
        "recovery_served_by_primary",
        "after recovery, served by the primary",
        recovery.get(f"answered:{primary.model}", 0),
        f"{recovery.get(f'answered:{primary.model}', 0)} of {len(phases['recovery'])}",
    )
    report.add(
        "primary_calls_after_recovery",
        "primary calls after recovery",
        primary.calls - calls_at_heal,
    )
    report.add("requests", "requests sent", len(traffic.samples))
    report.add("recorded", "executions recorded by the server", recorded)

    report.check("breaker opened", time_to_open is not None, seconds(time_to_open))
    report.check("fallback served", served_fallback > 0, f"{served_fallback} requests")
    report.check("no request failed", failed == 0, f"{failed} failed, {degraded} degraded")
    report.check("incident opened", incident is not None, f"#{incident['id']}" if incident else "")
    report.check("incident resolved", resolved is not None, clock(resolved))
    report.check("breaker closed", time_to_close is not None, seconds(time_to_close))
    report.check(
        "every request recorded",
        recorded >= len(traffic.samples),
        f"{recorded} of {len(traffic.samples)}",
    )
    if notified is not None and notified["channels"]:
        sent = [d for d in notified["deliveries"] if d.get("status") == "sent"]
        report.check("the incident was notified", bool(sent), f"{len(sent)} delivery(ies) sent")
    return report


def epoch_or_none(incident: dict[str, Any] | None, field: str) -> float | None:
    return None if incident is None else observe.epoch(incident.get(field))
