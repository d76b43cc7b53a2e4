"""Prometheus metrics of the agent runtime (docs/INTERFACES.md §5) and the sink that feeds them.

Labels are bounded: agent name, status, token type, fallback reason, budget scope and the
deployment id (bounded by configuration). Execution ids never become labels.

Two kinds of series:

- **What processes count** (requests, durations, tokens, cost, cache hits, fallbacks, retries,
  active requests): the event sink below updates them on the hot path, in this process's
  registry (or its multiprocess files).
- **What mirrors shared state** (breaker states, budgets, drain lag, live processes): no
  process holds them. ``/metrics`` (console/metrics_view.py) reads Redis (or the embedded
  process's state), the journal and the database at scrape time and adds them as gauges
  (:func:`breaker_families` and friends), so they exist from start-up for every agent,
  deployment and budget, say the same whichever process is scraped, and vanish with the object.
  At the same scrape, :func:`complete_agent_families` gives every known agent a zero sample of
  each per-agent counter it has not counted yet, and drops the series of deleted agents.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set *before* prometheus_client is
first imported, every process writes its values to mmap files in that directory and ``/metrics``
merges them with ``MultiProcessCollector``. Counters and histograms of dead processes stay in the
directory on purpose (their increments are part of the totals). ``agent_active_requests`` is
``livesum``: the sum over live processes; a dead process's requests are no longer active, so its
file must go (:func:`cleanup_dead_processes`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, get_args

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from agents.runtime.errors import FallbackReason
from agents.runtime.state import BREAKER_GAUGE, BreakerState, Transition
from agents.runtime.types import ExecutionResult, ExecutionStatus, Step

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# LLM calls take from tens of milliseconds (cache hits, tiny prompts) to a minute (long outputs).
DURATION_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
)

REQUESTS = Counter(
    "agent_requests_total",
    "Finished agent executions by final status.",
    ["agent", "status"],
)
REQUEST_DURATION = Histogram(
    "agent_request_duration_seconds",
    "Wall-clock duration of agent executions, cache hits and degradations included.",
    ["agent"],
    buckets=DURATION_BUCKETS,
)
ACTIVE_REQUESTS = Gauge(
    "agent_active_requests",
    "Agent executions in progress.",
    ["agent"],
    multiprocess_mode="livesum",
)
LLM_TOKENS = Counter(
    "agent_llm_tokens_total",
    "LLM tokens charged to agent executions (type = input | output).",
    ["agent", "type"],
)
COST = Counter(
    "agent_cost_dollars_total",
    "Provider cost of agent executions in US dollars.",
    ["agent"],
)
CACHE_HITS = Counter(
    "agent_cache_hits_total",
    "Agent executions answered from the response cache.",
    ["agent"],
)
FALLBACKS = Counter(
    "agent_fallbacks_total",
    "Agent executions that fell back (another model or the fallback message), by reason.",
    ["agent", "reason"],
)
RETRIES = Counter(
    "agent_retries_total",
    "Provider attempts that repeated a failed attempt on the same model.",
    ["agent"],
)

UPSTREAM_ERRORS = Counter(
    "agent_upstream_errors_total",
    "Failed provider attempts by deployment and kind (quota = insufficient quota or billing).",
    ["deployment", "kind"],
)

# Retention (agents.executions.retention), counted by the process that runs the job: `serve` in
# embedded mode, a Celery worker in distributed mode (in /metrics where its multiprocess
# directory is merged, as for every worker-side series).
RETENTION_DELETED = Counter(
    "breakwater_retention_deleted",
    "Raw executions deleted by retention (BREAKWATER_RETENTION_DAYS); ledger and rollups stay.",
)
RETENTION_OLDEST = Gauge(
    "breakwater_retention_oldest_execution_timestamp_seconds",
    "Creation time of the oldest execution kept, as of the last retention run.",
    multiprocess_mode="mostrecent",
)
# A failed attempt's step outcome (the failure class) -> the bounded ``kind`` label.
UPSTREAM_ERROR_KINDS = {
    "QuotaExhausted": "quota",
    "RateLimited": "rate_limited",
    "Timeout": "timeout",
    "Capacity": "overloaded",
    "ProviderError": "server_error",
    "MalformedReply": "malformed",
    "AuthFailed": "auth",
    "ClientError": "client_error",
}
# Not the upstream's answer: nothing was sent (no time left), or a tool failed.
_NOT_UPSTREAM = frozenset({"ok", "DeadlineReached", "ToolFailed"})


def upstream_error_kind(step: Step) -> str | None:
    """The ``kind`` of a failed provider attempt, None for anything else. A transport failure
    (no HTTP answer at all) is ``connection``."""
    if step.kind != "attempt" or step.outcome in _NOT_UPSTREAM or step.deployment is None:
        return None
    if step.outcome == "ProviderError" and step.detail.startswith("transport error"):
        return "connection"
    return UPSTREAM_ERROR_KINDS.get(step.outcome, "other")


def count_retries(steps: Iterable[Step]) -> int:
    """Attempts that repeated a failed attempt on the same model.

    A switch to a fallback model is not a retry (it is counted in ``agent_fallbacks_total``), and
    neither is a further call after a successful one (a tool-loop round).
    """
    retries = 0
    previous: Step | None = None
    for step in steps:
        if step.kind == "fallback":
            previous = None
        elif step.kind == "attempt":
            if previous is not None and previous.model == step.model and previous.outcome != "ok":
                retries += 1
            previous = step
    return retries


class _AgentMetrics:
    """One agent's children of the per-execution metrics (labels are bounded: agents and
    statuses are few)."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.active = ACTIVE_REQUESTS.labels(agent=agent)
        self.duration = REQUEST_DURATION.labels(agent=agent)
        self.input_tokens = LLM_TOKENS.labels(agent=agent, type="input")
        self.output_tokens = LLM_TOKENS.labels(agent=agent, type="output")
        self.cost = COST.labels(agent=agent)
        self._requests: dict[str, Any] = {}

    def requests(self, status: str) -> Any:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = REQUESTS.labels(agent=self.agent, status=status)
        return child


