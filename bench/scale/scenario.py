"""The production-shaped run: the shape, the timeline of faults, and the figures.

Timeline (seconds from the load's first request; :class:`Shape`)::

    0 ........ outage ......... kill serve-2 .. kill worker-b (restarted after a pause) .. end
               primary answers 503     (restarted at once, as a pod)

then the run waits until every execution is final and the journal is empty, and reads:

* **lost**: requests the load generator was given an accepted answer for (a 200 with an
  execution id, a 202, a complete stream) whose execution has no row, or (queued ones) whose row
  is not final;
* **duplicated**: request ids (``metadata.request``, also each REST request's
  ``Idempotency-Key``) with more than one row;
* **ledger**: each budget's counter in Redis (``spent``, micro-USD) against the ledger's
  ``charged_micros`` for what the budget covers, exactly; and the application's own
  ``budgets_reconcile`` run once through Celery (budgets in drift);
* **outage**: the share of requests sent during the outage answered successfully (a sync
  ``succeeded``, a complete stream, a queued execution that ``succeeded``), and the share served
  by the fallback model;
* **added latency**: for synchronous successes with one upstream attempt, the client's latency
  (through the round-robin) minus that attempt's (fakellm's own time as the gateway measured it),
  and the same from the stored ``latency_ms`` (the gateway alone);
* **RSS** per process (peak, sampled every 2 s) and the **drainer lag**
  (``breakwater_drain_lag_seconds`` scraped from a ``serve`` every 2 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from bench.chaos import observe, stack
from bench.chaos.report import Result
from bench.chaos.scenarios import timed
from bench.chaos.stack import PYTHON, ROOT, FakeLLM, HarnessError, http_post, spawn, tail
from bench.scale.deployment import ScaleStack, Worker, scale_deployment

FINAL = ("succeeded", "degraded", "failed", "cancelled")
SUCCESS_TARGET = 0.999
LATENCY_MS = 150.0  # fakellm's answer time (jitter below): short, so the gateway's part shows
JITTER_MS = 50.0
SAMPLE_EVERY_S = 2.0

# The reference deployment's ten agents (agents/devtools/loadgen.py's mix), on two queues: the
# chat agents' pool, and the heavier batch-like work.
INTERACTIVE = ("customer-support", "sales-assistant", "it-helpdesk", "hr-policy", "translator")
BATCH = ("code-review", "data-analyst", "content-writer", "meeting-summarizer", "release-notes")
QUEUES = {"interactive": INTERACTIVE, "batch": BATCH}
# Worker a also takes the default queue (beat's periodic jobs, the recovery among them).
WORKERS = {"a": ("celery", "interactive"), "b": ("batch",)}
# Whether the agents carry their ``queue`` (docs/INTERFACES.md §2; False: both workers take the
# default queue, for a comparison).
AGENT_QUEUES = True


@dataclass(frozen=True)
class Shape:
    rate: float  # requests/s offered (Poisson, open loop)
    duration_s: float
    outage: tuple[float, float]  # primary down from, to (s from the load's start)
    kill_serve_s: float
    kill_worker_s: float
    worker_down_s: float  # the killed worker is started again this long after
    settle_s: float  # the longest wait, after the load, for every execution to be final
    concurrency: int = 2  # per Celery worker


FULL = Shape(60, 180, (30, 90), 110, 125, 5, 180)
QUICK = Shape(12, 24, (3, 10), 13, 16, 2, 60)


def config(primary: FakeLLM, fallback: FakeLLM, *, queues: bool) -> str:
    """Config as code: the ten agents on the primary model with the fallback model behind it,
    no response cache (every request reaches an upstream), budgets far from their limits."""
    prices = {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0, "max_concurrency": 1000}
    agents = []
    for queue, names in QUEUES.items():
        for name in names:
            agent: dict[str, Any] = {
                "name": name,
                "model": "primary",
                "fallback_models": ["fallback"],
                "timeout_s": 30,
                "attempt_timeout_s": 5,
                "max_retries": 1,
                "max_tokens": 64,
                "cache_ttl_s": 0,
                "breaker": {"failure_threshold": 5, "recovery_timeout_s": 30},
                "daily_budget_usd": 500,
            }
            if queues:
                agent["queue"] = queue
            agents.append(agent)
    document = {
        "providers": [
            {"name": "primary", "kind": "openai", "base_url": f"{primary.url}/v1"},
            {"name": "fallback", "kind": "openai", "base_url": f"{fallback.url}/v1"},
        ],
        "models": [
            {"name": "primary", "provider": "primary", "upstream_model": "fake-1", **prices},
            {"name": "fallback", "provider": "fallback", "upstream_model": "fake-2", **prices},
        ],
        "agents": agents,
        "budgets": [{"scope": "global", "daily_limit_usd": 10_000}],
    }
    return json.dumps(document, indent=2)  # JSON is YAML


# --- sampling while it runs -------------------------------------------------------------------


@dataclass
class Samples:
    rss_mib: dict[str, float] = field(default_factory=dict)  # role -> peak (process tree)
    lag_s: list[float] = field(default_factory=list)
    lag_failed: int = 0


def _drain_lag(url: str) -> float | None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("breakwater_drain_lag_seconds "):
            return float(line.split()[1])
    return None


class Sampler(threading.Thread):
    """Every ``SAMPLE_EVERY_S``: the RSS of every process (tree) of the deployment, and the
    drain lag from the first ``serve`` (never killed)."""

    def __init__(self, deployment: ScaleStack, extra: dict[str, int]) -> None:
        super().__init__(name="scale-sampler", daemon=True)
        self.deployment = deployment
        self.extra = extra  # role -> pid of the processes outside the stack (fakellm, loadgen)
        self.samples = Samples()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY_S):
            self.sample()

    def sample(self) -> None:
        pids = {**self.deployment.processes(), **self.extra}
        for role, pid in pids.items():
            with contextlib.suppress(OSError):
                rss = common.tree_rss_mib(pid)
                if rss > 0:
                    peak = self.samples.rss_mib.get(role, 0.0)
                    self.samples.rss_mib[role] = max(peak, rss)
        try:
            lag = _drain_lag(self.deployment.serves[0].url)
        except (OSError, ValueError):
            lag = None
        if lag is None:
            self.samples.lag_failed += 1
        else:
            self.samples.lag_s.append(lag)


# --- the run --------------------------------------------------------------------------------


@dataclass
class Timeline:
    """Wall-clock times (``time.time()``, as the load generator's ``sent_at``)."""

    load_start: float = 0.0
    outage: tuple[float, float] = (0.0, 0.0)
    serve_killed: float = 0.0
    serve_back_s: float | None = None
    worker_killed: float = 0.0
    worker_busy: int = 0  # executions it had claimed when it was killed
    worker_back_s: float | None = None
    load_end: float = 0.0
    settled_s: float | None = None


def run(tmp: Path, shape: Shape, *, queues: bool = AGENT_QUEUES) -> Result:
    """The whole test at ``shape``; a :class:`Result` whose targets say pass or fail."""
    result = Result("scale", f"3 serve, 2 workers, {shape.rate:g} req/s for {shape.duration_s:g} s")
    with timed(result):
        primary = FakeLLM(tmp / "primary", latency_ms=LATENCY_MS, jitter_ms=JITTER_MS)
        fallback = FakeLLM(tmp / "fallback", latency_ms=LATENCY_MS, jitter_ms=JITTER_MS)
        cfg = config(primary, fallback, queues=queues)
        # A killed worker's unacknowledged messages come back after the broker's visibility
        # timeout: its smallest setting (30 s), so that a run minutes long sees them again.
        env = {"BREAKWATER_CELERY_VISIBILITY_S": "30"}
        workers = WORKERS if queues else {"a": ("celery",), "b": ("celery",)}
        with scale_deployment(
            tmp,
            config=cfg,
            fakes=(primary, fallback),
            keys={"scale-load": ("execute", ())},
            serves=3,
            workers=workers,
            concurrency=shape.concurrency,
            env=env,
        ) as deployment:
            _drive(deployment, primary, fallback, shape, result, tmp)
    return result


def _drive(
    deployment: ScaleStack,
    primary: FakeLLM,
    fallback: FakeLLM,
    shape: Shape,
    result: Result,
    tmp: Path,
) -> None:
    record = tmp / "loadgen.jsonl"
    argv = [PYTHON, "manage.py", "loadgen", "--url", deployment.url]
    argv += ["--key", deployment.keys["scale-load"], "--rate", f"{shape.rate:g}"]
    argv += ["--duration", f"{shape.duration_s:g}", "--seed", "14", "--record", str(record)]
    argv += ["--retries", "2", "--run-id", "scale", "--wait-ready", "180"]
    # Started before the deployment is ready (it waits for /readyz): its own start-up overlaps.
    loadgen = spawn(argv, log=tmp / "loadgen.log", env=deployment.env())
    ready_from = time.monotonic()
    deployment.wait_all()
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in deployment.phases.items())
    result.note(f"set-up: {steps}; every process ready {time.monotonic() - ready_from:.1f} s later")
    t = Timeline()
    if not stack.wait_until(
        lambda: record.exists() and record.stat().st_size > 0, timeout_s=60, every_s=0.05
    ):
        raise HarnessError(f"loadgen sent nothing in 60 s:\n{tail(tmp / 'loadgen.log')}")
    t.load_start = time.time() - 0.2  # its first answer came back; it was sent a moment before
    assert primary.proc is not None
    assert fallback.proc is not None
    extra = {"fakellm-primary": primary.proc.pid, "fakellm-fallback": fallback.proc.pid}
    extra["loadgen"] = loadgen.pid
    sampler = Sampler(deployment, extra)
    sampler.start()
    victim_serve = deployment.serves[1]
    victim_worker = deployment.workers[-1]
    restarts: list[threading.Thread] = []

    def at(offset_s: float) -> None:
        time.sleep(max(0.0, t.load_start + offset_s - time.time()))

    def serve_back() -> None:
        t.serve_back_s = deployment.restart_serve(victim_serve)

    def worker_back() -> None:
        time.sleep(shape.worker_down_s)
        deployment.spawn_worker(victim_worker)
        t.worker_back_s = time.time() - t.worker_killed

    try:
        at(shape.outage[0])
        http_post(f"{primary.url}/_admin/faults", b'{"error_rate": 1, "error_status": 503}')
        t.outage = (time.time(), 0.0)
        at(shape.outage[1])
        http_post(f"{primary.url}/_admin/faults", b'{"error_rate": 0}')
        t.outage = (t.outage[0], time.time())
        at(shape.kill_serve_s)
        t.serve_killed = time.time()
        deployment.kill_serve_at(victim_serve, signal.SIGKILL)
        restarts.append(threading.Thread(target=serve_back, daemon=True))
        restarts[-1].start()
        at(shape.kill_worker_s)
        t.worker_busy = _wait_busy(deployment, victim_worker, timeout_s=5.0)
        t.worker_killed = time.time()
        deployment.kill_worker(victim_worker, signal.SIGKILL)
        restarts.append(threading.Thread(target=worker_back, daemon=True))
        restarts[-1].start()
        loadgen.wait(timeout=shape.duration_s + 120)
        t.load_end = time.time()
        for thread in restarts:
            thread.join(timeout=120)
        if t.serve_back_s is None:
            raise HarnessError(f"serve-2 did not come back:\n{tail(victim_serve.log)}")
        t.settled_s = _settle(deployment, shape.settle_s, t.load_end, record)
        reconciling = reconcile_start(deployment)
    finally:
        sampler.done.set()
        sampler.join(timeout=15)
    if loadgen.returncode not in (0, None):
        raise HarnessError(f"loadgen exited {loadgen.returncode}:\n{tail(tmp / 'loadgen.log')}")
    records = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    _figures(deployment, records, t, sampler.samples, result, reconciling)
    result.note(f"loadgen: {tail(tmp / 'loadgen.log', 400).strip().splitlines()[-1]}")


