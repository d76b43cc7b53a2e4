"""Where providers may connect: anywhere but a cloud metadata address, unless allowed.

Literal addresses are judged without the network; names through the system resolver (a legacy
numeric spelling such as ``2852039166`` is a name to aiohttp, and ``getaddrinfo`` turns it into
169.254.169.254 without asking DNS, so the real resolver is exercised offline)."""

from __future__ import annotations

import ipaddress
import socket
from decimal import Decimal

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from agents.runtime.addresses import (
    MetadataGuardResolver,
    literal_address,
    metadata_refusal,
    provider_host_refusal,
)
from agents.runtime.clock import SystemClock
from agents.runtime.errors import ProviderError
from agents.runtime.providers.base import HttpSession
from agents.runtime.providers.registry import ProviderRouter
from agents.runtime.types import ChatRequest, Deployment, Message, ProviderConfig


@pytest.mark.parametrize(
    "text",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64
        "2002:a9fe:a9fe::1",  # 6to4
    ],
)
def test_metadata_and_link_local_addresses_are_refused(text: str) -> None:
    assert metadata_refusal(ipaddress.ip_address(text)) is not None


@pytest.mark.parametrize(
    "text", ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.9", "192.168.0.1", "fd00::1", "8.8.8.8"]
)
def test_loopback_private_and_public_addresses_are_allowed(text: str) -> None:
    assert metadata_refusal(ipaddress.ip_address(text)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("169.254.169.254", "169.254.169.254"),
        ("[fd00:ec2::254]", "fd00:ec2::254"),
        ("2852039166", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),
        ("api.openai.com", None),
        ("cafe", None),
        ("dead.beef", None),
        ("", None),
    ],
)
def test_a_literal_address_is_read_in_every_spelling_getaddrinfo_takes(
    host: str, address: str | None
) -> None:
    found = literal_address(host)
    assert (None if found is None else str(found)) == address


def test_the_allow_list_lets_a_host_through_whatever_its_case() -> None:
    assert provider_host_refusal("169.254.10.1", ()) is not None
    assert provider_host_refusal("169.254.10.1", ("169.254.10.1",)) is None
    assert provider_host_refusal("[FD00:EC2::254]", ("fd00:ec2::254",)) is None


async def test_a_name_resolving_to_a_metadata_address_is_refused_by_the_resolver() -> None:
    resolver = MetadataGuardResolver()
    with pytest.raises(OSError, match=r"resolves to 169\.254\.169\.254 .*PROVIDER_ALLOW_HOSTS"):
        await resolver.resolve("2852039166", 80)
    assert [r["host"] for r in await resolver.resolve("localhost", 80)] in (
        ["127.0.0.1"],
        ["::1"],
        ["127.0.0.1", "::1"],
        ["::1", "127.0.0.1"],
    )
    await resolver.close()


async def test_an_allowed_name_resolves_to_whatever_it_names() -> None:
    resolver = MetadataGuardResolver(allow_hosts=["2852039166"])
    assert [r["host"] for r in await resolver.resolve("2852039166", 80)] == ["169.254.169.254"]
    await resolver.close()


def _deployment(base_url: str) -> Deployment:
    return Deployment(
        id=1,
        model="m",
        provider=ProviderConfig("p", "openai", base_url, "sk-test"),
        upstream_model="gpt-4o-mini",
        input_usd_per_mtok=Decimal(1),
        output_usd_per_mtok=Decimal(1),
        max_concurrency=10,
        weight=1,
    )


REQUEST = ChatRequest(model="gpt-4o-mini", messages=(Message("user", "hi"),), max_tokens=5)


@pytest.mark.parametrize("base_url", ["http://169.254.169.254/v1", "http://2852039166/v1"])
async def test_the_provider_router_refuses_a_literal_metadata_base_url(base_url: str) -> None:
    """A row written around config validation (SQL, or stored before it existed)."""
    router = ProviderRouter(clock=SystemClock())
    try:
        with pytest.raises(ProviderError) as caught:
            await router.chat(_deployment(base_url), REQUEST, timeout_s=5)
    finally:
        await router.close()
    assert f"base_url {base_url}: 169.254.169.254 is link-local" in str(caught.value)
    assert "BREAKWATER_PROVIDER_ALLOW_HOSTS" in str(caught.value)


class Zone(AbstractResolver):
    """Names this test decides (DNS itself cannot be pointed at a metadata address here)."""

    def __init__(self, names: dict[str, str]) -> None:
        self._names = names

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self._names[host]
        return [
            ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)
        ]

    async def close(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_providers_http_session_refuses_a_name_that_resolves_there() -> None:
    """A name goes through the session's resolver: the guard refuses it before connecting;
    one resolving to loopback gets through to the connection."""
    zone = {"metadata.test": "169.254.169.254", "local.test": "127.0.0.1"}
    http = HttpSession(resolver=lambda: MetadataGuardResolver(inner=Zone(zone)))
    port = _free_port()  # nothing listens: getting as far as "connection refused" is the point
    try:
        session = http.get()
        with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
            await session.get("http://metadata.test/latest/meta-data/")
        assert "resolves to 169.254.169.254" in str(caught.value)
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await session.get(f"http://local.test:{port}/v1/models")
        assert not isinstance(refused.value, aiohttp.ClientConnectorDNSError)
    finally:
        await http.close()
