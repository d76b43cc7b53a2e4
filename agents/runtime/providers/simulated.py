"""The ``simulated`` provider: in-process, deterministic for a seed, for demos and drills.

Latency is ``latency_ms`` +- uniform ``jitter_ms``; a call fails with probability
``error_rate`` (as an overloaded 503, the commonest real failure). Time passes on the injected
clock, so tests with a fake clock never sleep.

With tools declared, a call whose last message is not a tool result answers with one tool call
(the tool ``tool_choice`` forces, else the first; none with ``tool_choice`` ``none``), its
required parameters filled with sample values; after a tool result it answers with text. A
request without tools is answered exactly as before tools existed.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Mapping
from typing import Any

from agents.runtime.clock import Clock
from agents.runtime.errors import Capacity, Timeout
from agents.runtime.providers.base import OnToken, estimate_messages, estimate_tokens
from agents.runtime.types import ChatRequest, ChatResponse, Deployment, ToolCall, ToolSpec, Usage

_ANSWERS = (
    "Thanks for reaching out. Here is what I found: {topic}. Let me know if you need anything else.",
    "Short answer: {topic}. The details depend on your account, so check the settings page first.",
    "I looked into {topic}. Everything points to a configuration change; here are the steps.",
)


def _sample_arguments(schema: Mapping[str, Any], text: str) -> dict[str, Any]:
    """Plausible values for a tool's required parameters (the simulator has no model)."""
    samples: dict[str, Any] = {
        "string": text[:100] or "example",
        "number": 1,
        "integer": 1,
        "boolean": True,
        "array": [],
        "object": {},
    }
    properties = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for name in schema.get("required") or ():
        kind = (properties.get(name) or {}).get("type", "string")
        out[name] = samples.get(kind, "example")
    return out


def _tool_to_call(request: ChatRequest) -> ToolSpec | None:
    """The tool the simulator calls: with tools declared and the last message not a tool
    result, the forced one or else the first; none when ``tool_choice`` is ``none``."""
    if not request.tools or request.messages[-1].role == "tool":
        return None
    choice = request.tool_choice
    if choice is None:
        return request.tools[0]
    if choice.mode == "none":
        return None
    if choice.mode == "function":
        return next((t for t in request.tools if t.name == choice.name), request.tools[0])
    return request.tools[0]


class SimulatedProvider:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._rngs: dict[str, random.Random] = {}
        self._lock = threading.Lock()

    def _rng(self, name: str, simulation: Mapping[str, Any]) -> random.Random:
        with self._lock:
            rng = self._rngs.get(name)
            if rng is None:
                seed = simulation.get("seed")
                rng = self._rngs[name] = random.Random(seed)
            return rng

    async def chat(
        self,
        deployment: Deployment,
        request: ChatRequest,
        *,
        timeout_s: float,
        on_token: OnToken | None = None,
    ) -> ChatResponse:
        sim = deployment.provider.simulation
        rng = self._rng(deployment.provider.name, sim)
        with self._lock:
            latency = float(sim.get("latency_ms", 800)) + rng.uniform(-1, 1) * float(
                sim.get("jitter_ms", 0)
            )
            fails = rng.random() < float(sim.get("error_rate", 0))
            variant = rng.randrange(len(_ANSWERS))
        latency_s = max(0.0, latency) / 1000
        if latency_s > timeout_s:
            await self._clock.sleep(timeout_s)
            raise Timeout(f"no answer within {timeout_s:.3f}s (simulated)", phase="total")
        await self._clock.sleep(latency_s)
        input_tokens = estimate_messages(request.messages)
        if fails:
            raise Capacity("503 simulated overload", status=503, input_tokens=0)
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        tool = _tool_to_call(request)
        if tool is not None:
            arguments = json.dumps(_sample_arguments(tool.parameters, last_user))
            # The id depends on the call and the turn only (not the random stream), so a
            # conversation replays identically whatever ran before it.
            digest = hashlib.sha256(
                f"{len(request.messages)}:{tool.name}:{arguments}".encode()
            ).hexdigest()
            call = ToolCall(f"call_sim{digest[:20]}", tool.name, arguments)
            return ChatResponse("", (call,), Usage(input_tokens, 12), "tool_calls")
        topic = " ".join(last_user.split()[:8]) or "your question"
        words = _ANSWERS[variant].format(topic=topic).split(" ")
        words = words[: max(1, request.max_tokens)]
        text = " ".join(words)
        if on_token is not None:
            for index, word in enumerate(words):
                await on_token(word if index == 0 else " " + word)
        finish = "length" if len(words) >= request.max_tokens else "stop"
        return ChatResponse(text, (), Usage(input_tokens, estimate_tokens(text)), finish)