def _wait_busy(deployment: ScaleStack, worker: Worker, *, timeout_s: float) -> int:
    """Wait (at most ``timeout_s``) until ``worker`` runs a claimed execution, so that the
    kill leaves work for the recovery; how many it runs."""
    assert worker.proc is not None
    deadline = time.monotonic() + timeout_s
    while True:
        pids = common.tree_pids(worker.proc.pid)
        rows = deployment.db.query(
            "SELECT COUNT(*) FROM agents_execution e JOIN agents_workerprocess w "
            "ON w.id = e.owner WHERE e.status = 'running' AND w.pid = ANY(%s)",
            (pids,),
        )
        busy = int(rows[0][0])
        if busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.05)


def _settle(deployment: ScaleStack, settle_s: float, since: float, record: Path) -> float | None:
    """Wait until every accepted queued execution is final, none is running and the journal is
    empty; seconds after the load ended (None: not within ``settle_s``).

    A queued row whose client got no answer (its ``serve`` was killed between the commit and
    the dispatch: the retry met 409) is not waited for: nothing dispatches it before
    ``executions_requeue_stale`` finds it, 300 s on (:func:`_figures` counts it)."""
    accepted_queued = [
        r["execution_id"]
        for line in record.read_text().splitlines()
        if line.strip() and accepted(r := json.loads(line)) and r["mode"] == "queued"
    ]

    def quiet() -> bool:
        open_rows = deployment.db.query(
            "SELECT COUNT(*) FROM agents_execution WHERE status = 'running' "
            "OR (status = 'queued' AND id::text = ANY(%s))",
            (accepted_queued,),
        )
        if int(open_rows[0][0]) != 0:
            return False
        lag = _drain_lag(deployment.serves[0].url)
        return lag is not None and lag == 0

    if not stack.wait_until(quiet, timeout_s=settle_s, every_s=1.0):
        return None
    time.sleep(3)  # a settled counter's ledger entry a moment behind (write-behind)
    return round(time.time() - since, 1)


