"""Drill ``memory-leak``: the reference deployment's incident 3, "memory leak: gradual
performance degradation; solution: restart pods daily; lesson: monitor memory usage".

It needs what issue 13 part 7 added to ``serve``: worker processes under a supervisor
(``serve --workers N --max-rss-mb M``) that recycles one whose RSS passes its limit, the memory
watch in each worker (``breakwater_process_resident_memory_bytes``, the growth detector and its
``memory_growth`` incident) and the drill endpoint ``/api/v1/drills/memory`` (console/drills/
api.py). A deployment without them is reported as unsupported, naming what is missing.

With steady traffic through the drill's agent on a fakellm of its own, the drill makes ONE
worker leak (``POST /api/v1/drills/memory/leak`` lands on the worker that accepts it, and names
its pid), at a rate chosen to reach the recycle limit in about one and a half detector windows,
then follows that pid on ``/metrics`` (its RSS gauge, its series going away when its supervisor
reaps it, ``breakwater_process_recycles_total{reason="max_rss"}``) and on
``/api/v1/incidents`` (its ``memory_growth`` incident opened, then resolved when the process
stopped). Measured: the RSS growth seen, the time to detection, the time to the recycle, the
replacement, and what the traffic got (every request answered and recorded once).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from agents.devtools.fakellm.faults import FaultConfig
from console.drills import observe
from console.drills.client import ApiClient, DrillError
from console.drills.report import Report, clock, quantiles, seconds
from console.drills.setup import Setup
from console.drills.traffic import Traffic, tally

MB = 1024 * 1024
NEEDED_METRICS = (
    "breakwater_process_resident_memory_bytes",
    "breakwater_memory_growth_bytes_per_second",
    "breakwater_process_recycles_total",
)
LEAK_MAX_BYTES_PER_S = 100 * MB  # the endpoint's cap
SETUP_HINT = (
    "`serve --workers 2 --max-rss-mb 400` in distributed mode (REDIS_URL), with "
    "BREAKWATER_MEMORY_SAMPLE_S=0.5 BREAKWATER_MEMORY_WINDOW_S=10 BREAKWATER_MEMORY_WARMUP_S=10 "
    "BREAKWATER_MEMORY_GROWTH_MB_PER_HOUR=18000 for a drill of about a minute "
    "(docs/OPERATIONS.md, Drills)"
)


class Unsupported(Exception):
    """The deployment cannot run this drill; the message says what it lacks."""


@dataclass(frozen=True)
class MemoryLeakOptions:
    seconds: float = 120.0  # after the injection: the longest wait for detection and recycle
    warmup_s: float = 5.0
    rate: float = 5.0  # requests/s offered throughout
    leak_mb_per_s: float = 0.0  # 0: reach the recycle limit ~1.5 detector windows after injection
    after_s: float = 2.0  # traffic kept up once the replacement serves
    latency_ms: float = 100.0
    poll_s: float = 0.5


AGENT = {
    "name": "memory-leak",
    "system_prompt": "You are a friendly, concise customer-support agent for an online store.",
    "timeout_s": 20,
    "max_retries": 1,
    "max_tokens": 256,
    "cache_ttl_s": 0,
}


@dataclass
class Metrics:
    rss: dict[int, float] = field(default_factory=dict)  # serve pid -> RSS bytes
    recycles: dict[str, float] = field(default_factory=dict)  # reason -> count (role serve)


async def metrics(api: ApiClient) -> tuple[str, Metrics]:
    """``/metrics`` of whichever worker answers (multiprocess: every worker's series)."""
    try:
        async with api.session.get(f"{api.base_url}/metrics") as response:
            text = await response.text() if response.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DrillError(f"GET {api.base_url}/metrics: {exc or type(exc).__name__}") from exc
    found = Metrics()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("role") != "serve":
                continue
            if sample.name == "breakwater_process_resident_memory_bytes":
                pid = sample.labels.get("pid")
                if pid and pid.isdigit():
                    found.rss[int(pid)] = sample.value
            elif sample.name == "breakwater_process_recycles_total":
                reason = sample.labels.get("reason", "")
                found.recycles[reason] = found.recycles.get(reason, 0.0) + sample.value
    return text, found


async def leak_stop(api: ApiClient, pid: int, *, tries: int = 30) -> int | None:
    """Stop the leak in ``pid``: DELETE on fresh connections until that worker answers one
    (another worker answering has no leak to stop). The bytes it freed, or None."""
    headers = {"Authorization": f"Bearer {api.api_key}"}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        for _ in range(tries):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.delete(
                    f"{api.base_url}/api/v1/drills/memory/leak", headers=headers
                ) as response:
                    body = await response.json(content_type=None)
                    if response.status == 200 and body.get("pid") == pid:
                        return int(body.get("freed_bytes") or 0)
            await asyncio.sleep(0.05)
    return None


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:,.1f} MiB"


