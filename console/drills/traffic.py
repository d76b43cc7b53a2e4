"""Drill traffic: executions of the drill's agent through the real execute path
(``POST /api/v1/agents/{name}/execute``), offered at a steady rate (open loop: a slow answer
does not slow the offer), each answer kept as a :class:`Sample` labelled with the drill's phase
at the moment it was sent."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp

from console.drills.client import ApiClient


@dataclass(frozen=True, slots=True)
class Sample:
    phase: str
    sent_s: float  # monotonic
    latency_s: float
    http: int  # 0: no answer (connection error, timeout)
    status: str  # succeeded | degraded | failed | ... | "" without a body
    model: str
    fallback_reason: str
    cost_usd: float
    execution_id: str
    resent: int = 0  # times re-sent: closed unanswered, or 503 with Retry-After (``resend``)

    @property
    def answered(self) -> bool:
        """An answer from a model (the primary, a fallback model or the cache)."""
        return self.http == 200 and self.status == "succeeded"


@dataclass
class Traffic:
    client: ApiClient
    agent: str
    rate: float  # requests per second
    prompt: str = "Where is my order? It was due on Monday."
    max_tokens: int | None = None
    phase: str = "baseline"
    # Each request carries an ``Idempotency-Key``; one whose connection closed before any
    # answer (a keep-alive connection the server closed as it shut down), or that was answered
    # 503 with ``Retry-After``, is sent again with the same key, up to this many times: the
    # server runs it at most once (0: never re-sent).
    resend: int = 0
    samples: list[Sample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _pending: set[asyncio.Task[Sample]] = field(default_factory=set)
    _count: itertools.count[int] = field(default_factory=itertools.count)

    def start(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate: must be > 0, got {self.rate:g}")
        self._task = asyncio.get_running_loop().create_task(self._offer(), name="drill-traffic")

    async def stop(self, *, grace_s: float = 30.0) -> None:
        """Stop offering; wait for the answers still to come."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=grace_s)
            for task in self._pending:
                task.cancel()

    async def _offer(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while True:
            task = asyncio.create_task(self.one(self.phase))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def one(self, phase: str, prompt: str | None = None) -> Sample:
        """One execution; its sample is kept and returned."""
        number = next(self._count)
        # Every input differs: no request is answered from the response cache (the drill's
        # agent has none anyway) or folded into another.
        body: dict[str, object] = {
            "input": f"{prompt or self.prompt} (drill request {number})",
            "metadata": {"source": "drill", "phase": phase},
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        sent = time.monotonic()
        headers = {"Authorization": f"Bearer {self.client.api_key}"}
        if self.resend:
            headers["Idempotency-Key"] = f"{self.agent}-{number}"
        resent = 0
        http, answer = 0, cast(Any, {})
        while True:
            http, answer, retry_after = 0, cast(Any, {}), None
            try:
                async with self.client.session.post(
                    f"{self.client.base_url}/api/v1/agents/{self.agent}/execute",
                    json=body,
                    headers=headers,
                ) as response:
                    http = response.status
                    retry_after = response.headers.get("Retry-After")
                    with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                        answer = await response.json(content_type=None) or {}
            except aiohttp.ServerDisconnectedError:
                if resent < self.resend:  # closed before any answer: the same key again
                    resent += 1
                    continue
            except (aiohttp.ClientError, TimeoutError):
                pass
            if http == 503 and retry_after is not None and resent < self.resend:
                # "Try again": what a client that sent an Idempotency-Key does (the server
                # answers the retry from the first attempt's record if that one ran).
                resent += 1
                with contextlib.suppress(ValueError):
                    await asyncio.sleep(min(float(retry_after), 1.0))
                continue
            break
        if not isinstance(answer, dict):
            answer = {}
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        sample = Sample(
            phase=phase,
            sent_s=sent,
            latency_s=time.monotonic() - sent,
            http=http,
            status=str(answer.get("status") or (error or {}).get("type") or ""),
            model=str(answer.get("model") or ""),
            fallback_reason=str(answer.get("fallback_reason") or ""),
            cost_usd=float(answer.get("cost_usd") or 0.0),
            execution_id=str(answer.get("execution_id") or ""),
            resent=resent,
        )
        self.samples.append(sample)
        return sample


def tally(samples: Iterable[Sample]) -> Counter[str]:
    """Counts by outcome: ``answered:<model>``, ``degraded:<reason>``, ``failed``, ``http:<n>``."""
    out: Counter[str] = Counter()
    for s in samples:
        if s.http != 200:
            out[f"http:{s.http}"] += 1
        elif s.status == "succeeded":
            out[f"answered:{s.model}"] += 1
        elif s.status == "degraded":
            out[f"degraded:{s.fallback_reason or 'unknown'}"] += 1
        else:
            out[s.status or "unknown"] += 1
    return out
