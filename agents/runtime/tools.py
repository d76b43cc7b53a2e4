"""The tool runner: one tool call, bounded, refused or failed with a typed :class:`ToolFailed`.

Two kinds of tool:

- ``python``: a ``module:callable`` that must be in the allow-list from settings. The list is
  checked again on every call (configuration may have been written against another allow-list).
  Async callables are awaited; sync ones run in a thread of the runner's own small pool, so a
  runaway tool can neither block the event loop nor starve the loop's default executor (which
  ``getaddrinfo`` needs). A sync tool that overruns its time is abandoned: Python cannot kill a
  thread, so it keeps its pool slot until it returns.
- ``webhook``: an HTTP(S) POST of the arguments as JSON. Server-side request forgery is refused
  before any connection: the host is resolved once, *every* address is checked (private,
  loopback, link-local, multicast, reserved, unspecified, not globally routable, including IPv4
  addresses embedded in IPv6 ones), and the request then goes to that validated address with the
  original ``Host`` header (and, for HTTPS, SNI and certificate checks against the original name),
  so a second DNS answer cannot rebind the host to an internal address. Redirects are not
  followed, the body is read only up to ``max_response_bytes``, and the whole call is bounded by
  the timeout. Hosts in ``webhook_allow_hosts`` skip the address check (not the pinning).

Every failure is a :class:`ToolFailed`, whose policy lives in the one error table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from agents.runtime.addresses import IPAddress, address_refusal
from agents.runtime.addresses import normal_host as _normal_host
from agents.runtime.clock import Clock, SystemClock
from agents.runtime.errors import ToolFailed
from agents.runtime.providers.base import HttpSession
from agents.runtime.schemas import arguments_error, json_type
from agents.runtime.types import Message, ToolCall, ToolChoice, ToolSpec

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> IP address strings``; raises ``OSError`` when the name does not resolve."""

SessionFactory = Callable[[], aiohttp.ClientSession]

USER_AGENT = "Breakwater-Tools/1"
_DETAIL_CHARS = 300