class MetricsEvents:
    """An ``EventSink`` that updates the Prometheus metrics. Never blocks, never raises."""

    def __init__(self) -> None:
        # execution id -> agent, so that a finish without a start (or a duplicate finish) cannot
        # drive the active-requests gauge below zero.
        self._active: dict[str, str] = {}
        self._lock = threading.Lock()
        self._per_agent: dict[str, _AgentMetrics] = {}
        self._upstream: dict[tuple[str, str], Any] = {}

    def dependency_changed(self, kind: str, available: bool, detail: str) -> None:
        return None

    def breaker_transition(self, transition: Transition) -> None:
        """Nothing to do: the breaker gauges are read from the shared state at scrape time
        (:func:`breaker_families`), whichever process saw the transition."""
        return None

    def _children(self, agent: str) -> _AgentMetrics:
        """The agent's labelled children, looked up once (``labels()`` validates, locks and
        builds tuples: about 2 µs a call, seven calls an execution)."""
        children = self._per_agent.get(agent)
        if children is None:
            children = self._per_agent[agent] = _AgentMetrics(agent)
        return children

    def execution_started(self, execution_id: str, agent: str) -> None:
        try:
            with self._lock:
                if execution_id in self._active:
                    return
                self._active[execution_id] = agent
            self._children(agent).active.inc()
        except Exception:
            logger.exception("metrics: execution_started failed")

    def execution_token(self, execution_id: str, text: str) -> None:
        return None

    def execution_finished(self, result: ExecutionResult) -> None:
        try:
            with self._lock:
                started_as = self._active.pop(result.execution_id, None)
            if started_as is not None:
                self._children(started_as).active.dec()
            agent = result.agent
            children = self._children(agent)
            children.requests(result.status.value).inc()
            children.duration.observe(max(result.latency_ms, 0.0) / 1000)
            children.input_tokens.inc(max(result.usage.input_tokens, 0))
            children.output_tokens.inc(max(result.usage.output_tokens, 0))
            children.cost.inc(max(float(result.cost_usd), 0.0))
            if result.cached:
                CACHE_HITS.labels(agent=agent).inc()
            if result.fallback_reason is not None:
                FALLBACKS.labels(agent=agent, reason=result.fallback_reason).inc()
            retries = count_retries(result.steps)
            if retries:
                RETRIES.labels(agent=agent).inc(retries)
            # A failed attempt means a retry, a fallback or an execution that did not succeed.
            if retries or result.fallback_used or result.status is not ExecutionStatus.SUCCEEDED:
                self._count_upstream_errors(result.steps)
        except Exception:
            logger.exception("metrics: execution_finished failed")

    def _count_upstream_errors(self, steps: Iterable[Step]) -> None:
        for step in steps:
            kind = upstream_error_kind(step)
            if kind is None:
                continue
            key = (str(step.deployment), kind)
            child = self._upstream.get(key)
            if child is None:
                child = self._upstream[key] = UPSTREAM_ERRORS.labels(deployment=key[0], kind=kind)
            child.inc()