async def _preflight(api: ApiClient, options: MemoryLeakOptions) -> dict[str, Any]:
    """What the answering worker says about itself; Unsupported / DrillError before anything is
    created when the deployment cannot run the drill, or not within ``--seconds``."""
    text, _ = await metrics(api)
    missing = [name for name in NEEDED_METRICS if name not in text]
    if missing:
        raise Unsupported(
            "the memory-leak drill needs `serve --workers N --max-rss-mb M` (worker processes "
            "under a supervisor that recycles a leaking one) and the memory watch; this "
            f"server's /metrics has no {', '.join(missing)}"
        )
    status, info = await api.call("GET", "/api/v1/drills/memory")
    if status == 404:
        raise Unsupported(
            "this server has no /api/v1/drills/memory: it is a version without leak injection"
        )
    if status != 200 or not isinstance(info, dict):
        raise DrillError(f"GET /api/v1/drills/memory: HTTP {status}: {info}")
    if not info["supervised"] or not info["recycle_rss_bytes"]:
        what = "not a supervised worker" if not info["supervised"] else "has no RSS limit"
        raise Unsupported(
            f"the serving process that answered (pid {info['pid']}) is {what}: nothing would "
            f"recycle a leaking worker. Run {SETUP_HINT}"
        )
    watch = info.get("watch")
    if not watch:
        raise Unsupported(f"process {info['pid']} runs no memory watch")
    if not watch["growth_bytes_per_s"]:
        raise Unsupported(
            "this deployment's growth detector is off (BREAKWATER_MEMORY_GROWTH_MB_PER_HOUR=0)"
        )
    needed = max(0.0, watch["warmup_s"] - watch["uptime_s"]) + 2.5 * watch["window_s"] + 10
    if needed > options.seconds:
        raise DrillError(
            f"--seconds {options.seconds:g}: this deployment's memory watch judges growth over "
            f"{watch['window_s']:g} s (BREAKWATER_MEMORY_WINDOW_S) after a "
            f"{watch['warmup_s']:g} s warm-up, so detecting and recycling a leak takes about "
            f"{needed:.0f} s: give --seconds {math.ceil(needed * 1.5)}, or run {SETUP_HINT}"
        )
    return dict(info)


