"""Dispatch a call to the client for the deployment's provider kind."""

from __future__ import annotations

from collections.abc import Iterable

from yarl import URL

from agents.runtime.addresses import guard_resolver_factory, provider_host_refusal
from agents.runtime.clock import Clock
from agents.runtime.errors import ProviderError
from agents.runtime.providers.anthropic import AnthropicProvider
from agents.runtime.providers.base import HttpSession, OnToken, ProviderClient
from agents.runtime.providers.openai import OpenAIProvider
from agents.runtime.providers.simulated import SimulatedProvider
from agents.runtime.types import ChatRequest, ChatResponse, Deployment


class ProviderRouter:
    """A :class:`ProviderClient` that sends each call to the right wire format.

    No call reaches a cloud metadata address (agents/runtime/addresses.py) unless its host is in
    ``allow_hosts``: a ``base_url`` naming one literally is refused here (config validation
    refuses it too; this covers rows written around it), a name resolving to one by the
    session's resolver."""

    def __init__(
        self, *, clock: Clock, http: HttpSession | None = None, allow_hosts: Iterable[str] = ()
    ) -> None:
        self._allow_hosts = tuple(allow_hosts)
        self.http = http or HttpSession(resolver=guard_resolver_factory(self._allow_hosts))
        self._clients: dict[str, ProviderClient] = {
            "openai": OpenAIProvider(self.http),
            "anthropic": AnthropicProvider(self.http),
            "simulated": SimulatedProvider(clock),
        }
        self._refusals: dict[str, str | None] = {}  # base_url -> why refused; a few entries

    async def chat(
        self,
        deployment: Deployment,
        request: ChatRequest,
        *,
        timeout_s: float,
        on_token: OnToken | None = None,
    ) -> ChatResponse:
        provider = deployment.provider
        if provider.kind != "simulated":
            url = provider.base_url
            try:
                refusal = self._refusals[url]
            except KeyError:
                refusal = self._refusals[url] = provider_host_refusal(
                    URL(url).host or "", self._allow_hosts
                )
            if refusal is not None:
                raise ProviderError(
                    f"base_url {url}: {refusal}; refused unless the host is in "
                    "BREAKWATER_PROVIDER_ALLOW_HOSTS"
                )
        client = self._clients[provider.kind]
        return await client.chat(deployment, request, timeout_s=timeout_s, on_token=on_token)

    async def close(self) -> None:
        await self.http.close()
