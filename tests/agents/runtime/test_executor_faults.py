"""Nothing leaks after admission: whatever raises at any step of the pipeline once a lease and
reservations are held, they are given back (issue: 50 requests with a lone surrogate left 50
leases and $2.00 reserved for timeout + 30 s, and starved every other agent)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest

from agents.runtime.budgets import holds_for
from agents.runtime.errors import Capacity
from agents.runtime.state import StateUnavailable
from agents.runtime.tools import ToolRunner
from agents.runtime.types import (
    BudgetRule,
    ChatResponse,
    ExecutionRequest,
    ExecutionStatus,
    Message,
    ToolCall,
    ToolSpec,
    Usage,
)
from tests.agents.runtime.support import Harness, agent, harness

RULE = BudgetRule(id=1, scope="global", target="*", window="daily", limit_usd=Decimal("1"))


class Boom(Exception):
    """A fault the pipeline does not expect (a bug, an encoding error, a broken adapter)."""


def rig(**agent_overrides: Any) -> Harness:
    h = harness(agents=[agent(**agent_overrides)])
    h.config.rules = (RULE,)
    return h


def fail_once(obj: Any, name: str, exc: BaseException) -> None:
    """Make ``obj.name`` raise ``exc`` on its next call, then behave again."""
    original = getattr(obj, name)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        setattr(obj, name, original)
        raise exc

    setattr(obj, name, broken)


def today(h: Harness) -> str:
    return holds_for((RULE,), h.clock.now(), 0)[0].key


async def held(h: Harness) -> tuple[dict[int, int], int]:
    """Leases in flight per deployment, and micro-USD reserved on today's window."""
    leases = await h.state.inner.in_flight((1, 2))
    ((_, reserved),) = (await h.state.inner.budget_usage((today(h),))).values()
    return leases, reserved


async def run(h: Harness, **request: Any) -> Any:
    return await h.executor.execute(
        ExecutionRequest(
            agent="support",
            messages=(Message("user", "hello"),),
            execution_id=str(uuid.uuid4()),
            **request,
        )
    )


@pytest.mark.parametrize("exc", [Boom("encode"), TypeError("str is not valid UTF-8")])
async def test_a_provider_call_that_raises_something_unexpected_gives_everything_back(
    exc: BaseException,
) -> None:
    h = rig()
    fail_once(h.provider, "chat", exc)
    with pytest.raises(type(exc)):
        await run(h)
    assert await held(h) == ({1: 0, 2: 0}, 0)
    (result,) = h.records.results
    assert (result.status, result.error and result.error["type"]) == (
        ExecutionStatus.FAILED,
        "internal_error",
    )


async def test_a_started_journal_write_that_fails_after_admission_gives_everything_back() -> None:
    h = rig()
    fail_once(h.records, "started", Boom("disk"))
    with pytest.raises(Boom):
        await run(h)
    assert await held(h) == ({1: 0, 2: 0}, 0)
    assert h.provider.calls == []  # nothing went upstream that was not recorded


async def test_a_failing_report_between_attempts_gives_everything_back() -> None:
    h = rig()
    h.provider.scripts["primary"] = [Capacity("busy", status=503)]
    fail_once(h.state.inner, "complete", Boom("state"))  # the report of the failed attempt
    with pytest.raises(Boom):
        await run(h)
    # the attempt's report failed, so its lease expires by itself; everything else came back
    _, reserved = await held(h)
    assert reserved == 0


async def test_a_failing_selection_for_a_retry_gives_everything_back() -> None:
    h = rig()
    h.provider.scripts["primary"] = [Capacity("busy", status=503)]
    fail_once(h.state.inner, "select", Boom("state"))
    with pytest.raises(Boom):
        await run(h)
    assert await held(h) == ({1: 0, 2: 0}, 0)


