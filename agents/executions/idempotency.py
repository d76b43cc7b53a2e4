"""``Idempotency-Key`` with Stripe's semantics, for execute and enqueue.

* The same key with the same request replays the stored response: no second execution, no
  second charge.
* The same key with a different request is refused (422).
* The same key while the first request is still running is refused (409, ``Retry-After``).
* When the process that ran the first request died before answering (judged dead by
  ``agents.executions.processes``: about a minute after a SIGKILL or an OOM kill, instead of the
  claim's hour), the key's answer becomes a 500 ``execution_interrupted``, for that resend and
  every later one. The request is never run a second time under its key: the first one may
  have reached the provider, and its execution is settled as failed by
  ``executions_settle_dead``; the client sends it again with a new key if it still wants it.
  Distributed mode: each claim names its process.
* Keys are kept 24 hours, per API key (one client's keys never collide with another's).

Distributed mode stores records in Redis (``SET NX`` claims the key atomically across processes);
embedded mode keeps them in process memory (a restart forgets them: documented in
docs/OPERATIONS.md). A request that fails with an unexpected error releases its claim so the
client can retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from core.redis import unavailable_on_redis_errors

TTL_S = 24 * 3600
RUNNING_TTL_S = 3700  # a claim outlives the longest execution, then frees itself
MAX_KEY_LEN = 255
# The 409's Retry-After: the first request ends within its timeout, or its process is judged
# dead within about BREAKWATER_DEAD_AFTER_S and the key then answers execution_interrupted.
IN_PROGRESS_RETRY_AFTER_S = 5

log = logging.getLogger("breakwater.executions")

# The key's answer once the process of its first request died without answering.
INTERRUPTED_STATUS = 500
INTERRUPTED = {
    "error": {
        "type": "execution_interrupted",
        "message": (
            "the process running the first request with this Idempotency-Key stopped before "
            "answering; its execution was settled as failed and is not run again under this "
            "key: send the request with a new Idempotency-Key to run it"
        ),
    }
}

# Replace a claim only if it is still exactly the one judged abandoned (one resend writes it).
_REPLACE_IF_UNCHANGED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    outcome: Literal["started", "replay", "mismatch", "in_progress"]
    status: int = 0
    body: Any = None


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


class MemoryIdempotency:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}

    def _get(self, key: str, now: float) -> dict[str, Any] | None:
        item = self._records.get(key)
        if item is None or item[0] <= now:
            self._records.pop(key, None)
            return None
        return item[1]

    async def claim(self, key: str, print_: str) -> Claim:
        now = time.time()
        with self._lock:
            if len(self._records) > 100_000:  # bound memory: drop expired records
                for stale in [k for k, (exp, _) in self._records.items() if exp <= now]:
                    del self._records[stale]
            record = self._get(key, now)
            if record is None:
                self._records[key] = (now + RUNNING_TTL_S, {"fp": print_, "state": "running"})
                return Claim("started")
            return _judge(record, print_)

    async def finish(self, key: str, print_: str, status: int, body: Any) -> None:
        with self._lock:
            self._records[key] = (
                time.time() + TTL_S,
                {"fp": print_, "state": "done", "status": status, "body": body},
            )

    async def release(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)


class RedisIdempotency:
    """``owner()`` names the process a claim is made by; ``owner_dead(name)`` says whether that
    process is known to be dead (both optional: without them a claim waits out its TTL).
    The claim of a dead process becomes the key's final answer, ``INTERRUPTED``."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "bw",
        owner: Callable[[], str] | None = None,
        owner_dead: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._owner = owner
        self._owner_dead = owner_dead

    def _key(self, key: str) -> str:
        return f"{self._prefix}:idem:{key}"

    async def claim(self, key: str, print_: str) -> Claim:
        with unavailable_on_redis_errors():
            return await self._claim(key, print_)

    async def _claim(self, key: str, print_: str) -> Claim:
        record: dict[str, Any] = {"fp": print_, "state": "running"}
        if self._owner is not None:
            record["owner"] = self._owner()
        running = json.dumps(record)
        if await self._redis.set(self._key(key), running, nx=True, ex=RUNNING_TTL_S):
            return Claim("started")
        raw = await self._redis.get(self._key(key))
        if raw is None:  # expired between the two calls: try once more
            if await self._redis.set(self._key(key), running, nx=True, ex=RUNNING_TTL_S):
                return Claim("started")
            raw = await self._redis.get(self._key(key))
        if not raw:
            return Claim("in_progress")
        found = json.loads(raw)
        claim = _judge(found, print_)
        owner = found.get("owner")
        if claim.outcome != "in_progress" or not owner or self._owner_dead is None:
            return claim
        if not await self._owner_dead(owner):
            return claim
        final = json.dumps(
            {"fp": print_, "state": "done", "status": INTERRUPTED_STATUS, "body": INTERRUPTED}
        )
        if await self._redis.eval(_REPLACE_IF_UNCHANGED, 1, self._key(key), raw, final, TTL_S):
            log.warning(
                "Idempotency-Key of a request whose process %s died: answered %s from now on",
                owner,
                INTERRUPTED["error"]["type"],
            )
        raw = await self._redis.get(self._key(key))  # this one, another resend's, or finished
        return _judge(json.loads(raw), print_) if raw else Claim("in_progress")

    async def finish(self, key: str, print_: str, status: int, body: Any) -> None:
        record = {"fp": print_, "state": "done", "status": status, "body": body}
        with unavailable_on_redis_errors():
            await self._redis.set(self._key(key), json.dumps(record), ex=TTL_S)

    async def release(self, key: str) -> None:
        with unavailable_on_redis_errors():
            await self._redis.delete(self._key(key))


def _judge(record: dict[str, Any], print_: str) -> Claim:
    if record.get("fp") != print_:
        return Claim("mismatch")
    if record.get("state") != "done":
        return Claim("in_progress")
    return Claim("replay", int(record["status"]), record["body"])


async def run_idempotently(
    *,
    store: MemoryIdempotency | RedisIdempotency,
    header: str | None,
    key_id: int,
    method: str,
    path: str,
    body: bytes,
    produce: Any,
) -> Any:
    """Run ``produce()`` (a coroutine function returning a JSON-able body) at most once per
    ``Idempotency-Key`` header value; without the header it simply runs."""
    from core.errors import ApplicationError, Conflict, ValidationFailed

    if header is None:
        return await produce()
    key = header.strip()
    if not key or len(key) > MAX_KEY_LEN:
        raise ValidationFailed([f"Idempotency-Key: must be 1 to {MAX_KEY_LEN} characters"])
    scoped = f"{key_id}:{hashlib.sha256(key.encode()).hexdigest()}"
    print_ = fingerprint(method, path, body)
    claim = await store.claim(scoped, print_)
    if claim.outcome == "replay":
        if claim.status != 200:  # a stored refusal (INTERRUPTED): the same answer again
            error = claim.body["error"]
            raise ApplicationError(error["message"], status=claim.status, type=error["type"])
        return claim.body
    if claim.outcome == "mismatch":
        raise ApplicationError(
            "Idempotency-Key was already used with a different request",
            status=422,
            type="idempotency_mismatch",
        )
    if claim.outcome == "in_progress":
        raise Conflict(
            "a request with this Idempotency-Key is still being processed",
            retry_after=IN_PROGRESS_RETRY_AFTER_S,
        )
    try:
        result = await produce()
    except BaseException:
        await store.release(scoped)
        raise
    await store.finish(scoped, print_, 200, result)
    return result
