"""Prometheus metrics of the agent runtime (docs/INTERFACES.md §5) and the sink that feeds them.

Labels are bounded: agent name, status, token type, fallback reason, budget scope and the
deployment id (bounded by configuration). Execution ids never become labels.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set *before* prometheus_client is
first imported, every process writes its values to mmap files in that directory and ``/metrics``
(console/metrics_view.py) merges them with ``MultiProcessCollector``. Counters and histograms of
dead processes stay in the directory on purpose (their increments are part of the totals). Gauges
choose how they merge:

- ``agent_active_requests`` is ``livesum``: the sum over live processes; a dead process's requests
  are no longer active, so its file must go (:func:`cleanup_dead_processes`).
- breaker and budget gauges are ``mostrecent``: they mirror shared state (Redis) that any process
  may observe changing, so the value written last wins, whichever process wrote it and whether or
  not it is still alive. ``max`` would keep reporting an "open" that another process has since
  seen close.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess

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
CIRCUIT_BREAKER_STATE = Gauge(
    "agent_circuit_breaker_state",
    "Agent circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["agent"],
    multiprocess_mode="mostrecent",
)
DEPLOYMENT_BREAKER_STATE = Gauge(
    "agent_deployment_breaker_state",
    "Model deployment circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["deployment"],
    multiprocess_mode="mostrecent",
)
BUDGET_REMAINING = Gauge(
    "agent_budget_remaining_dollars",
    "Budget left in the current window, in US dollars.",
    ["scope"],
    multiprocess_mode="mostrecent",
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


def set_budget_remaining(scope: str, remaining_usd: Decimal | float) -> None:
    """Publish what is left of a budget. ``scope`` must be bounded, e.g. ``global``, ``agent:x``."""
    BUDGET_REMAINING.labels(scope=scope).set(float(remaining_usd))


def set_breaker_state(key: str, state: BreakerState) -> bool:
    """Publish a breaker's state (``agent:<name>`` or ``deployment:<id>``); False for another
    kind of key.

    Transitions set it, and so does every read of a breaker's state through the API: an open
    breaker moves to half-open lazily, at the next call after its recovery time, and a read in
    between reports it half-open (probe-able); the gauge then says the same as the API.
    """
    kind, _, name = key.partition(":")
    value = BREAKER_GAUGE[state]
    if kind == "agent" and name:
        CIRCUIT_BREAKER_STATE.labels(agent=name).set(value)
    elif kind == "deployment" and name:
        DEPLOYMENT_BREAKER_STATE.labels(deployment=name).set(value)
    else:
        return False
    return True


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
        try:
            if not set_breaker_state(transition.key, transition.to_state):
                logger.warning("breaker transition with an unknown key %r", transition.key)
        except Exception:
            logger.exception("metrics: breaker_transition failed")

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