async def system_resolver(host: str, port: int) -> list[str]:
    """The event loop's ``getaddrinfo``, reduced to distinct addresses in the order given."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


# --- pure helpers ----------------------------------------------------------------------------


def tool_messages(
    calls: Sequence[ToolCall], results: Sequence[str], *, content: str = ""
) -> tuple[Message, ...]:
    """The assistant turn that asked for ``calls`` followed by one ``tool`` message per result,
    in the same order (what OpenAI and Anthropic both expect on the next request)."""
    if len(calls) != len(results):
        raise ValueError(f"{len(calls)} tool calls but {len(results)} results")
    assistant = Message("assistant", content, tool_calls=tuple(calls))
    answers = tuple(
        Message("tool", result, tool_call_id=call.id, name=call.name)
        for call, result in zip(calls, results, strict=True)
    )
    return (assistant, *answers)


def client_calls(
    agent_tools: Sequence[ToolSpec], calls: Sequence[ToolCall]
) -> tuple[ToolCall, ...]:
    """The calls that go back to the caller: every call not named after one of the agent's own
    tools (so an unknown name is the caller's to handle, as with any OpenAI-compatible API).

    Only meaningful when the request offered client tools; without them every call is the
    agent's (and an unknown name is a tool failure)."""
    if not agent_tools:
        return tuple(calls)
    own = {spec.name for spec in agent_tools}
    return tuple(call for call in calls if call.name not in own)


def effective_tool_choice(choice: ToolChoice | None, tool_rounds: int) -> ToolChoice | None:
    """The caller's ``tool_choice`` for the next provider call: ``required`` and a forced
    function hold only until the first server-side tool round (then the model decides, or it
    would be forced into another round until the step cap)."""
    if choice is None or tool_rounds == 0 or choice.mode in ("auto", "none"):
        return choice
    return None


def find_tool(tools: Sequence[ToolSpec], name: str) -> ToolSpec:
    for spec in tools:
        if spec.name == name:
            return spec
    raise ToolFailed(f"unknown tool {name!r}")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_arguments(text: str) -> dict[str, Any]:
    """A tool call's arguments: a JSON object (empty text means no arguments)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ToolFailed(f"arguments are not valid JSON: {exc}"[:_DETAIL_CHARS]) from None
    if not isinstance(value, dict):
        raise ToolFailed(f"arguments must be a JSON object, not {json_type(value)}")
    return value


def _text(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ToolFailed(f"returned a value that is not JSON-serialisable: {exc}") from None


@dataclass(frozen=True)
class _Target:
    url: URL
    host: str  # as written in the URL (lowercase, no brackets)
    addresses: tuple[str, ...]  # validated, in resolver order

    def url_for(self, address: str) -> URL:
        return self.url.with_host(address)


# --- the runner --------------------------------------------------------------------------------


class ToolRunner:
    def __init__(
        self,
        *,
        python_allow_list: frozenset[str],
        webhook_allow_hosts: frozenset[str] = frozenset(),
        http: HttpSession | SessionFactory | None = None,
        resolver: Resolver | None = None,
        clock: Clock | None = None,
        max_threads: int = 8,
    ) -> None:
        self._allow_list = python_allow_list
        self._allow_hosts = frozenset(_normal_host(h) for h in webhook_allow_hosts)
        self._owned_http: HttpSession | None = None
        if http is None:
            http = self._owned_http = HttpSession()
        self._session: SessionFactory = http.get if isinstance(http, HttpSession) else http
        self._resolver: Resolver = resolver or system_resolver
        self._clock: Clock = clock or SystemClock()
        self._max_threads = max_threads
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._callables: dict[str, Callable[..., Any]] = {}

    async def close(self) -> None:
        """Release the thread pool (abandoned tools keep running to their end) and the HTTP
        session if the runner made its own."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        if self._owned_http is not None:
            await self._owned_http.close()

    async def run_named(
        self, tools: Sequence[ToolSpec], call: ToolCall, *, timeout_s: float
    ) -> str:
        """Find the agent's tool called ``call.name`` and run it (unknown names fail)."""
        return await self.run(find_tool(tools, call.name), call, timeout_s=timeout_s)

    async def run(self, spec: ToolSpec, call: ToolCall, *, timeout_s: float) -> str:
        """Run one call and return its text result, or raise :class:`ToolFailed`.

        ``timeout_s`` is what is left of the execution; the call gets the smaller of that and
        the tool's own ``timeout_s``.
        """
        if call.name != spec.name:
            raise ToolFailed(f"unknown tool {call.name!r}")
        limit = min(spec.timeout_s, timeout_s)
        if limit <= 0:
            raise ToolFailed(f"tool {spec.name!r} not started: the execution deadline has passed")
        arguments = parse_arguments(call.arguments)
        error = arguments_error(arguments, spec.parameters)
        if error is not None:
            raise ToolFailed(f"tool {spec.name!r}: invalid arguments: {error}"[:_DETAIL_CHARS])
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(limit):
                if spec.kind == "python":
                    text = await self._python(spec, arguments)
                elif spec.kind == "webhook":
                    text = await self._webhook(spec, call, arguments)
                else:
                    raise ToolFailed(f"tool {spec.name!r} has unknown kind {spec.kind!r}")
        except TimeoutError:
            whose = "its timeout_s" if spec.timeout_s <= timeout_s else "the execution deadline"
            elapsed = self._clock.monotonic() - started
            abandoned = (
                "; its thread was abandoned and may still be running"
                if spec.kind == "python" and not self._is_async(spec)
                else ""
            )
            raise ToolFailed(
                f"tool {spec.name!r} timed out after {elapsed:.2f}s "
                f"(limit {limit:.2f}s from {whose}){abandoned}"
            ) from None
        size = len(text.encode())
        if spec.kind == "python" and size > spec.max_response_bytes:
            raise ToolFailed(
                f"tool {spec.name!r} returned {size} bytes, more than its "
                f"max_response_bytes ({spec.max_response_bytes})"
            )
        return text

    # --- python ------------------------------------------------------------------------------

    def _load(self, spec: ToolSpec) -> Callable[..., Any]:
        function = spec.function or ""
        if function not in self._allow_list:
            raise ToolFailed(
                f"tool {spec.name!r}: python function {function!r} is not in the allow-list"
            )
        cached = self._callables.get(function)
        if cached is not None:
            return cached
        module_name, _, attribute = function.partition(":")
        if not module_name or not attribute:
            raise ToolFailed(f"tool {spec.name!r}: function must be 'module:callable'")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ToolFailed(
                f"tool {spec.name!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"[
                    :_DETAIL_CHARS
                ]
            ) from None
        target: object = getattr(module, attribute, None)
        if target is None or not callable(target):
            raise ToolFailed(f"tool {spec.name!r}: {function!r} is not a callable")
        self._callables[function] = target
        return target

    def _is_async(self, spec: ToolSpec) -> bool:
        target = self._callables.get(spec.function or "")
        return target is not None and _is_coroutine_function(target)

    async def _python(self, spec: ToolSpec, arguments: dict[str, Any]) -> str:
        target = self._load(spec)
        try:
            if _is_coroutine_function(target):
                result = await target(**arguments)
            else:
                if self._threads is None:
                    self._threads = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self._max_threads, thread_name_prefix="breakwater-tool"
                    )
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    self._threads, functools.partial(target, **arguments)
                )
                if inspect.isawaitable(result):
                    result = await result
        except ToolFailed:
            raise
        except (Exception, SystemExit) as exc:
            # TimeoutError raised *by the tool* is its own failure, not our deadline: the
            # deadline arrives as a cancellation, which is not caught here.
            raise ToolFailed(
                f"tool {spec.name!r} raised {type(exc).__name__}: {exc}"[:_DETAIL_CHARS]
            ) from None
        try:
            return _text(result)
        except ToolFailed as failure:
            raise ToolFailed(f"tool {spec.name!r} {failure.message}") from None

    # --- webhooks ----------------------------------------------------------------------------

    async def resolve(self, spec: ToolSpec) -> _Target:
        """Parse, resolve and vet a webhook URL. Raises :class:`ToolFailed`; sends nothing."""
        try:
            url = URL(spec.url or "")
            scheme, host, port = url.scheme.lower(), url.host, url.port
        except ValueError as exc:
            raise ToolFailed(f"tool {spec.name!r}: bad webhook URL: {exc}") from None
        if scheme not in ("http", "https"):
            raise ToolFailed(
                f"tool {spec.name!r}: webhook scheme {scheme or '(none)'!r} is not allowed "
                "(http or https only)"
            )
        if not host or port is None:
            raise ToolFailed(f"tool {spec.name!r}: webhook URL has no host")
        host = host.lower()
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            found: Sequence[str] = (host,)
        else:
            try:
                found = await self._resolver(host, port)
            except (OSError, UnicodeError) as exc:
                raise ToolFailed(
                    f"tool {spec.name!r}: cannot resolve webhook host {host!r}: {exc}"
                ) from None
        if not found:
            raise ToolFailed(f"tool {spec.name!r}: webhook host {host!r} resolved to nothing")
        allowed = _normal_host(host) in self._allow_hosts
        addresses: list[str] = []
        for text in found:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise ToolFailed(
                    f"tool {spec.name!r}: webhook host {host!r} resolved to {text!r}, "
                    "which is not an IP address"
                ) from None
            reason = None if allowed else address_refusal(address)
            if reason is not None:
                raise ToolFailed(
                    f"tool {spec.name!r}: webhook host {host!r} resolves to {address} "
                    f"({reason}); refused unless the host is in the webhook allow-list"
                )
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if str(address) not in addresses:
                addresses.append(str(address))
        return _Target(url=url, host=host, addresses=tuple(addresses))

    async def _webhook(self, spec: ToolSpec, call: ToolCall, arguments: dict[str, Any]) -> str:
        target = await self.resolve(spec)
        headers = {
            "Host": target.url.host_port_subcomponent or target.host,
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",  # a compressed body would dodge the size limit
            "User-Agent": USER_AGENT,
            "X-Breakwater-Tool": spec.name,
            "X-Breakwater-Tool-Call-Id": call.id,
        }
        body = json.dumps(arguments).encode()
        https = target.url.scheme.lower() == "https"
        server_hostname = target.host.rstrip(".") if https else None
        if server_hostname is not None and _is_ip(server_hostname):
            server_hostname = None  # an IP literal URL: no SNI, the certificate names the IP
        session = self._session()
        failures: list[str] = []
        for address in target.addresses:
            try:
                async with session.post(
                    target.url_for(address),
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    server_hostname=server_hostname,
                ) as response:
                    return await self._read(spec, response)
            except aiohttp.ClientConnectorError as exc:
                # Nothing was sent: the next validated address may answer.
                failures.append(f"{address}: {exc.os_error or exc}")
            except aiohttp.ClientError as exc:
                raise ToolFailed(
                    f"tool {spec.name!r}: webhook transport error: {type(exc).__name__}: {exc}"[
                        :_DETAIL_CHARS
                    ]
                ) from None
        raise ToolFailed(
            f"tool {spec.name!r}: cannot connect to webhook: {'; '.join(failures)}"[:_DETAIL_CHARS]
        )

    async def _read(self, spec: ToolSpec, response: aiohttp.ClientResponse) -> str:
        status = response.status
        if 300 <= status < 400:
            location = response.headers.get("Location", "")
            raise ToolFailed(
                f"tool {spec.name!r}: webhook answered a redirect (HTTP {status} to "
                f"{location[:100]!r}); redirects are not followed",
                status=status,
            )
        limit = spec.max_response_bytes
        if not 200 <= status < 300:
            snippet = (await response.content.read(200)).decode("utf-8", "replace")
            raise ToolFailed(
                f"tool {spec.name!r}: webhook answered HTTP {status}: {snippet}"[:_DETAIL_CHARS],
                status=status,
            )
        declared = response.content_length
        if declared is not None and declared > limit:
            raise ToolFailed(
                f"tool {spec.name!r}: webhook response of {declared} bytes exceeds "
                f"max_response_bytes ({limit})",
                status=status,
            )
        body = bytearray()
        while len(body) <= limit:
            chunk = await response.content.read(limit + 1 - len(body))
            if not chunk:
                break
            body.extend(chunk)
        if len(body) > limit:
            raise ToolFailed(
                f"tool {spec.name!r}: webhook response exceeds max_response_bytes ({limit}); "
                "stopped reading",
                status=status,
            )
        try:
            return body.decode(response.charset or "utf-8", "replace")
        except LookupError:  # a charset Python does not know
            return body.decode("utf-8", "replace")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_coroutine_function(target: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


__all__ = [
    "Resolver",
    "SessionFactory",
    "ToolRunner",
    "address_refusal",
    "client_calls",
    "effective_tool_choice",
    "find_tool",
    "parse_arguments",
    "system_resolver",
    "tool_messages",
]