# --- figures ----------------------------------------------------------------------------------


def _id(value: Any) -> str:
    return str(value).replace("-", "").lower()


def accepted(r: dict[str, Any]) -> bool:
    """The client was given an execution: a 200 with an id (sync), a 202 (queued), a complete
    stream."""
    if not r.get("execution_id"):
        return False
    if r["mode"] == "stream":
        return bool(r.get("status") == "streamed")
    return bool(r.get("http") == (202 if r["mode"] == "queued" else 200))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _figures(
    deployment: ScaleStack,
    records: list[dict[str, Any]],
    t: Timeline,
    samples: Samples,
    result: Result,
    reconciling: subprocess.Popen[str],
) -> None:
    rows = {
        _id(ident): (status, request, model, latency, steps)
        for ident, status, request, model, latency, steps in deployment.db.query(
            "SELECT id, status, metadata->>'request', model, latency_ms, steps "
            "FROM agents_execution"
        )
    }
    by_request = Counter(row[1] for row in rows.values() if row[1])
    ok = [r for r in records if accepted(r)]

    # lost and duplicated
    missing = [r for r in ok if _id(r["execution_id"]) not in rows]
    unfinished = [
        r
        for r in ok
        if r["mode"] == "queued"
        and _id(r["execution_id"]) in rows
        and rows[_id(r["execution_id"])][0] not in FINAL
    ]
    result.add(
        "lost", "executions lost (accepted, no row or never final)", len(missing) + len(unfinished)
    )
    failed = [
        r
        for r in ok
        if _id(r["execution_id"]) in rows
        and rows[_id(r["execution_id"])][0] in ("failed", "cancelled")
    ]
    result.add("failed", "accepted executions that failed (the fallback was healthy)", len(failed))
    duplicated = sum(1 for n in by_request.values() if n > 1)
    mismatched = sum(
        1 for r in ok if rows.get(_id(r["execution_id"]), (0, r["request"]))[1] != r["request"]
    )
    result.add(
        "duplicated", "executions duplicated (a request with two rows)", duplicated + mismatched
    )
    untagged = sum(1 for row in rows.values() if not row[1])
    answered = {r["request"] for r in ok}
    orphans = sum(1 for row in rows.values() if row[0] == "queued" and row[1] not in answered)
    modes = Counter(r["mode"] for r in ok)
    result.note(
        f"{len(records):,} requests sent, {len(ok):,} accepted ({dict(modes)}); "
        f"{len(rows):,} rows ({untagged} without a request id); rows by status "
        f"{observe.status_counts(deployment)}; not accepted: {_kinds([r for r in records if not accepted(r)])}; "
        f"REST requests resent after no answer: {sum(1 for r in records if r['tries'] > 1)}; "
        f"queued rows of unanswered requests (left to executions_requeue_stale): {orphans}"
    )
    if missing or unfinished:
        result.note(
            f"lost: {len(missing)} without a row, {len(unfinished)} queued never final: "
            + ", ".join(str(r["request"]) for r in (missing + unfinished)[:10])
        )

    died = deployment.db.query(
        "SELECT COUNT(*) FROM agents_execution WHERE error->>'type' = 'process_died'"
    )[0][0]
    abandoned = deployment.db.query(
        "SELECT COUNT(*) FROM budgets_spendentry s WHERE NOT EXISTS "
        "(SELECT 1 FROM agents_execution e WHERE e.id = s.execution_id)"
    )[0][0]
    errors = deployment.db.query(
        "SELECT COALESCE(error->>'type', ''), COUNT(*) FROM agents_execution "
        "WHERE status = 'failed' GROUP BY 1"
    )
    result.note(
        f"failed rows by error type: {dict(errors) or 'none'}; recovery: {died} execution(s) "
        "failed as process_died (the killed serve's, settled by "
        f"executions_settle_dead), {abandoned} abandoned attempt(s) of requeued executions "
        "charged on a ledger entry of their own"
    )
    _ledger(deployment, result, reconciling)
    _outage(records, rows, t, result)
    _latency(records, rows, t, result)

    for role in sorted(samples.rss_mib):
        result.add(
            f"rss_{role}", f"peak RSS {role} (MiB)", round(samples.rss_mib[role], 1), target=""
        )
    lag_max = max(samples.lag_s) if samples.lag_s else None
    result.add("drain_lag_max_s", "drainer lag, max (s)", lag_max, target="", unit="s")
    result.add(
        "drain_lag_p95_s", "drainer lag, p95 (s)", _pct(samples.lag_s, 0.95), target="", unit="s"
    )
    result.note(
        f"drain lag: {len(samples.lag_s)} scrapes of breakwater_drain_lag_seconds "
        f"({samples.lag_failed} failed or absent)"
    )
    result.note(
        f"timeline: outage {t.outage[0] - t.load_start:.1f}-{t.outage[1] - t.load_start:.1f} s; "
        f"serve-2 SIGKILLed at {t.serve_killed - t.load_start:.1f} s, ready again after "
        f"{t.serve_back_s:.1f} s; worker-b SIGKILLed at {t.worker_killed - t.load_start:.1f} s, "
        f"holding {t.worker_busy} claimed execution(s), started again after "
        f"{t.worker_back_s or 0:.1f} s; load ended at "
        f"{t.load_end - t.load_start:.1f} s; all final {t.settled_s} s after"
    )
    result.add("settled", "not settled within the wait", 0 if t.settled_s is not None else 1)