async def run(setup: Setup, options: MemoryLeakOptions, *, template: str | None) -> Report:
    log = setup.log
    api = setup.api
    info = await _preflight(api, options)
    watch = info["watch"]
    limit = int(info["recycle_rss_bytes"])
    window = float(watch["window_s"])
    _, before = await metrics(api)
    workers_at_start = sorted(before.rss)
    log(
        f"deployment: {len(workers_at_start)} serve worker(s) {workers_at_start}, recycled past "
        f"{_mib(limit)}; memory watch every {watch['sample_s']:g} s over {window:g} s, "
        f"warm-up {watch['warmup_s']:g} s, threshold "
        f"{watch['growth_bytes_per_s'] * 3600 / MB:g} MiB/hour"
    )
    if options.leak_mb_per_s:
        rate = options.leak_mb_per_s * MB
    else:
        headroom = max(limit - int(info["rss_bytes"]), 16 * MB)
        rate = max(headroom / (1.5 * window + 5), 3 * watch["growth_bytes_per_s"], 1 * MB)
        rate = min(rate, LEAK_MAX_BYTES_PER_S)
    if rate > LEAK_MAX_BYTES_PER_S:
        raise DrillError(
            f"--leak-mb-per-s: at most {LEAK_MAX_BYTES_PER_S // MB}, got {rate / MB:g}"
        )
    if rate <= 2 * watch["growth_bytes_per_s"]:
        raise DrillError(
            f"--leak-mb-per-s {rate / MB:g}: the detector fires past "
            f"{watch['growth_bytes_per_s'] / MB:g} MiB/s; leak faster than twice that"
        )

    baseline = FaultConfig(
        latency_ms=options.latency_ms, jitter_ms=options.latency_ms / 4, output_tokens=40, seed=5
    )
    await setup.add_upstreams([("primary", baseline, 0.15, 0.60)])
    upstream = setup.upstreams["primary"]
    agent = await setup.add_agent(
        dict(AGENT) | {"model": upstream.model, "fallback_models": []}, template=template
    )
    traffic = Traffic(api, agent, options.rate, resend=2)
    traffic.start()
    log(f"warm-up: {options.rate:g} requests/s for {options.warmup_s:g} s")
    await asyncio.sleep(options.warmup_s)
    _, at_leak = await metrics(api)

    # --- the leak ---------------------------------------------------------------------------
    traffic.phase = "leak"
    leaking = await api.ok(
        "POST",
        "/api/v1/drills/memory/leak",
        # The cap only guards a deployment that does not recycle: well past the limit, since
        # the worker keeps growing while its replacement starts.
        payload={"bytes_per_second": rate, "max_bytes": int(max(4 * limit, 1024 * MB))},
    )
    leak_at, leak_mono = time.time(), time.monotonic()
    pid = int(leaking["pid"])
    rss_at_leak = float(leaking["rss_bytes"])
    uptime = float((leaking.get("watch") or {}).get("uptime_s") or 0.0)
    # A detector already firing on this worker before the leak would make "detected"
    # meaningless (a threshold too low for this window: ordinary traffic fires it).
    quiet_before = not (leaking.get("watch") or {}).get("firing")
    log(
        f"leak: worker pid {pid} (RSS {_mib(rss_at_leak)}, up {uptime:.0f} s) allocates "
        f"{rate / MB:.1f} MiB/s from now; its limit {_mib(limit)} is "
        f"{(limit - rss_at_leak) / rate:.1f} s away"
    )
    rss_seen: list[tuple[float, float]] = [(leak_at, rss_at_leak)]
    gone_at: float | None = None
    replacements: list[int] = []
    incident: dict[str, Any] | None = None
    after_gone: Metrics | None = None
    stopped: int | None = None
    new_seen_at: float | None = None

    def ours(item: dict[str, Any]) -> bool:
        return item["kind"] == "memory_growth" and any(
            (e.get("data") or {}).get("pid") == pid for e in item.get("timeline", [])
        )

    try:
        while time.monotonic() < leak_mono + options.seconds:
            _, now = await metrics(api)
            if new_seen_at is None and set(now.rss) - set(at_leak.rss):
                new_seen_at = time.time()
                log(
                    f"a replacement is starting: {sorted(set(now.rss) - set(at_leak.rss))} "
                    f"({new_seen_at - leak_at:.2f} s after the leak began)"
                )
            if pid in now.rss:
                if now.rss[pid] != rss_seen[-1][1]:
                    rss_seen.append((time.time(), now.rss[pid]))
            elif gone_at is None:
                gone_at = time.time()
                after_gone = now
                replacements = sorted(set(now.rss) - set(at_leak.rss))
                log(
                    f"worker {pid} is gone ({gone_at - leak_at:.2f} s after the leak began); "
                    f"serving: {sorted(now.rss)}"
                )
            found = await observe.incidents(api, since=leak_at - 2 * window, match=ours)
            if found and incident is None:
                log(
                    f"memory_growth incident #{found[0]['id']} opened "
                    f"({(observe.epoch(found[0]['opened_at']) or 0) - leak_at:.2f} s after the "
                    "leak began)"
                )
            incident = found[0] if found else incident
            if gone_at is not None:
                if after_gone is not None and not replacements:
                    replacements = sorted(set(now.rss) - set(at_leak.rss))
                settled = incident is not None and incident["status"] == "resolved"
                if settled or time.time() > gone_at + 10:
                    after_gone = now
                    break
            await asyncio.sleep(options.poll_s)
    finally:
        if gone_at is None:  # not recycled (or the drill failed): stop the leak it started
            stopped = await leak_stop(api, pid)
            log(
                f"the leak in worker {pid} was stopped ({_mib(stopped)} freed)"
                if stopped is not None
                else f"could not reach worker {pid} to stop its leak (capped, it holds)"
            )
    traffic.phase = "after"
    await asyncio.sleep(options.after_s)
    await traffic.stop()
    log(f"traffic stopped: {len(traffic.samples)} requests")
    for s in traffic.samples:
        if s.resent:
            log(
                f"re-sent {s.resent} time(s) with its Idempotency-Key, sent "
                f"{s.sent_s - leak_mono:+.2f} s from the leak: finally HTTP {s.http or 'none'} "
                f"{s.status}, execution {s.execution_id or '-'}"
            )
        if not s.answered:  # what an operator needs to look into it
            log(
                f"not answered 200: HTTP {s.http or 'none'} {s.status or ''} "
                f"{s.fallback_reason or ''}, sent {s.sent_s - leak_mono:+.2f} s from the leak, "
                f"after {s.latency_s:.2f} s, execution {s.execution_id or '-'}"
            )
    recorded, distinct = await _recorded(api, agent, expected=len(traffic.samples))
    if incident is not None:
        incident = await api.ok("GET", f"/api/v1/incidents/{incident['id']}")

    # --- figures ----------------------------------------------------------------------------
    peak_at, peak = max(rss_seen, key=lambda p: p[1])
    grown = peak - rss_at_leak
    observed_rate = grown / (peak_at - leak_at) if peak_at > leak_at else 0.0
    opened_at = observe.epoch(incident["opened_at"]) if incident else None
    resolved_at = observe.epoch(incident.get("resolved_at")) if incident else None
    opened_event = _event(incident, "opened")
    resolved_event = _event(incident, "resolved")
    recycled = (after_gone.recycles.get("max_rss", 0.0) if after_gone else 0.0) - (
        at_leak.recycles.get("max_rss", 0.0)
    )
    samples = traffic.samples
    counts = tally(samples)
    answered = sum(1 for s in samples if s.answered)
    lost = [s for s in samples if s.http != 200]
    resent = sum(s.resent for s in samples)
    leak_phase = [s for s in samples if s.phase == "leak"]

    report = Report()
    report.section("set-up")
    report.add("agent", "drill agent", agent)
    report.add("template", "copied from", template or "-")
    report.add("rate", "traffic", options.rate, f"{options.rate:g} requests/s")
    report.add("workers", "serve workers", len(workers_at_start), str(len(workers_at_start)))
    report.add("recycle_rss_bytes", "recycled past (--max-rss-mb)", limit, _mib(limit))
    report.add(
        "watch",
        "memory watch",
        {k: watch[k] for k in ("sample_s", "window_s", "warmup_s", "growth_bytes_per_s")},
        f"every {watch['sample_s']:g} s, window {window:g} s, warm-up {watch['warmup_s']:g} s, "
        f"threshold {watch['growth_bytes_per_s'] * 3600 / MB:g} MiB/hour",
    )
    report.add("pid", "leaking worker", pid, f"pid {pid} (up {uptime:.0f} s)")
    report.add("leak_bytes_per_s", "leak injected", rate, f"{rate / MB:.2f} MiB/s")
    report.add("leak_at", "leak began at", leak_at, clock(leak_at))
    report.section("memory (gauge)")
    report.add("rss_at_leak_bytes", "RSS at injection", rss_at_leak, _mib(rss_at_leak))
    report.add("rss_peak_bytes", "RSS at its highest", peak, _mib(peak))
    report.add(
        "rss_growth_bytes",
        "growth seen",
        grown,
        f"{_mib(grown)} in {peak_at - leak_at:.1f} s ({observed_rate / MB:.2f} MiB/s)",
    )
    report.section("detection")
    detect = None if opened_at is None else opened_at - leak_at
    report.add("incident_id", "memory_growth incident", incident["id"] if incident else None)
    report.add(
        "time_to_detect_s",
        "opened after the leak began",
        detect,
        "-" if detect is None else f"{detect:.2f} s ({clock(opened_at)})",
    )
    data = (opened_event or {}).get("data") or {}
    report.add(
        "detected_slope_bytes_per_s",
        "detector's slope at opening",
        data.get("slope_bytes_per_s"),
        "-"
        if not data
        else f"{float(data.get('slope_bytes_per_s') or 0) / MB:.2f} MiB/s "
        f"(R² {float(data.get('r2') or 0):.2f}, RSS {_mib(data.get('rss_bytes'))})",
    )
    report.section("recycle")
    over = next((t for t, rss in rss_seen if rss > limit), None)
    report.add(
        "time_to_limit_s",
        "RSS past the limit after",
        None if over is None else over - leak_at,
        seconds(None if over is None else over - leak_at),
    )
    report.add(
        "time_to_replacement_s",
        "replacement on /metrics after",
        None if new_seen_at is None else new_seen_at - leak_at,
        seconds(None if new_seen_at is None else new_seen_at - leak_at),
    )
    recycle = None if gone_at is None else gone_at - leak_at
    report.add(
        "time_to_recycle_s",
        "worker gone after the leak began",
        recycle,
        "-" if recycle is None else f"{recycle:.2f} s ({clock(gone_at)})",
    )
    report.add(
        "recycled_after_detection_s",
        "after detection",
        None if recycle is None or detect is None else recycle - detect,
        seconds(None if recycle is None or detect is None else recycle - detect),
    )
    report.add("recycles_max_rss", "recycles (reason max_rss)", recycled, f"+{recycled:g}")
    report.add(
        "replacement",
        "replacement worker",
        replacements[0] if replacements else None,
        ", ".join(f"pid {p}" for p in replacements) or "-",
    )
    if stopped is not None:
        report.add("leak_stopped_bytes", "leak stopped by the drill", stopped, _mib(stopped))
    report.section("incident")
    report.add(
        "incident_resolved_at",
        "resolved",
        resolved_at,
        "-" if resolved_at is None else f"{clock(resolved_at)}" + _relative(resolved_at, gone_at),
    )
    report.add(
        "resolution",
        "resolution",
        (resolved_event or {}).get("message"),
        str((resolved_event or {}).get("message") or "-"),
    )
    report.section("requests")
    report.add("requests", "requests sent", len(samples))
    report.add("answered", "answered 200 by the model", answered)
    report.add(
        "not_answered",
        "not answered 200",
        len(lost) + sum(1 for s in samples if s.http == 200 and not s.answered),
        ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if not k.startswith("answered:"))
        or "0",
    )
    report.add(
        "resent",
        "re-sent (503 Retry-After, closed)",
        resent,
        f"{resent} time(s), {sum(1 for s in samples if s.resent)} request(s) "
        "(same Idempotency-Key)",
    )
    report.add(
        "leak_latency", "latency during the leak", quantiles([s.latency_s for s in leak_phase])
    )
    report.add("recorded", "executions recorded by the server", recorded)
    report.add("recorded_distinct", "distinct execution ids", distinct)

    early = opened_at is not None and opened_at < leak_at
    report.check(
        "the detector was quiet before the leak",
        quiet_before and not early,
        ""
        if quiet_before and not early
        else f"worker {pid} was judged growing before the leak: "
        "raise BREAKWATER_MEMORY_GROWTH_MB_PER_HOUR for this window",
    )
    report.check(
        "the leak grew the worker's RSS",
        grown >= 0.5 * rate * max(0.0, peak_at - leak_at) and grown > 0,
        f"{_mib(grown)} in {peak_at - leak_at:.1f} s",
    )
    report.check(
        "growth detected (memory_growth incident)",
        detect is not None and not early,
        "-" if detect is None else f"#{incident['id'] if incident else '?'} after {detect:.2f} s",
    )
    report.check(
        "detected before the recycle",
        detect is not None and recycle is not None and detect < recycle,
        "" if detect is None or recycle is None else f"{detect:.2f} s < {recycle:.2f} s",
    )
    report.check(
        "the leaking worker was recycled",
        gone_at is not None and recycled >= 1 and bool(replacements),
        "-" if recycle is None else f"after {recycle:.2f} s, replaced by {replacements or '?'}",
    )
    report.check(
        "no request lost: every request answered 200",
        answered == len(samples) and bool(samples),
        f"{answered} of {len(samples)}",
    )
    report.check(
        "every request recorded once",
        recorded == len(samples) == distinct,
        f"{recorded} recorded, {distinct} distinct, {len(samples)} sent",
    )
    report.check(
        "incident resolved when the process ended",
        resolved_at is not None,
        str((resolved_event or {}).get("message") or ""),
    )
    return report


def _relative(at: float, gone_at: float | None) -> str:
    if gone_at is None:
        return ""
    delta = at - gone_at
    return f" ({abs(delta):.2f} s {'before' if delta < 0 else 'after'} the worker was reaped)"


def _event(incident: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for event in (incident or {}).get("timeline", []):
        if event["kind"] == kind:
            return dict(event)
    return None


async def _recorded(api: ApiClient, agent: str, *, expected: int) -> tuple[int, int]:
    """(executions of ``agent`` stored, distinct ids among them), once ``expected`` are."""
    count = await observe.executions_recorded(api, agent, expected=expected)
    items = await api.pages("/api/v1/executions", {"agent": agent, "limit": 200}, most=count + 200)
    ids = [i["execution_id"] for i in items if i.get("status") not in ("queued", "running")]
    return len(ids), len(set(ids))
