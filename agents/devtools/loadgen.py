"""Demo and load traffic through the real execute path (HTTP to the API).

The mix follows the reference deployment's per-agent volumes (customer-support 200K/day,
code-review 150K, data-analyst 80K, content-writer 40K, the other six 30K together), scaled to
the chosen rate. Arrivals are Poisson (open loop: a slow server does not slow the offered
load). Questions come from per-agent templates x slots (agents/devtools/prompts.py, which also
computes the cache hit rate they give: about 35% at the demo's 3 requests/s). Requests are sent
synchronously, queued or streamed (:data:`MODES`); chat agents continue some conversations in a
session. Every random choice comes from one seeded ``random.Random``.

With ``record`` (``manage.py loadgen --record FILE``) every request carries an id of its own
(``metadata.request``, and the ``Idempotency-Key`` of the REST doors), and one JSON line per
request says what the client got: the HTTP status, the execution id, its status, the model that
answered, the latency and the tries. ``retries`` sends a REST request again, with the same
``Idempotency-Key``, when it got no HTTP answer (a server that died under it): the retry replays
the answer, or is refused (409) while the first is in progress, and never runs the request
twice. A retry refused with ``Retry-After`` is sent again after it, for as long as the request
is younger than ``IN_PROGRESS_WAIT_S``: once the dead server's process is judged dead the
key answers ``execution_interrupted`` (a 500, final). A stream is never retried: ``/v1`` has
no idempotency key. ``bench/scale`` reads the lines back against the database (lost,
duplicated).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agents.devtools.prompts import pool_for

REFERENCE_MIX: dict[str, float] = {
    "customer-support": 200_000,
    "code-review": 150_000,
    "data-analyst": 80_000,
    "content-writer": 40_000,
    # the other six share 30K/day
    "sales-assistant": 5_000,
    "it-helpdesk": 5_000,
    "hr-policy": 5_000,
    "translator": 5_000,
    "meeting-summarizer": 5_000,
    "release-notes": 5_000,
}

# How a request is sent (the share of each): the lean REST execute and waits for the answer,
# queued (202, run by the worker) or streamed over the OpenAI-compatible door.
MODES: dict[str, float] = {"sync": 0.70, "queued": 0.10, "stream": 0.20}
# Chat agents: this share of their synchronous requests continues a recent conversation
# (a session; its history makes the prompt new, so it is a cache miss).
CHAT_AGENTS = frozenset({"customer-support", "it-helpdesk", "sales-assistant"})
FOLLOW_UP_SHARE = 0.15
FOLLOW_UPS = (
    "Thanks. Can you send that to my email?",
    "That did not help, can I talk to a person?",
    "And how long will that take?",
    "OK, what do I do next?",
    "Can you explain step 2 again?",
)
OPEN_SESSIONS = 20  # conversations per agent a follow-up may continue (the most recent)


@dataclass
class LoadStats:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    http_errors: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    modes: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        lat = sorted(self.latencies_ms)
        p50 = statistics.median(lat) if lat else 0.0
        p95 = lat[int(len(lat) * 0.95) - 1] if len(lat) >= 20 else (lat[-1] if lat else 0.0)
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        errors = ", ".join(f"HTTP {k}: {v}" for k, v in sorted(self.http_errors.items()))
        return (
            f"sent {self.sent}; {parts or 'no answers'}"
            + (f"; {errors}" if errors else "")
            + f"; latency p50 {p50:.0f} ms, p95 {p95:.0f} ms"
        )


def pick_question(agent: str, rng: random.Random) -> str:
    return pool_for(agent).pick(rng)


@dataclass(frozen=True, slots=True)
class Request:
    """One request the loadgen sends."""

    agent: str
    mode: str  # a key of MODES
    text: str
    session_id: str | None = None
    request_id: str = ""  # with a record: metadata.request (and the REST Idempotency-Key)

    def call(self, base_url: str) -> tuple[str, dict[str, Any]]:
        """(url, JSON body)."""
        tag = {"request": self.request_id} if self.request_id else {}
        if self.mode == "stream":
            body: dict[str, Any] = {
                "model": self.agent,
                "messages": [{"role": "user", "content": self.text}],
                "stream": True,
            }
            if tag:
                body["metadata"] = {"source": "loadgen", "mode": self.mode, **tag}
            return f"{base_url}/v1/chat/completions", body
        body = {"input": self.text, "metadata": {"source": "loadgen", "mode": self.mode, **tag}}
        if self.session_id is not None:
            body["session_id"] = self.session_id
        path = "executions" if self.mode == "queued" else "execute"
        return f"{base_url}/api/v1/agents/{self.agent}/{path}", body


class Traffic:
    """What to send next: the agent by the reference mix, the mode, the question, the session."""

    def __init__(self, rng: random.Random, agents: Sequence[str] | None = None) -> None:
        self.rng = rng
        self.names = [a for a in REFERENCE_MIX if agents is None or a in agents] or list(
            agents or []
        )
        self.weights = [REFERENCE_MIX.get(a, 5_000) for a in self.names]
        self.modes = list(MODES)
        self.mode_weights = list(MODES.values())
        self.sessions: dict[str, list[str]] = {}
        self.conversations = 0

    def next(self) -> Request:
        rng = self.rng
        agent = rng.choices(self.names, self.weights)[0]
        mode = rng.choices(self.modes, self.mode_weights)[0]
        follow_up = rng.random() < FOLLOW_UP_SHARE
        if agent in CHAT_AGENTS and mode == "sync":
            open_ = self.sessions.setdefault(agent, [])
            if follow_up and open_:
                session = open_[rng.randrange(len(open_))]
                return Request(agent, mode, FOLLOW_UPS[rng.randrange(len(FOLLOW_UPS))], session)
            self.conversations += 1
            session = f"demo-{agent}-{self.conversations}"
            open_.append(session)
            del open_[:-OPEN_SESSIONS]
            return Request(agent, mode, pick_question(agent, rng), session)
        return Request(agent, mode, pick_question(agent, rng))


Record = Callable[[dict[str, Any]], None]
RETRY_PAUSE_S = 0.5
IN_PROGRESS_WAIT_S = 120.0  # how long a retried request keeps asking while it is "in progress"


class _RetryLater(Exception):
    """A 409 with ``Retry-After``: the key's first request is still in progress."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"in progress; retry after {seconds:g} s")
        self.seconds = seconds