def _kinds(records: list[dict[str, Any]]) -> str:
    counts = Counter(
        f"{r['mode']} {r['http'] or r.get('error') or 'no answer'}"
        + (f" {r.get('status')}" if r.get("status") else "")
        for r in records
    )
    return ", ".join(f"{n} x {k}" for k, n in counts.most_common(8)) or "none"


_LEDGER = "SELECT COALESCE(SUM(charged_micros), 0) FROM budgets_spendentry"
LEDGER_SQL = {
    "agent": _LEDGER + " WHERE agent_name = %s",
    "api_key": _LEDGER + " WHERE api_key_id = %s",
    "global": _LEDGER,
}
LEDGER_PARAMS: dict[str, Any] = {
    "agent": lambda agent, key_id: (agent,),
    "api_key": lambda agent, key_id: (key_id,),
    "global": lambda agent, key_id: (),
}


def _ledger(deployment: ScaleStack, result: Result, reconciling: subprocess.Popen[str]) -> None:
    """Every budget's counter (Redis) against the ledger, in micro-USD; then the
    application's reconcile job, run once."""
    assert deployment.redis is not None
    budgets = deployment.db.query(
        "SELECT b.id, b.scope, b.window, a.name, b.api_key_id FROM budgets_budget b "
        "LEFT JOIN agents_agent a ON a.id = b.agent_id ORDER BY b.id"
    )
    client = deployment.redis.client()
    off = []
    total_counter = total_ledger = 0
    try:
        for ident, scope, window, agent, key_id in budgets:
            counter = 0
            for key in client.scan_iter(match=f"bw:bg:budget:{ident}:*", count=1000):
                if not key.endswith(b":x"):
                    counter += int(client.hget(key, "spent") or 0)
            ledger = int(
                deployment.db.query(LEDGER_SQL[scope], LEDGER_PARAMS[scope](agent, key_id))[0][0]
            )
            if scope == "global":
                total_counter, total_ledger = counter, ledger
            if counter != ledger:
                off.append(
                    f"{scope}:{agent or key_id or ''} {window}: counter {counter}, ledger {ledger}"
                )
    finally:
        client.close()
    result.add("ledger_off", "budgets whose counter != ledger (micro-USD, exact)", len(off))
    result.note(
        f"{len(budgets)} budgets; global: counter {total_counter:,} = ledger {total_ledger:,} "
        f"micro-USD"
        if not off
        else f"ledger != counter: {'; '.join(off[:5])}"
    )
    drifts = _reconcile(deployment, reconciling)
    result.add("reconcile_drift", "budgets in drift (budgets_reconcile)", drifts)


