"""Redis :class:`~agents.runtime.state.StateStore` for the distributed mode.

Every call is one atomic Lua script (``agents/runtime/lua/``: a shared library of local
functions, ``lib.lua``, followed by one entry point per call), run with EVALSHA and loaded on
NOSCRIPT with EVAL (which caches it again). So :meth:`RedisState.admit` and
:meth:`RedisState.complete` are one round trip each, and concurrent processes cannot interleave
inside a breaker transition, a rate-limit check-and-take or a lease count.

Semantics are those of :class:`agents.runtime.memory.MemoryState` (both pass
``tests/agents/runtime/test_state.py``), with one deliberate difference: a refused ``admit``
applies the time-driven breaker transitions an acquire would (half-open probes that timed out
re-open the breaker, so a breaker whose probes were lost cannot stay half-open and refuse
forever) and reports the open-until times of the open deployment breakers it met, where
``MemoryState`` only peeks, without effect. See ``admit.lua``.

Budget reservations are named by the executions' lease ids too: a window keeps its settled
spend and each live reservation with its expiry (the lease's); a reservation still there when it
expires becomes spend (its process never said what it spent). Admission checks ``spent + live
reservations + amount <= limit`` for every hold, on windows marked complete by
``budget_prepare`` only, and takes all or nothing; a top-up (``budget_reserve``) adds to the
execution's reservation and moves its expiry; settlement (in ``complete``) drops it and adds the
actual cost to spent, once. The window's keys expire ``BudgetHold.ttl_s`` after the last
reservation. With ``AdmitRequest.record`` (the journal's ``started`` event), an admission that
admits appends it to the journal stream in the same script: no reservation exists without the
record that lets a dead process's execution be charged (DECISIONS #7).

Rate-log entry ids are the executions' lease ids, unique per key. Were one reused, settling it
would target the oldest entry under that id only while that entry lives (``MemoryState``: the
oldest live one).

Time comes from Redis ``TIME`` inside the script, so every process agrees on it. With an injected
``clock`` (tests), ``clock.now()`` is passed instead and key TTLs get an hour of slack, so that
keys never expire under a fake timeline that runs ahead of or behind the real one.

Keys (all under ``prefix``) are laid out in ``lib.lua``. Breaker state has no TTL; rate logs
expire one window after their last entry, lease sets when their last lease does, and budget
windows as said above. The scripts compute key names from the prefix, so this targets one Redis
server (not Redis Cluster).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.runtime.clock import Clock
from agents.runtime.redis_wire import RedisCommands
from agents.runtime.state import (
    Abandon,
    Admission,
    AdmitRefusal,
    AdmitRequest,
    BreakerAction,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    BudgetHold,
    BudgetWindow,
    Candidate,
    Completion,
    Outcome,
    RateLimit,
    Selection,
    StateUnavailable,
    Transition,
    WindowInit,
)

_SCRIPTS = (
    "admit",
    "select",
    "complete",
    "release",
    "breaker_acquire",
    "breaker_record",
    "breaker_snapshot",
    "breaker_command",
    "rate_acquire",
    "in_flight",
    "budget_reserve",
    "budget_usage",
    "budget_prepare",
    "abandon",
)
_REFUSALS: dict[str, AdmitRefusal] = {
    "circuit_open": "circuit_open",
    "rate_limited": "rate_limited",
    "no_deployment": "no_deployment",
    "budget_exceeded": "budget_exceeded",
    "budget_unknown": "budget_unknown",
    "late": "late",
}
_INJECTED_CLOCK_TTL_SLACK_S = 3600.0


def _lua_files() -> tuple[str, dict[str, str]]:
    folder = resources.files("agents.runtime").joinpath("lua")
    library = folder.joinpath("lib.lua").read_text(encoding="utf-8")
    entries = {
        name: folder.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in _SCRIPTS
    }
    return library, entries


def _lua_scripts() -> dict[str, str]:
    """The stand-alone script of each call, for EVALSHA (Redis without Functions)."""
    library, entries = _lua_files()
    return {
        name: f"{library}\nbegin(ARGV)\n-- entry point: {name}.lua\n{entry}"
        for name, entry in entries.items()
    }


def _function_library() -> tuple[str, dict[str, str]]:
    """The function library (``FUNCTION LOAD``) and the function name of each call.

    Named after a hash of its text, so that two versions of Breakwater sharing a Redis (a
    rolling deploy) each call their own functions.
    """
    library, entries = _lua_files()
    tag = hashlib.sha1(
        "\0".join((library, *entries.values())).encode(), usedforsecurity=False
    ).hexdigest()[:12]
    names = {name: f"bw_{tag}_{name}" for name in _SCRIPTS}
    parts = [f"#!lua name=bw_{tag}\n{library}"]
    for name, entry in entries.items():
        parts.append(
            f"redis.register_function('{names[name]}', function(_, args)\n"
            f"begin(args)\n-- entry point: {name}.lua\n{entry}\nend)\n"
        )
    return "\n".join(parts), names


def _missing_function(exc: ResponseError) -> bool:
    message = str(exc).lower()
    return "function not found" in message or "unknown command" in message


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _float(value: Any) -> float:
    return float(_text(value))


def _flag(value: Any) -> bool:
    return _text(value) == "1"


def _optional_int(value: Any) -> int | None:
    text = _text(value)
    return int(text) if text else None


def _record_id(value: Any) -> bytes | None:
    """A stream entry id from a reply ('' when nothing was appended)."""
    entry = value if isinstance(value, bytes) else str(value).encode()
    return entry or None


def _config(config: BreakerConfig) -> dict[str, Any]:
    encoded: dict[str, Any] = {
        "failure_threshold": config.failure_threshold,
        "recovery_timeout_s": config.recovery_timeout_s,
        "half_open_max_calls": config.half_open_max_calls,
        "window_size": config.window_size,
        "minimum_calls": config.minimum_calls,
        "failure_rate_threshold": config.failure_rate_threshold,
        "slow_call_rate_threshold": config.slow_call_rate_threshold,
        "probe_timeout_s": config.probe_timeout_s,
    }
    if config.slow_call_s is not None:  # absent, not null: cjson's null is not Lua's nil
        encoded["slow_call_s"] = config.slow_call_s
    return encoded


def _limits(limits: Iterable[RateLimit]) -> list[dict[str, Any]]:
    return [
        {"key": lim.key, "limit": lim.limit, "window_s": lim.window_s, "cost": lim.cost}
        for lim in limits
    ]


def _candidates(candidates: Iterable[Candidate]) -> list[dict[str, Any]]:
    return [
        {
            "id": c.deployment_id,
            "key": c.breaker_key,
            "max_concurrency": c.max_concurrency,
            "weight": c.weight,
        }
        for c in candidates
    ]


def _holds(holds: Iterable[BudgetHold]) -> list[dict[str, Any]]:
    return [{"key": h.key, "limit": h.limit, "amount": h.amount, "ttl_s": h.ttl_s} for h in holds]


def _remaining(flat: Sequence[Any]) -> dict[str, int]:
    items = [_text(value) for value in flat]
    return {items[i]: int(items[i + 1]) for i in range(0, len(items), 2)}


def _transitions(flat: Sequence[Any]) -> tuple[Transition, ...]:
    items = [_text(value) for value in flat]
    return tuple(
        Transition(
            key=items[i],
            from_state=BreakerState(items[i + 1]),
            to_state=BreakerState(items[i + 2]),
            at=float(items[i + 3]),
            reason=items[i + 4],
        )
        for i in range(0, len(items), 5)
    )


def _open_until(flat: Sequence[Any]) -> dict[str, float]:
    items = [_text(value) for value in flat]
    return {items[i]: float(items[i + 1]) for i in range(0, len(items), 2)}


class RedisState:
    def __init__(
        self,
        client: RedisCommands,
        *,
        prefix: str = "bw",
        clock: Clock | None = None,
        scripts: bool = False,
    ) -> None:
        """``scripts``: run the calls as ``EVALSHA`` scripts from the start instead of as the
        function library (what happens by itself on a Redis without Functions)."""
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._slack = "0" if clock is None else repr(_INJECTED_CLOCK_TTL_SLACK_S)
        self._library, self._functions = _function_library()
        # None: not known yet; False: this Redis has no Functions (before 7.0), use EVALSHA.
        self._use_functions: bool | None = None
        self._sources: dict[str, str] = {}
        self._shas: dict[str, str] = {}
        if scripts:
            self._use_scripts()

    async def _run(self, name: str, payload: dict[str, Any], *blob: bytes) -> Any:
        try:
            return await self._call(name, payload, *blob)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StateUnavailable(f"Redis: {exc}") from exc

    async def _call(self, name: str, payload: dict[str, Any], *blob: bytes) -> Any:
        """``blob``: the admission's record value (``args[5]`` in ``lib.lua``), if any."""
        now = "" if self._clock is None else repr(self._clock.now())
        args: tuple[str | bytes, ...] = (
            self._prefix,
            now,
            self._slack,
            orjson.dumps(payload),
            *blob,
        )
        if self._use_functions is not False:
            try:
                return await self._client.execute_command("FCALL", self._functions[name], 0, *args)
            except ResponseError as exc:
                if not _missing_function(exc):
                    raise
            # First call, or a Redis that was restarted or flushed: (re)load the library.
            await self._load_library()
            if self._use_functions:
                return await self._client.execute_command("FCALL", self._functions[name], 0, *args)
        return await self._eval(name, args)

    async def _load_library(self) -> None:
        try:
            await self._client.execute_command("FUNCTION", "LOAD", self._library)
        except ResponseError as exc:
            message = str(exc)
            if "already exists" in message:  # another process loaded it first
                self._use_functions = True
                return
            if "unknown command" in message.lower():
                self._use_scripts()
                return
            raise
        self._use_functions = True

    def _use_scripts(self) -> None:
        self._use_functions = False
        self._sources = _lua_scripts()
        self._shas = {
            name: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            for name, source in self._sources.items()
        }

    async def _eval(self, name: str, args: tuple[str | bytes, ...]) -> Any:
        try:
            return await self._client.execute_command("EVALSHA", self._shas[name], 0, *args)
        except NoScriptError:  # a restarted or flushed Redis: EVAL sends and caches the script
            return await self._client.execute_command("EVAL", self._sources[name], 0, *args)

    # --- composite calls ---

    async def admit(self, request: AdmitRequest) -> Admission:
        payload: dict[str, Any] = {
            "lease_id": request.lease_id,
            "lease_ttl_s": request.lease_ttl_s,
            "limits": _limits(request.rate_limits),
            "holds": _holds(request.budgets),
            "candidates": _candidates(request.candidates),
            "deployment_cfg": _config(request.deployment_breaker),
        }
        if request.agent_breaker_key is not None and request.agent_breaker is not None:
            payload["agent_key"] = request.agent_breaker_key
            payload["agent_cfg"] = _config(request.agent_breaker)
        if request.cache_key is not None:
            payload["cache"] = request.cache_key
        record = request.record
        if record is None:
            reply = await self._run("admit", payload)
        else:
            payload["record"] = {
                "stream": record.stream,
                "maxlen": record.maxlen,
                "field": record.field,
            }
            reply = await self._run("admit", payload, record.value)
        refusal = _text(reply[0])
        if refusal == "cached":
            cached = reply[1]
            return Admission(
                refusal=None,
                retry_after=0.0,
                deployment_id=None,
                agent_probe=False,
                deployment_probe=False,
                cached=cached if isinstance(cached, bytes) else str(cached).encode(),
            )
        if refusal == "budget_unknown":
            return Admission(
                refusal="budget_unknown",
                retry_after=0.0,
                deployment_id=None,
                agent_probe=False,
                deployment_probe=False,
                transitions=_transitions(reply[5]),
                open_until=_open_until(reply[6]),
                unknown_budgets=tuple(_text(key) for key in reply[7]),
            )
        return Admission(
            refusal=_REFUSALS[refusal] if refusal else None,
            retry_after=_float(reply[1]),
            deployment_id=_optional_int(reply[2]),
            agent_probe=_flag(reply[3]),
            deployment_probe=_flag(reply[4]),
            transitions=_transitions(reply[5]),
            open_until=_open_until(reply[6]),
            budget_remaining=_remaining(reply[7]),
            record_id=_record_id(reply[8]) if len(reply) > 8 else None,
        )

    async def select(
        self,
        *,
        lease_id: str,
        lease_ttl_s: float,
        candidates: tuple[Candidate, ...],
        breaker: BreakerConfig,
    ) -> Selection:
        reply = await self._run(
            "select",
            {
                "lease_id": lease_id,
                "lease_ttl_s": lease_ttl_s,
                "candidates": _candidates(candidates),
                "cfg": _config(breaker),
            },
        )
        refusal = _text(reply[0])
        return Selection(
            deployment_id=_optional_int(reply[2]),
            probe=_flag(reply[3]),
            refusal=_REFUSALS[refusal] if refusal else None,
            retry_after=_float(reply[1]),
            transitions=_transitions(reply[4]),
            open_until=_open_until(reply[5]),
        )

    async def complete(self, completion: Completion) -> tuple[Transition, ...]:
        payload: dict[str, Any] = {
            "deployment_cfg": _config(completion.deployment_breaker),
            "entry_id": completion.entry_id,
            "budget_settlements": [
                {"key": key, "actual": actual} for key, actual in completion.budget_settlements
            ],
            "settlements": [
                {"key": key, "window_s": window_s, "cost": cost}
                for key, window_s, cost in completion.rate_settlements
            ],
        }
        attempt = completion.attempt
        if attempt is not None:
            payload["attempt"] = {
                "deployment_id": attempt.deployment_id,
                "key": f"deployment:{attempt.deployment_id}",
                "lease_id": attempt.lease_id,
                "outcome": int(attempt.outcome),
                "duration_s": attempt.duration_s,
                "probe": attempt.probe,
            }
        if (
            completion.agent_breaker_key is not None
            and completion.agent_breaker is not None
            and completion.agent_outcome is not None
        ):
            payload["agent"] = {
                "key": completion.agent_breaker_key,
                "cfg": _config(completion.agent_breaker),
                "outcome": int(completion.agent_outcome),
                "duration_s": completion.agent_duration_s,
                "probe": completion.agent_probe,
            }
        return _transitions(await self._run("complete", payload))

    async def release(
        self, *, lease_id: str, deployment_id: int, probe: bool, breaker: BreakerConfig
    ) -> None:
        await self._run(
            "release",
            {
                "lease_id": lease_id,
                "deployment_id": deployment_id,
                "key": f"deployment:{deployment_id}",
                "probe": probe,
                "cfg": _config(breaker),
            },
        )

    # --- primitives ---

    async def breaker_acquire(
        self, key: str, config: BreakerConfig
    ) -> tuple[bool, bool, float, tuple[Transition, ...]]:
        reply = await self._run("breaker_acquire", {"key": key, "cfg": _config(config)})
        return _flag(reply[0]), _flag(reply[1]), _float(reply[2]), _transitions(reply[3])

    async def breaker_record(
        self, key: str, config: BreakerConfig, outcome: Outcome, duration_s: float, probe: bool
    ) -> tuple[Transition, ...]:
        reply = await self._run(
            "breaker_record",
            {
                "key": key,
                "cfg": _config(config),
                "outcome": int(outcome),
                "duration_s": duration_s,
                "probe": probe,
            },
        )
        return _transitions(reply)

    async def breaker_snapshot(self, key: str, config: BreakerConfig) -> BreakerSnapshot:
        reply = await self._run("breaker_snapshot", {"key": key})
        open_until = _text(reply[5])
        return BreakerSnapshot(
            key=key,
            state=BreakerState(_text(reply[0])),
            consecutive_failures=int(_text(reply[1])),
            window_calls=int(_text(reply[2])),
            window_failures=int(_text(reply[3])),
            window_slow=int(_text(reply[4])),
            open_until=float(open_until) if open_until else None,
            probes_in_flight=int(_text(reply[6])),
        )

    async def breaker_command(self, key: str, action: BreakerAction) -> tuple[Transition, ...]:
        return _transitions(await self._run("breaker_command", {"key": key, "action": action}))

    async def rate_acquire(
        self, limits: tuple[RateLimit, ...], entry_id: str
    ) -> tuple[bool, float]:
        reply = await self._run("rate_acquire", {"entry_id": entry_id, "limits": _limits(limits)})
        return _flag(reply[0]), _float(reply[1])

    async def in_flight(self, deployment_ids: tuple[int, ...]) -> dict[int, int]:
        reply = await self._run("in_flight", {"deployment_ids": list(deployment_ids)})
        return {dep: int(count) for dep, count in zip(deployment_ids, reply, strict=True)}

    async def budget_reserve(
        self, holds: tuple[BudgetHold, ...], entry_id: str, ttl_s: float
    ) -> tuple[bool, dict[str, int]]:
        reply = await self._run(
            "budget_reserve", {"entry_id": entry_id, "ttl_s": ttl_s, "holds": _holds(holds)}
        )
        return _flag(reply[0]), _remaining(reply[1])

    async def budget_usage(self, keys: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        windows = await self.budget_windows(keys)
        return {key: (w.spent, w.reserved) for key, w in windows.items()}

    async def budget_windows(self, keys: tuple[str, ...]) -> dict[str, BudgetWindow]:
        if not keys:
            return {}
        reply = await self._run("budget_usage", {"keys": list(keys)})
        return {
            key: BudgetWindow(
                spent=int(_text(row[0])),
                reserved=int(_text(row[1])),
                refused=int(_text(row[2])),
                min_refused=int(_text(row[3])),
                ready=_flag(row[4]),
            )
            for key, row in zip(keys, reply, strict=True)
        }

    async def budget_prepare(self, windows: tuple[WindowInit, ...]) -> tuple[str, ...]:
        if not windows:
            return ()
        reply = await self._run(
            "budget_prepare",
            {
                "windows": [
                    {
                        "key": w.key,
                        "spent": w.spent,
                        "ttl_s": w.ttl_s,
                        "reservations": [list(r) for r in w.reservations],
                    }
                    for w in windows
                ]
            },
        )
        return tuple(_text(key) for key in reply)

    async def abandon(self, request: Abandon) -> dict[str, int]:
        if not request.lease_ids:
            return {}
        reply = await self._run(
            "abandon",
            {
                "lease_ids": list(request.lease_ids),
                "deployment_ids": list(request.deployment_ids),
                "budget_keys": list(request.budget_keys),
                "rate_keys": list(request.rate_keys),
                "charge": request.charge,
                "tombstone_ttl_s": request.tombstone_ttl_s,
            },
        )
        return _remaining(reply)