async def test_a_failing_top_up_gives_everything_back() -> None:
    h = rig()
    # a failure that cost tokens: the retry needs a top-up on top of what is spent
    h.provider.scripts["primary"] = [Capacity("busy", status=503, input_tokens=100)]
    fail_once(h.state.inner, "budget_reserve", Boom("state"))
    with pytest.raises(Boom):
        await run(h)
    assert await held(h) == ({1: 0, 2: 0}, 0)


async def test_a_backoff_interrupted_by_a_fault_gives_everything_back() -> None:
    h = rig()
    h.provider.scripts["primary"] = [Capacity("busy", status=503)]
    fail_once(h.clock, "sleep", Boom("loop"))
    with pytest.raises(Boom):
        await run(h)
    assert await held(h) == ({1: 0, 2: 0}, 0)


async def test_a_tool_runner_that_raises_something_unexpected_gives_everything_back() -> None:
    tool = ToolSpec(name="lookup", kind="python", description="", parameters={"type": "object"})
    h = rig(tools=(tool,))

    class Exploding(ToolRunner):
        def __init__(self) -> None:
            pass

        async def run_named(self, *args: Any, **kwargs: Any) -> Any:
            raise Boom("tool")

    h.executor._attempts.tools = Exploding()
    call = ToolCall(id="c1", name="lookup", arguments="{}")
    h.provider.scripts["primary"] = [ChatResponse("", (call,), Usage(10, 5), "tool_calls")]
    with pytest.raises(Boom):
        await run(h)
    assert await held(h) == ({1: 0, 2: 0}, 0)
    (result,) = h.records.results
    assert result.cost_usd > 0  # the provider's answer before the tool is charged


async def test_a_finished_journal_write_that_fails_still_answers_and_settles() -> None:
    h = rig()
    fail_once(h.records, "finished", Boom("disk"))
    result = await run(h)
    assert result.status == ExecutionStatus.SUCCEEDED
    assert await held(h) == ({1: 0, 2: 0}, 0)


async def test_a_session_append_that_fails_still_answers() -> None:
    h = rig()

    class Sessions:
        async def history(
            self, agent: str, session_id: str, *, api_key_id: int | None
        ) -> tuple[Message, ...]:
            return ()

        async def append(
            self, agent: str, session_id: str, messages: Any, *, api_key_id: int | None
        ) -> None:
            raise Boom("sessions")

    h.executor._sessions = Sessions()
    result = await run(h, session_id="s1")
    assert result.status == ExecutionStatus.SUCCEEDED
    assert await held(h) == ({1: 0, 2: 0}, 0)


async def test_a_settlement_the_state_did_not_take_is_sent_again_until_it_does() -> None:
    h = rig()
    fail_once(h.state.inner, "complete", StateUnavailable("stalled"))  # the final settlement
    result = await run(h)
    assert result.status == ExecutionStatus.SUCCEEDED  # the caller paid; the answer stands
    await h.executor.drain_cache_writes()  # the retry, sent in the background
    assert h.state.counts["complete"] == 2
    leases, reserved = await held(h)
    assert (leases, reserved) == ({1: 0, 2: 0}, 0)
    # settled once, at the actual cost
    assert await h.state.inner.budget_usage((today(h),)) == {today(h): (20, 0)}


async def test_a_cancel_during_the_finish_does_not_lose_the_record() -> None:
    """A client that disconnects as the execution completes cancels its task: the settlement
    and the "finished" journal write still happen (39 of 3,000 were lost before)."""
    h = rig()
    entered, release = asyncio.Event(), asyncio.Event()
    original = h.records.finished

    async def slow_finished(result: Any) -> None:
        entered.set()
        await release.wait()
        await original(result)

    h.records.finished = slow_finished  # type: ignore[method-assign]
    task = asyncio.ensure_future(run(h))
    await entered.wait()
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(5):
        await asyncio.sleep(0)
    (result,) = h.records.results
    assert result.status == ExecutionStatus.SUCCEEDED
    assert await held(h) == ({1: 0, 2: 0}, 0)