# --- scrape time: series of every known object ---------------------------------------------

ZERO_STATUSES = (
    "succeeded",
    "degraded",
    "failed",
)  # the SLIs' valid statuses (docs/INTERFACES.md §5)
TOKEN_TYPES = ("input", "output")
FALLBACK_REASONS: tuple[str, ...] = get_args(FallbackReason)
_INF = float("inf")


# Family name (as prometheus_client names it: a counter without ``_total``) -> its type and the
# label sets (beside ``agent``) that a known agent has from start-up, each at 0.
_PER_AGENT: dict[str, tuple[str, tuple[tuple[str, tuple[dict[str, str], ...]], ...]]] = {
    "agent_requests": (
        "counter",
        (("agent_requests_total", tuple({"status": s} for s in ZERO_STATUSES)),),
    ),
    "agent_llm_tokens": (
        "counter",
        (("agent_llm_tokens_total", tuple({"type": t} for t in TOKEN_TYPES)),),
    ),
    "agent_cost_dollars": ("counter", (("agent_cost_dollars_total", ({},)),)),
    "agent_cache_hits": ("counter", (("agent_cache_hits_total", ({},)),)),
    "agent_retries": ("counter", (("agent_retries_total", ({},)),)),
    "agent_fallbacks": (
        "counter",
        (("agent_fallbacks_total", tuple({"reason": r} for r in FALLBACK_REASONS)),),
    ),
    "agent_active_requests": ("gauge", (("agent_active_requests", ({},)),)),
    "agent_request_duration_seconds": (
        "histogram",
        (
            (
                "agent_request_duration_seconds_bucket",
                tuple({"le": floatToGoString(b)} for b in (*DURATION_BUCKETS, _INF)),  # type: ignore[no-untyped-call]
            ),
            ("agent_request_duration_seconds_count", ({},)),
            ("agent_request_duration_seconds_sum", ({},)),
        ),
    ),
}
_DOCUMENTATION = {
    "agent_requests": REQUESTS._documentation,
    "agent_llm_tokens": LLM_TOKENS._documentation,
    "agent_cost_dollars": COST._documentation,
    "agent_cache_hits": CACHE_HITS._documentation,
    "agent_retries": RETRIES._documentation,
    "agent_fallbacks": FALLBACKS._documentation,
    "agent_active_requests": ACTIVE_REQUESTS._documentation,
    "agent_request_duration_seconds": REQUEST_DURATION._documentation,
}


def complete_agent_families(
    families: Iterable[Metric], agents: frozenset[str] | None
) -> Iterator[Metric]:
    """The processes' families, with the per-agent ones made whole for ``agents`` (the agents
    that exist now): a zero sample for every label set a known agent has not counted yet (its
    statuses, token types, fallback reasons, histogram buckets), and no sample of an agent that
    no longer exists. ``agents=None`` (the catalog could not be read): the families as they
    are. Other families pass through untouched."""
    seen: set[str] = set()
    for family in families:
        spec = _PER_AGENT.get(family.name)
        if spec is None or agents is None:
            yield family
            continue
        seen.add(family.name)
        yield _completed(family, spec[1], agents)
    if agents is None:
        return
    for name, (typ, samples) in _PER_AGENT.items():
        if name not in seen:
            yield _completed(Metric(name, _DOCUMENTATION[name], typ), samples, agents)