def stream_outcome(raw: bytes) -> tuple[str | None, bool]:
    """(execution id, complete) of a ``/v1`` event stream: the id of its chunks
    (``chatcmpl-<execution id>``), and whether it ended with ``[DONE]`` and no error event."""
    ident: str | None = None
    errored = False
    for line in raw.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        try:
            doc = json.loads(line[6:])
        except ValueError:
            errored = True
            continue
        if not isinstance(doc, dict):
            continue
        if "error" in doc:
            errored = True
        if ident is None and isinstance(doc.get("id"), str):
            ident = doc["id"].removeprefix("chatcmpl-") or None
    return ident, b"data: [DONE]" in raw and not errored


async def run_load(
    *,
    base_url: str,
    api_key: str,
    rate: float,
    duration_s: float | None,
    agents: Sequence[str] | None = None,
    seed: int | None = None,
    max_in_flight: int = 256,
    stats: LoadStats | None = None,
    record: Record | None = None,
    run_id: str = "lg",
    retries: int = 0,
) -> LoadStats:
    """Offer ``rate`` executions per second for ``duration_s`` (None: until cancelled).

    ``record``: called with one dict per request once it is done (see the module docstring);
    the requests' ids are ``<run_id>-<n>``. ``retries``: how many times a REST request that got
    no HTTP answer is sent again (with the same ``Idempotency-Key``; only with ``record``)."""
    if rate <= 0:
        raise ValueError("rate: must be > 0")
    if retries < 0:
        raise ValueError("retries: must be >= 0")
    rng = random.Random(seed)
    traffic = Traffic(rng, agents)
    stats = stats or LoadStats()
    gate = asyncio.Semaphore(max_in_flight)
    headers = {"Authorization": f"Bearer {api_key}"}
    pending: set[asyncio.Task[None]] = set()

    async def attempt(
        session: aiohttp.ClientSession, request: Request, entry: dict[str, Any]
    ) -> None:
        """One try: fills ``entry`` with what the server answered (raises on no answer)."""
        url, payload = request.call(base_url)
        sent_headers = dict(headers)
        if request.request_id and request.mode != "stream":
            sent_headers["Idempotency-Key"] = request.request_id
        async with session.post(url, json=payload, headers=sent_headers) as response:
            entry["http"] = response.status
            if response.status == 409 and entry["tries"] > 1:
                with contextlib.suppress(ValueError):
                    raise _RetryLater(float(response.headers.get("Retry-After", "")))
            if request.mode == "stream":
                raw = await response.read()  # the whole event stream, to its end
                ident, complete = stream_outcome(raw) if response.status == 200 else (None, False)
                entry["execution_id"] = ident
                entry["status"] = "streamed" if complete else "stream_error"
                return
            body = await response.json(content_type=None)
            if isinstance(body, dict):
                entry["execution_id"] = body.get("execution_id")
                entry["status"] = body.get("status")
                entry["model"] = body.get("model")
                entry["fallback_used"] = body.get("fallback_used")
                error = body.get("error")
                if isinstance(error, dict):
                    entry["error"] = str(error.get("type") or "")

    async def one(session: aiohttp.ClientSession, request: Request) -> None:
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "request": request.request_id,
            "agent": request.agent,
            "mode": request.mode,
            "sent_at": time.time(),
            "http": None,
            "execution_id": None,
            "tries": 0,
        }
        may_retry = retries if request.request_id and request.mode != "stream" else 0
        unanswered = 0
        try:
            while True:
                entry["tries"] += 1
                try:
                    await attempt(session, request, entry)
                    break
                except _RetryLater as later:
                    entry["error"] = "in_progress"
                    if time.perf_counter() - started + later.seconds > IN_PROGRESS_WAIT_S:
                        break
                    await asyncio.sleep(later.seconds)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    entry["error"] = type(exc).__name__
                    unanswered += 1
                    if unanswered > may_retry:
                        break
                    await asyncio.sleep(RETRY_PAUSE_S)
                except ValueError as exc:  # a body that is not JSON
                    entry["error"] = type(exc).__name__
                    break
                except asyncio.CancelledError:  # still unanswered when the run ended
                    entry["error"] = "unfinished"
                    raise
            stats.modes[request.mode] += 1
            status = entry["http"]
            if status is None or ("status" not in entry and request.mode != "stream"):
                stats.http_errors[0 if status is None else status] += 1
            elif request.mode == "stream":
                if entry["status"] == "streamed":
                    stats.statuses["streamed"] += 1
                else:
                    stats.http_errors[status] += 1
            elif status in (200, 202):
                stats.statuses[str(entry["status"])] += 1
            else:
                stats.http_errors[status] += 1
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
            stats.latencies_ms.append(latency_ms)
            gate.release()
            if record is not None:
                entry["latency_ms"] = round(latency_ms, 2)
                record(entry)

    deadline = None if duration_s is None else time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=120)
    # Arrivals keep their own schedule: a sleep that overshoots (a busy machine) is made up by
    # the next ones, so the offered rate is the one asked for, not what this process managed.
    arrival = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            while deadline is None or time.monotonic() < deadline:
                arrival += rng.expovariate(rate)
                if (ahead := arrival - time.monotonic()) > 0:  # behind: send it at once
                    await asyncio.sleep(ahead)
                if deadline is not None and arrival >= deadline:
                    break
                if not gate._value:  # saturated: drop (open loop), count it
                    stats.http_errors[-1] += 1
                    continue
                await gate.acquire()
                request = traffic.next()
                stats.sent += 1
                if record is not None:
                    request = dataclasses.replace(request, request_id=f"{run_id}-{stats.sent}")
                task = asyncio.create_task(one(session, request))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            if pending:
                await asyncio.wait(pending, timeout=30)
            for task in list(pending):  # unanswered after 30 s: recorded as unfinished
                task.cancel()
            if pending:
                await asyncio.wait(pending)
    return stats
