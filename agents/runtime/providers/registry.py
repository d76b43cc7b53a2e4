"""Dispatch a call to the client for the deployment's provider kind."""

from __future__ import annotations

from agents.runtime.clock import Clock
from agents.runtime.providers.anthropic import AnthropicProvider
from agents.runtime.providers.base import HttpSession, OnToken, ProviderClient
from agents.runtime.providers.openai import OpenAIProvider
from agents.runtime.providers.simulated import SimulatedProvider
from agents.runtime.types import ChatRequest, ChatResponse, Deployment


class ProviderRouter:
    """A :class:`ProviderClient` that sends each call to the right wire format."""

    def __init__(self, *, clock: Clock, http: HttpSession | None = None) -> None:
        self.http = http or HttpSession()
        self._clients: dict[str, ProviderClient] = {
            "openai": OpenAIProvider(self.http),
            "anthropic": AnthropicProvider(self.http),
            "simulated": SimulatedProvider(clock),
        }

    async def chat(
        self,
        deployment: Deployment,
        request: ChatRequest,
        *,
        timeout_s: float,
        on_token: OnToken | None = None,
    ) -> ChatResponse:
        client = self._clients[deployment.provider.kind]
        return await client.chat(deployment, request, timeout_s=timeout_s, on_token=on_token)

    async def close(self) -> None:
        await self.http.close()