def _completed(
    family: Metric,
    expected: tuple[tuple[str, tuple[dict[str, str], ...]], ...],
    agents: frozenset[str],
) -> Metric:
    kept = [s for s in family.samples if s.labels.get("agent") in agents]
    present = {(s.name, tuple(sorted(s.labels.items()))) for s in kept}
    for agent in sorted(agents):
        for sample_name, label_sets in expected:
            for extra in label_sets:
                labels = {"agent": agent, **extra}
                if (sample_name, tuple(sorted(labels.items()))) not in present:
                    kept.append(Sample(sample_name, labels, 0.0))
    family.samples = kept
    return family


def breaker_families(
    agents: Mapping[str, BreakerState], deployments: Mapping[int, BreakerState]
) -> list[Metric]:
    """``agent_circuit_breaker_state{agent}`` and ``agent_deployment_breaker_state{deployment}``
    (0 closed, 1 half-open, 2 open) of every agent and deployment, as the shared state says."""
    agent_family = GaugeMetricFamily(
        "agent_circuit_breaker_state",
        "Agent circuit breaker: 0 closed, 1 half-open, 2 open.",
        labels=["agent"],
    )
    for name, state in sorted(agents.items()):
        agent_family.add_metric([name], BREAKER_GAUGE[state])
    deployment_family = GaugeMetricFamily(
        "agent_deployment_breaker_state",
        "Model deployment circuit breaker: 0 closed, 1 half-open, 2 open.",
        labels=["deployment"],
    )
    for ident, state in sorted(deployments.items()):
        deployment_family.add_metric([str(ident)], BREAKER_GAUGE[state])
    return [agent_family, deployment_family]


def drain_lag_family(lag_s: float) -> Metric:
    return GaugeMetricFamily(
        "breakwater_drain_lag_seconds",
        "Age of the oldest execution record accepted into the journal but not yet stored in "
        "the database (0 when the journal is empty).",
        value=max(0.0, lag_s),
    )


def processes_family(live: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(
        "breakwater_processes",
        "Live processes by role, from their heartbeats (0: every process of a role is down).",
        labels=["role"],
    )
    for role, count in sorted(live.items()):
        family.add_metric([role], count)
    return family


def source_up_family(up: Mapping[str, bool]) -> Metric:
    """``breakwater_metrics_source_up{source}``: whether this scrape could read ``source``
    (``shared_state``, ``database``, ``journal``); the series read from it are missing when 0."""
    family = GaugeMetricFamily(
        "breakwater_metrics_source_up",
        "1 when this scrape read the source (shared_state, database, journal), 0 when it failed "
        "and the series from it are missing.",
        labels=["source"],
    )
    for source, ok in sorted(up.items()):
        family.add_metric([source], 1.0 if ok else 0.0)
    return family


# --- multiprocess mode --------------------------------------------------------------------------

# Files of gauges whose multiprocess mode only counts live processes: gauge_live<mode>_<pid>.db
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(?P<pid>\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The multiprocess directory when multiprocess mode is on, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(directory: str | os.PathLike[str]) -> Path:
    """Create the directory and delete files left by a previous run.

    Call it once before the worker processes start (the prometheus_client docs require the
    directory to be wiped between runs); old counters would otherwise be merged into new ones.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def mark_process_dead(pid: int, directory: str | os.PathLike[str] | None = None) -> None:
    """Forget a dead worker's live gauges (``livesum`` etc.); keep its counters and histograms.

    For a supervisor that knows when a worker exits (gunicorn's ``child_exit`` hook, our serve).
    """
    path = os.fspath(directory) if directory is not None else multiprocess_dir()
    if path:
        # Another process may be removing the same files (FileNotFoundError): already done.
        with contextlib.suppress(FileNotFoundError):
            prometheus_multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def cleanup_dead_processes(directory: str | os.PathLike[str] | None = None) -> list[int]:
    """Call :func:`mark_process_dead` for every pid with live-gauge files that no longer runs.

    Needs no supervisor hook, so ``/metrics`` runs it before each scrape. Only valid when every
    writer of the directory shares this machine's pid namespace (one host or container).
    Returns the pids cleaned up.
    """
    path = os.fspath(directory) if directory is not None else multiprocess_dir()
    if not path or not os.path.isdir(path):
        return []
    pids: set[int] = set()
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.match(name)
        if match is not None:
            pids.add(int(match.group("pid")))
    dead = sorted(pid for pid in pids if pid != os.getpid() and not _pid_alive(pid))
    for pid in dead:
        mark_process_dead(pid, path)
    return dead
