"""Drill ``cost-spike``: the reference deployment's incident 2, "cost spike: $5K unexpected
bill; solution: daily budget limits; lesson: monitor costs in real time".

The drill agent gets a small daily budget (``budget_usd``, $0.50) and an upstream with
expensive tokens. After a warm-up of ordinary short answers, a runaway loop starts: the offered
rate goes up (``spike_rate``) and every answer is as long as the agent's ``max_tokens``.
Measured: where the budget stopped the spend (spent against the limit, from the API), how fast,
how many requests it refused with ``budget_exceeded`` and what they would have cost, that the
upstream saw no call once the budget was spent, the incidents opened for the agent
(``budget_exhausted``, ``cost_spike``, ``budget_forecast``) and the notifications about them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from agents.devtools.fakellm.faults import FaultConfig
from console.drills import observe
from console.drills.report import Report, clock, money, seconds
from console.drills.setup import Setup
from console.drills.traffic import Traffic

INCIDENT_KINDS = ("budget_exhausted", "cost_spike", "budget_forecast")


@dataclass(frozen=True)
class CostSpikeOptions:
    budget_usd: float = 0.50
    warmup_s: float = 5.0
    rate: float = 2.0  # requests/s before the spike
    spike_rate: float = 10.0  # requests/s during it
    seconds: float = 60.0  # the longest the spike is driven before the budget stops it
    after_s: float = 5.0  # traffic kept up once the budget refuses, to see it hold
    incident_wait_s: float = 30.0  # after exhaustion: the longest wait for its incident
    max_tokens: int = 4000  # the agent's (and the runaway answers') size
    input_usd_per_mtok: float = 10.0
    output_usd_per_mtok: float = 30.0  # 4,000 tokens = $0.12 an answer
    latency_ms: float = 150.0


AGENT = {
    "name": "cost-spike",
    "system_prompt": "You write detailed product descriptions.",
    "timeout_s": 20,
    "max_retries": 1,
    "cache_ttl_s": 0,
}


async def run(setup: Setup, options: CostSpikeOptions, *, template: str | None) -> Report:
    log = setup.log
    baseline = FaultConfig(
        latency_ms=options.latency_ms, jitter_ms=options.latency_ms / 4, output_tokens=60, seed=3
    )
    await setup.add_upstreams(
        [("expensive", baseline, options.input_usd_per_mtok, options.output_usd_per_mtok)]
    )
    upstream = setup.upstreams["expensive"]
    spec = dict(AGENT) | {
        "model": upstream.model,
        "fallback_models": [],
        "max_tokens": options.max_tokens,
        "daily_budget_usd": options.budget_usd,
    }
    agent = await setup.add_agent(spec, template=template)
    spec_tokens = options.max_tokens
    api = setup.api
    budget = await _budget(setup, agent)
    log(f"budget {budget['id']}: ${budget['limit_usd']:.2f} a day for {agent}")
    traffic = Traffic(api, agent, options.rate, prompt="Describe our best-selling kettle.")
    traffic.start()
    log(f"warm-up: {options.rate:g} requests/s of 60-token answers for {options.warmup_s:g} s")
    await asyncio.sleep(options.warmup_s)

    # --- the runaway loop --------------------------------------------------------------------
    upstream.inject(replace(upstream.baseline, output_tokens=spec_tokens))
    await traffic.stop()
    traffic.rate = options.spike_rate
    traffic.phase = "spike"
    spike_at, spike_mono = time.time(), time.monotonic()
    calls_at_spike = upstream.calls
    traffic.start()
    log(
        f"spike: {options.spike_rate:g} requests/s, every answer {spec_tokens:,} tokens "
        f"(${spec_tokens * options.output_usd_per_mtok / 1e6:.2f} each)"
    )
    refused_at: float | None = None
    calls_at_refusal = 0
    while time.monotonic() < spike_mono + options.seconds:
        refusals = [s for s in traffic.samples if _refused(s)]
        if refusals:
            first = min(refusals, key=lambda s: s.sent_s + s.latency_s)
            refused_at = spike_at + (first.sent_s + first.latency_s - spike_mono)
            calls_at_refusal = upstream.calls
            log(f"budget refused a request {refused_at - spike_at:.2f} s into the spike")
            break
        await asyncio.sleep(0.1)
    if refused_at is not None:
        traffic.phase = "held"
        await asyncio.sleep(options.after_s)
    await traffic.stop()
    calls_after_refusal = upstream.calls - calls_at_refusal if refused_at else None
    log(f"traffic stopped: {len(traffic.samples)} requests")

    # --- what the deployment says -------------------------------------------------------------
    incidents: list[dict[str, Any]] = []
    wait_end = time.monotonic() + (options.incident_wait_s if refused_at else 0)
    while True:
        incidents = await observe.incidents(
            api,
            since=spike_at - options.warmup_s,
            match=lambda i: i["kind"] in INCIDENT_KINDS and i.get("agent") == agent,
        )
        if any(i["kind"] in ("budget_exhausted", "cost_spike") for i in incidents):
            break
        if time.monotonic() > wait_end:
            break
        await asyncio.sleep(1.0)
    budget = await _budget(setup, agent)
    notified = await observe.notifications_settled(api, {i["id"] for i in incidents})
    recorded = await observe.executions_recorded(api, agent, expected=len(traffic.samples))

    # --- figures ----------------------------------------------------------------------------
    spike = [s for s in traffic.samples if s.phase in ("spike", "held")]
    admitted = [s for s in spike if s.http == 200 and s.status == "succeeded"]
    refused = [s for s in traffic.samples if _refused(s)]
    failed = [s for s in spike if not _refused(s) and s.status != "succeeded"]
    answer_cost = (
        sum(s.cost_usd for s in admitted) / len(admitted)
        if admitted
        else spec_tokens * options.output_usd_per_mtok / 1e6
    )
    spent = float(budget["spent_usd"])
    limit = float(budget["limit_usd"])
    report = Report()
    report.section("set-up")
    report.add("agent", "drill agent", agent)
    report.add("template", "copied from", template or "-")
    report.add(
        "prices",
        "upstream prices",
        [options.input_usd_per_mtok, options.output_usd_per_mtok],
        f"${options.input_usd_per_mtok:g} / ${options.output_usd_per_mtok:g} per M tokens "
        "(input / output)",
    )
    report.add(
        "spike_rate",
        "runaway loop",
        options.spike_rate,
        f"{options.spike_rate:g} requests/s of {spec_tokens:,}-token answers",
    )
    report.add("spike_at", "spike started at", spike_at, clock(spike_at))
    report.section("budget")
    report.add("limit_usd", "daily limit", limit, money(limit))
    report.add(
        "spent_usd",
        "spent (ledger)",
        spent,
        f"{money(spent)} ({spent / limit * 100 if limit else 0:.0f}% of the limit)",
    )
    report.add("state", "budget state", budget["state"])
    stop = None if refused_at is None else refused_at - spike_at
    report.add("time_to_stop_s", "spend stopped after", stop, seconds(stop))
    report.add(
        "spent_in_spike_usd",
        "spent during the spike",
        sum(s.cost_usd for s in admitted),
        money(sum(s.cost_usd for s in admitted)),
    )
    report.section("requests")
    report.add("spike_requests", "during the spike", len(spike))
    report.add("admitted", "admitted (answered)", len(admitted))
    report.add("refused", "refused: budget_exceeded", len(refused))
    report.add("failed", "failed otherwise", len(failed))
    avoided = len(refused) * answer_cost
    hourly = options.spike_rate * answer_cost * 3600
    report.add(
        "runaway_usd_per_hour",
        "the loop's spend unchecked",
        hourly,
        f"{money(hourly)} an hour ({money(hourly * 24)} a day)",
    )
    report.add("avoided_usd", "the refused would have cost", avoided, money(avoided))
    report.add(
        "upstream_calls_before_stop",
        "upstream calls in the spike",
        None if refused_at is None else calls_at_refusal - calls_at_spike,
        "-"
        if refused_at is None
        else f"{calls_at_refusal - calls_at_spike} until the budget refused",
    )
    report.add(
        "upstream_calls_after_stop",
        "upstream calls once stopped",
        calls_after_refusal,
        "-" if calls_after_refusal is None else f"{calls_after_refusal} (calls already in flight)",
    )
    report.section("incidents")
    if incidents:
        for i in incidents:
            opened = observe.epoch(i["opened_at"]) or 0.0
            report.add(
                f"incident_{i['kind']}",
                i["kind"],
                i["id"],
                f"#{i['id']} opened {clock(opened)} ({opened - spike_at:.2f} s after the spike "
                f"began), {i['status']}",
            )
    else:
        report.add("incidents", "incidents", None, "none opened for the agent")
    observe.notification_rows(report, notified)
    report.section("totals")
    report.add("requests", "requests sent", len(traffic.samples))
    report.add("recorded", "executions recorded by the server", recorded)

    report.check("budget refused the runaway loop", bool(refused), f"{len(refused)} refused")
    report.check(
        "spend stayed within the limit", spent <= limit + 1e-9, f"{money(spent)} of {money(limit)}"
    )
    report.check(
        "no upstream call once stopped (beyond those in flight)",
        calls_after_refusal is not None and calls_after_refusal <= options.spike_rate * 2,
        "-" if calls_after_refusal is None else str(calls_after_refusal),
    )
    report.check(
        "an incident opened",
        any(i["kind"] in ("budget_exhausted", "cost_spike") for i in incidents),
        ", ".join(f"{i['kind']} #{i['id']}" for i in incidents)
        or "no budget_exhausted or cost_spike incident",
    )
    if notified is not None and notified["channels"]:
        sent = [d for d in notified["deliveries"] if d.get("status") == "sent"]
        report.check("the incident was notified", bool(sent), f"{len(sent)} delivery(ies) sent")
    return report


def _refused(sample: Any) -> bool:
    return bool(sample.fallback_reason == "budget_exceeded" or sample.status == "budget_exceeded")


async def _budget(setup: Setup, agent: str) -> dict[str, Any]:
    for item in (await setup.api.ok("GET", "/api/v1/budgets"))["items"]:
        if item["scope"] == "agent" and item["target"] == agent and item["window"] == "daily":
            return dict(item)
    raise RuntimeError(f"no daily budget listed for {agent}")
