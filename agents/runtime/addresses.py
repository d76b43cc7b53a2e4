"""Which IP addresses an outbound call may reach: one judgement, two policies.

- Webhook tools (:func:`address_refusal`): public unicast addresses only. A tool's URL comes
  from an agent's config and its arguments from a model, so anything internal is refused.
- Providers (:func:`metadata_refusal`): anything but the cloud metadata services. fakellm and
  in-cluster providers live on loopback and private addresses; the metadata endpoints
  (169.254.169.254 and the rest of 169.254.0.0/16, IPv6 link-local fe80::/10, AWS's
  fd00:ec2::254) hand out the machine's credentials to whoever asks, so a ``base_url`` pointing
  there (typed, or a name that resolves there) is refused unless its host is allowed.

Both see through IPv6 forms that carry an IPv4 address (mapped, 6to4, Teredo, NAT64): the
packets go to that IPv4 address.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Outside the link-local ranges (fd00::/8 is private, and stays allowed): AWS's IPv6 IMDS.
_METADATA = frozenset({ipaddress.IPv6Address("fd00:ec2::254")})


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside a 6to4, Teredo or NAT64 address (mapped ones: ``ipv4_mapped``)."""
    embedded = address.sixtofour
    if embedded is None and address.teredo is not None:
        embedded = address.teredo[1]
    if embedded is None and address in _NAT64:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return embedded


def address_refusal(address: IPAddress) -> str | None:
    """Why a webhook may not connect to ``address`` (None: it is a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # the socket talks to that IPv4 address
            reason = address_refusal(address.ipv4_mapped)
            return None if reason is None else f"{reason} (embedded in {address})"
        embedded = embedded_ipv4(address)
        if embedded is not None:
            reason = address_refusal(embedded)
            if reason is not None:
                return f"{reason} (embedded in {address})"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def metadata_refusal(address: IPAddress) -> str | None:
    """Why a provider may not connect to ``address`` (None: anything else, loopback and private
    included)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _METADATA:
            return "a cloud metadata address"
        embedded = address.ipv4_mapped or embedded_ipv4(address)
        if embedded is not None:
            reason = metadata_refusal(embedded)
            if reason is not None:
                return f"{reason} (it carries {embedded})"
    if address.is_link_local:
        return "link-local, where cloud metadata services live"
    return None


def normal_host(host: str) -> str:
    """A host name or address as allow-lists compare it."""
    return host.strip().strip("[]").rstrip(".").lower()


def literal_address(host: str) -> IPAddress | None:
    """``host`` as the IP address a connection to it reaches without DNS, or None for a name.

    Besides the standard forms this reads the legacy IPv4 spellings that ``getaddrinfo``
    accepts without asking DNS (``2852039166``, ``0xa9.0xfe.0xa9.0xfe``, ``169.254.43518``), so
    they cannot slip past a check of the dotted form."""
    host = normal_host(host)
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host or not all(c in "0123456789abcdefx." for c in host) or ".." in host:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def provider_host_refusal(host: str, allow_hosts: Iterable[str]) -> str | None:
    """Why a provider ``base_url`` with ``host`` is refused at config time (a literal address
    only: a name is checked when it is resolved, by :class:`MetadataGuardResolver`)."""
    if normal_host(host) in {normal_host(h) for h in allow_hosts}:
        return None
    address = literal_address(host)
    reason = None if address is None else metadata_refusal(address)
    if reason is None:
        return None
    return f"{address} is {reason}"


class MetadataGuardResolver(AbstractResolver):
    """aiohttp's resolver, refusing names that resolve to a metadata address.

    The connector caches what this returns (``ttl_dns_cache``) and pooled connections skip it,
    so the check runs once per DNS lookup, not per request. A refusal is an ``OSError``, which
    aiohttp reports as ``ClientConnectorDNSError`` (a transport failure of the call). Literal
    addresses never reach a resolver: they are checked when the config is written."""

    def __init__(
        self, allow_hosts: Iterable[str] = (), inner: AbstractResolver | None = None
    ) -> None:
        self._allow = frozenset(normal_host(h) for h in allow_hosts)
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if normal_host(host) in self._allow:
            return found
        for result in found:
            text = result["host"]
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise OSError(
                    errno.EINVAL, f"{host!r} resolved to {text!r}, not an IP address"
                ) from None
            reason = metadata_refusal(address)
            if reason is not None:
                # With errno and strerror, aiohttp's message carries the reason.
                raise OSError(
                    errno.EACCES,
                    f"{host!r} resolves to {address} ({reason}); refused for providers unless "
                    "the host is in BREAKWATER_PROVIDER_ALLOW_HOSTS",
                )
        return found

    async def close(self) -> None:
        await self._inner.close()


def guard_resolver_factory(allow_hosts: Iterable[str]) -> Callable[[], AbstractResolver]:
    """A factory of :class:`MetadataGuardResolver` (a resolver is built inside the loop that
    uses it, as aiohttp's default one must be)."""
    allowed = tuple(allow_hosts)
    return lambda: MetadataGuardResolver(allowed)


__all__ = [
    "IPAddress",
    "MetadataGuardResolver",
    "address_refusal",
    "embedded_ipv4",
    "guard_resolver_factory",
    "literal_address",
    "metadata_refusal",
    "normal_host",
    "provider_host_refusal",
]