def reconcile_start(deployment: ScaleStack) -> subprocess.Popen[str]:
    """Send ``budgets.tasks.budgets_reconcile`` to a worker (``celery call``, started now: its
    start-up overlaps the reading of the other figures)."""
    return subprocess.Popen(
        [PYTHON, "-m", "celery", "-A", "console", "call", "budgets.tasks.budgets_reconcile"],
        cwd=ROOT,
        env=deployment.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reconcile(deployment: ScaleStack, sending: subprocess.Popen[str]) -> int | None:
    """The reconcile's answer (budgets whose counter and ledger disagree: each gets a
    ``ledger_drift`` incident), or None when it did not answer within 60 s."""
    out, err = sending.communicate(timeout=120)
    task_id = out.strip().splitlines()[-1] if out.strip() else ""
    if sending.returncode != 0 or not task_id:
        raise HarnessError(f"celery call budgets_reconcile failed:\n{err[-2000:]}")
    assert deployment.redis is not None
    client = deployment.redis.client()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            raw = client.get(f"celery-task-meta-{task_id}")
            if raw:
                meta = json.loads(raw)
                if meta.get("status") == "SUCCESS":
                    return int(meta["result"])
                if meta.get("status") in ("FAILURE", "REVOKED"):
                    raise HarnessError(f"budgets_reconcile failed: {meta.get('result')}")
            time.sleep(0.5)
    finally:
        client.close()
    return None


def _outage(
    records: list[dict[str, Any]], rows: dict[str, tuple[Any, ...]], t: Timeline, result: Result
) -> None:
    start, end = t.outage
    during = [r for r in records if start <= r["sent_at"] < end]

    def row(r: dict[str, Any]) -> tuple[Any, ...] | None:
        return rows.get(_id(r["execution_id"])) if r.get("execution_id") else None

    def success(r: dict[str, Any]) -> bool:
        if not accepted(r):
            return False
        if r["mode"] == "stream":
            return True
        stored = row(r)
        return stored is not None and stored[0] == "succeeded"

    good = sum(1 for r in during if success(r))
    share = good / len(during) if during else None
    result.add(
        "outage_success",
        "answered successfully during the outage (%)",
        None if share is None else round(100 * share, 2),
        target=f">= {100 * SUCCESS_TARGET:g}",
    )
    by_fallback = sum(
        1 for r in during if (stored := row(r)) is not None and stored[2] == "fallback"
    )
    result.note(
        f"outage: {len(during):,} requests sent, {good:,} succeeded, {by_fallback:,} served by "
        f"the fallback model; the others: {_kinds([r for r in during if not success(r)])}"
    )


def _latency(
    records: list[dict[str, Any]], rows: dict[str, tuple[Any, ...]], t: Timeline, result: Result
) -> None:
    client_added, gateway_added, upstream = [], [], []
    for r in records:
        if r["mode"] != "sync" or r.get("status") != "succeeded" or r["tries"] != 1:
            continue
        stored = rows.get(_id(r["execution_id"]))
        if stored is None or stored[3] is None:
            continue
        attempts = [s for s in stored[4] or [] if s.get("kind") == "attempt"]
        if len(attempts) != 1:
            continue
        own = float(attempts[0].get("latency_ms") or 0.0)
        upstream.append(own)
        client_added.append(float(r["latency_ms"]) - own)
        gateway_added.append(float(stored[3]) - own)
    result.add(
        "added_p95_ms",
        "p95 added latency, client-observed (ms)",
        _pct(client_added, 0.95),
        target="",
    )
    result.add(
        "added_p50_ms",
        "p50 added latency, client-observed (ms)",
        _pct(client_added, 0.5),
        target="",
    )
    result.add(
        "gateway_p95_ms",
        "p95 added latency, gateway's own record (ms)",
        _pct(gateway_added, 0.95),
        target="",
    )
    result.add(
        "upstream_p95_ms", "p95 fakellm's own (the attempt, ms)", _pct(upstream, 0.95), target=""
    )
    result.note(
        f"added latency over {len(client_added):,} synchronous successes with one attempt "
        f"(fakellm {LATENCY_MS:g} +- {JITTER_MS:g} ms); client-observed includes the round-robin"
    )


def machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
