"""The tool runner: allow-listed Python callables and SSRF-safe webhooks.

Webhooks are exercised against an aiohttp server on 127.0.0.1 (allow-listed where a connection
is meant to happen). Refusals use an injected resolver and an HTTP factory that fails the test
if called, so they prove nothing was sent; no traffic ever leaves the loopback interface.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agents import tools_builtin
from agents.runtime.errors import POLICIES, ToolFailed, policy_for
from agents.runtime.tools import (
    ToolRunner,
    address_refusal,
    system_resolver,
    tool_messages,
)
from agents.runtime.types import Message, ToolCall, ToolSpec

HERE = "tests.agents.runtime.test_tools"

# --- python tools under test -------------------------------------------------------------------

ran: list[str] = []
release_sync = threading.Event()


def echo(**kwargs: Any) -> dict[str, Any]:
    ran.append("echo")
    return {"echo": kwargs}


async def add(a: int, b: int) -> int:
    return a + b


def greet(name: str) -> str:
    return f"hello {name}"


def boom() -> None:
    raise RuntimeError("kaboom")


def exits() -> None:
    sys.exit(3)


def opaque() -> object:
    return object()


def verbose() -> str:
    return "x" * 500


def slow_sync() -> str:
    release_sync.wait(5)
    return "late"


async def slow_async() -> str:
    await asyncio.sleep(5)
    return "late"


def forbidden() -> str:
    ran.append("forbidden")
    return "should never run"


PYTHON_TOOLS = ("echo", "add", "greet", "boom", "exits", "opaque", "verbose", "slow_sync")
ALLOW = frozenset(
    f"{HERE}:{name}" for name in (*PYTHON_TOOLS, "slow_async", "missing_attribute")
) | {
    "tests.agents.runtime.no_such_module:fn",
    "agents.tools_builtin:calculator",
    "agents.tools_builtin:current_time",
}


def python_tool(function: str, **kwargs: Any) -> ToolSpec:
    name = kwargs.pop("name", function.rpartition(":")[2])
    return ToolSpec(
        name=name,
        kind="python",
        description="",
        parameters=kwargs.pop("parameters", {"type": "object", "properties": {}}),
        function=function,
        **kwargs,
    )


def webhook(url: str, **kwargs: Any) -> ToolSpec:
    return ToolSpec(
        name=kwargs.pop("name", "hook"),
        kind="webhook",
        description="",
        parameters=kwargs.pop("parameters", {"type": "object", "properties": {}}),
        url=url,
        **kwargs,
    )


def call(name: str, arguments: str = "{}") -> ToolCall:
    return ToolCall(id="call_1", name=name, arguments=arguments)


def no_http() -> aiohttp.ClientSession:
    raise AssertionError("a refused webhook must not open any connection")


@dataclass
class FakeResolver:
    answers: dict[str, list[list[str]]]
    calls: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        answers = self.answers.get(host)
        if not answers:
            raise OSError(f"no such host {host}")
        # Each lookup takes the next answer (the last one repeats): a rebinding resolver.
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
async def make_runner() -> AsyncIterator[Callable[..., ToolRunner]]:
    runners: list[ToolRunner] = []

    def make(**kwargs: Any) -> ToolRunner:
        kwargs.setdefault("python_allow_list", ALLOW)
        runner = ToolRunner(**kwargs)
        runners.append(runner)
        return runner

    yield make
    release_sync.set()
    for runner in runners:
        await runner.close()
    release_sync.clear()


@pytest.fixture(autouse=True)
def _reset_ran() -> Iterator[None]:
    ran.clear()
    yield
    ran.clear()


# --- python tools -------------------------------------------------------------------------------


async def test_a_sync_python_tool_runs_and_its_result_is_json_encoded(make_runner: Any) -> None:
    runner = make_runner()
    spec = python_tool(f"{HERE}:echo")
    result = await runner.run(spec, call("echo", '{"city": "Oslo", "n": 2}'), timeout_s=5)
    assert json.loads(result) == {"echo": {"city": "Oslo", "n": 2}}


async def test_a_string_result_is_returned_as_is(make_runner: Any) -> None:
    spec = python_tool(
        f"{HERE}:greet",
        parameters={"type": "object", "properties": {"name": {"type": "string"}}},
    )
    result = await make_runner().run(spec, call("greet", '{"name": "Ada"}'), timeout_s=5)
    assert result == "hello Ada"


async def test_an_async_python_tool_is_awaited(make_runner: Any) -> None:
    spec = python_tool(f"{HERE}:add")
    result = await make_runner().run(spec, call("add", '{"a": 2, "b": 40}'), timeout_s=5)
    assert result == "42"


async def test_a_function_outside_the_allow_list_is_refused_at_call_time(
    make_runner: Any,
) -> None:
    spec = python_tool(f"{HERE}:forbidden")
    with pytest.raises(ToolFailed, match="not in the allow-list"):
        await make_runner().run(spec, call("forbidden"), timeout_s=5)
    assert ran == []


async def test_an_allow_list_entry_does_not_cover_other_functions_of_its_module(
    make_runner: Any,
) -> None:
    runner = make_runner(python_allow_list=frozenset({f"{HERE}:echo"}))
    assert await runner.run(python_tool(f"{HERE}:echo"), call("echo"), timeout_s=5)
    with pytest.raises(ToolFailed, match="not in the allow-list"):
        await runner.run(python_tool(f"{HERE}:forbidden"), call("forbidden"), timeout_s=5)
    assert ran == ["echo"]


async def test_a_module_that_cannot_be_imported_fails_the_tool(make_runner: Any) -> None:
    spec = python_tool("tests.agents.runtime.no_such_module:fn", name="fn")
    with pytest.raises(ToolFailed, match="cannot import"):
        await make_runner().run(spec, call("fn"), timeout_s=5)


async def test_a_missing_attribute_fails_the_tool(make_runner: Any) -> None:
    spec = python_tool(f"{HERE}:missing_attribute")
    with pytest.raises(ToolFailed, match="is not a callable"):
        await make_runner().run(spec, call("missing_attribute"), timeout_s=5)


async def test_arguments_that_are_not_json_are_refused(make_runner: Any) -> None:
    with pytest.raises(ToolFailed, match="not valid JSON"):
        await make_runner().run(python_tool(f"{HERE}:echo"), call("echo", "{city:"), timeout_s=5)
    assert ran == []


async def test_arguments_that_are_not_an_object_are_refused(make_runner: Any) -> None:
    with pytest.raises(ToolFailed, match="must be a JSON object, not array"):
        await make_runner().run(python_tool(f"{HERE}:echo"), call("echo", "[1, 2]"), timeout_s=5)


async def test_empty_arguments_mean_no_arguments(make_runner: Any) -> None:
    result = await make_runner().run(python_tool(f"{HERE}:echo"), call("echo", ""), timeout_s=5)
    assert json.loads(result) == {"echo": {}}


async def test_arguments_missing_a_required_property_are_refused(make_runner: Any) -> None:
    spec = python_tool(
        f"{HERE}:add",
        parameters={
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    )
    with pytest.raises(ToolFailed, match="missing required property 'b'"):
        await make_runner().run(spec, call("add", '{"a": 1}'), timeout_s=5)


async def test_arguments_of_the_wrong_type_are_refused(make_runner: Any) -> None:
    spec = python_tool(
        f"{HERE}:add",
        parameters={
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        },
    )
    with pytest.raises(ToolFailed, match=r"arguments\.b: expected integer, got string"):
        await make_runner().run(spec, call("add", '{"a": 1, "b": "2"}'), timeout_s=5)


async def test_arguments_breaking_a_pattern_or_a_minimum_are_refused(make_runner: Any) -> None:
    spec = python_tool(
        f"{HERE}:echo",
        parameters={
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "n": {"type": "integer", "minimum": 1},
            },
        },
    )
    runner = make_runner()
    with pytest.raises(ToolFailed, match=r"arguments\.code: 'eur' does not match"):
        await runner.run(spec, call("echo", '{"code": "eur"}'), timeout_s=5)
    with pytest.raises(ToolFailed, match=r"arguments\.n: 0 is less than the minimum of 1"):
        await runner.run(spec, call("echo", '{"code": "EUR", "n": 0}'), timeout_s=5)
    assert json.loads(await runner.run(spec, call("echo", '{"code": "EUR"}'), timeout_s=5))


async def test_a_tool_that_raises_fails_with_its_error(make_runner: Any) -> None:
    with pytest.raises(ToolFailed, match="raised RuntimeError: kaboom") as caught:
        await make_runner().run(python_tool(f"{HERE}:boom"), call("boom"), timeout_s=5)
    assert policy_for(caught.value) is POLICIES[ToolFailed]


async def test_a_tool_calling_sys_exit_fails_without_stopping_the_process(
    make_runner: Any,
) -> None:
    with pytest.raises(ToolFailed, match="raised SystemExit: 3"):
        await make_runner().run(python_tool(f"{HERE}:exits"), call("exits"), timeout_s=5)


async def test_a_result_that_is_not_json_serialisable_fails_the_tool(make_runner: Any) -> None:
    with pytest.raises(ToolFailed, match="not JSON-serialisable"):
        await make_runner().run(python_tool(f"{HERE}:opaque"), call("opaque"), timeout_s=5)


async def test_a_python_result_larger_than_max_response_bytes_fails(make_runner: Any) -> None:
    spec = python_tool(f"{HERE}:verbose", max_response_bytes=100)
    with pytest.raises(ToolFailed, match="returned 500 bytes, more than"):
        await make_runner().run(spec, call("verbose"), timeout_s=5)


async def test_a_slow_sync_tool_times_out_and_its_thread_is_abandoned(make_runner: Any) -> None:
    spec = python_tool(f"{HERE}:slow_sync", timeout_s=0.1)
    with pytest.raises(ToolFailed, match=r"timed out .*its timeout_s.*thread was abandoned"):
        await make_runner().run(spec, call("slow_sync"), timeout_s=5)


async def test_a_slow_async_tool_times_out_at_the_execution_deadline_when_that_comes_first(
    make_runner: Any,
) -> None:
    spec = python_tool(f"{HERE}:slow_async", timeout_s=10)
    with pytest.raises(ToolFailed, match=r"timed out .*limit 0.10s from the execution deadline"):
        await make_runner().run(spec, call("slow_async"), timeout_s=0.1)


async def test_a_tool_is_not_started_once_the_deadline_has_passed(make_runner: Any) -> None:
    with pytest.raises(ToolFailed, match="not started"):
        await make_runner().run(python_tool(f"{HERE}:echo"), call("echo"), timeout_s=0)
    assert ran == []


async def test_an_unknown_tool_name_fails(make_runner: Any) -> None:
    tools = (python_tool(f"{HERE}:echo"),)
    with pytest.raises(ToolFailed, match="unknown tool 'rm_rf'"):
        await make_runner().run_named(tools, call("rm_rf"), timeout_s=5)
    with pytest.raises(ToolFailed, match="unknown tool 'rm_rf'"):
        await make_runner().run(tools[0], call("rm_rf"), timeout_s=5)
    assert await make_runner().run_named(tools, call("echo"), timeout_s=5)


# --- messages ----------------------------------------------------------------------------------


def test_tool_messages_put_the_assistant_turn_first_then_one_answer_per_call_in_order() -> None:
    calls = (ToolCall("c1", "echo", "{}"), ToolCall("c2", "add", '{"a":1,"b":2}'))
    messages = tool_messages(calls, ("first", "3"), content="checking")
    assert messages == (
        Message("assistant", "checking", tool_calls=calls),
        Message("tool", "first", tool_call_id="c1", name="echo"),
        Message("tool", "3", tool_call_id="c2", name="add"),
    )


def test_tool_messages_refuse_a_result_count_that_does_not_match_the_calls() -> None:
    with pytest.raises(ValueError, match="2 tool calls but 1 results"):
        tool_messages((ToolCall("c1", "a", "{}"), ToolCall("c2", "b", "{}")), ("x",))


# --- webhooks against a local server ------------------------------------------------------------


@dataclass
class Server:
    port: int
    seen: list[dict[str, Any]]
    release: asyncio.Event
    sni: list[str | None]


async def _start(ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, Server]:
    release = asyncio.Event()
    seen: list[dict[str, Any]] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"host": request.host, "headers": dict(request.headers), "body": body})
        return web.json_response({"got": body, "host": request.host})

    async def redirect(request: web.Request) -> web.Response:
        seen.append({"path": "/redirect"})
        return web.Response(status=302, headers={"Location": "http://169.254.169.254/"})

    async def error(request: web.Request) -> web.Response:
        return web.Response(status=500, text="upstream exploded")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await response.prepare(request)
        for _ in range(256):  # 16 MiB at most, far beyond any limit under test
            await response.write(b"x" * 65536)
        return response

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/redirect", redirect)
    app.router.add_post("/error", error)
    app.router.add_post("/big", big)
    app.router.add_post("/endless", endless)
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, Server(port=port, seen=seen, release=release, sni=[])


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    runner, srv = await _start()
    yield srv
    srv.release.set()
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[Callable[[], aiohttp.ClientSession]]:
    session = aiohttp.ClientSession()
    yield lambda: session
    await session.close()


LOCAL = frozenset({"127.0.0.1"})


async def test_a_webhook_posts_the_arguments_and_returns_the_body(
    make_runner: Any, server: Server, http: Any
) -> None:
    runner = make_runner(webhook_allow_hosts=LOCAL, http=http)
    spec = webhook(f"http://127.0.0.1:{server.port}/echo")
    result = await runner.run(spec, call("hook", '{"q": "status"}'), timeout_s=5)
    assert json.loads(result) == {"got": {"q": "status"}, "host": f"127.0.0.1:{server.port}"}
    headers = server.seen[0]["headers"]
    assert headers["X-Breakwater-Tool"] == "hook"
    assert headers["X-Breakwater-Tool-Call-Id"] == "call_1"


async def test_a_webhook_connects_to_the_address_it_vetted_and_sends_the_original_host(
    make_runner: Any, server: Server, http: Any
) -> None:
    # A rebinding resolver: the first answer is the vetted one, later ones point elsewhere.
    # `tools.example` does not exist, so any second lookup by the HTTP client would fail too.
    resolver = FakeResolver({"tools.example": [["127.0.0.1"], ["10.9.9.9"]]})
    runner = make_runner(
        webhook_allow_hosts=frozenset({"tools.example"}), http=http, resolver=resolver
    )
    spec = webhook(f"http://tools.example:{server.port}/echo")
    result = await runner.run(spec, call("hook", '{"q": 1}'), timeout_s=5)
    assert json.loads(result)["host"] == f"tools.example:{server.port}"
    assert resolver.calls == ["tools.example"]


async def test_a_webhook_tries_the_next_vetted_address_when_one_refuses_connections(
    make_runner: Any, server: Server, http: Any
) -> None:
    resolver = FakeResolver({"tools.example": [["127.0.0.2", "127.0.0.1"]]})
    runner = make_runner(
        webhook_allow_hosts=frozenset({"tools.example"}), http=http, resolver=resolver
    )
    # Nothing listens on 127.0.0.2:port, so the connection is refused and nothing was sent.
    result = await runner.run(
        webhook(f"http://tools.example:{server.port}/echo"), call("hook"), timeout_s=5
    )
    assert json.loads(result)["got"] == {}
    assert len(server.seen) == 1


async def test_a_webhook_redirect_is_refused_not_followed(
    make_runner: Any, server: Server, http: Any
) -> None:
    runner = make_runner(webhook_allow_hosts=LOCAL, http=http)
    spec = webhook(f"http://127.0.0.1:{server.port}/redirect")
    with pytest.raises(ToolFailed, match="redirect \\(HTTP 302") as caught:
        await runner.run(spec, call("hook"), timeout_s=5)
    assert caught.value.status == 302
    assert server.seen == [{"path": "/redirect"}]


async def test_a_webhook_server_error_fails_the_tool(
    make_runner: Any, server: Server, http: Any
) -> None:
    runner = make_runner(webhook_allow_hosts=LOCAL, http=http)
    spec = webhook(f"http://127.0.0.1:{server.port}/error")
    with pytest.raises(ToolFailed, match="HTTP 500: upstream exploded") as caught:
        await runner.run(spec, call("hook"), timeout_s=5)
    assert caught.value.status == 500


async def test_a_webhook_body_declared_larger_than_the_limit_is_refused(
    make_runner: Any, server: Server, http: Any
) -> None:
    runner = make_runner(webhook_allow_hosts=LOCAL, http=http)
    spec = webhook(f"http://127.0.0.1:{server.port}/big", max_response_bytes=1000)
    with pytest.raises(ToolFailed, match="5000 bytes exceeds max_response_bytes \\(1000\\)"):
        await runner.run(spec, call("hook"), timeout_s=5)


async def test_a_webhook_stream_is_read_only_up_to_the_limit(
    make_runner: Any, server: Server, http: Any
) -> None:
    runner = make_runner(webhook_allow_hosts=LOCAL, http=http)
    spec = webhook(f"http://127.0.0.1:{server.port}/endless", max_response_bytes=1000)
    with pytest.raises(ToolFailed, match="exceeds max_response_bytes \\(1000\\); stopped reading"):
        await runner.run(spec, call("hook"), timeout_s=5)


async def test_a_body_exactly_at_the_limit_is_accepted(
    make_runner: Any, server: Server, http: Any
) -> None:
    runner = make_runner(webhook_allow_hosts=LOCAL, http=http)
    spec = webhook(f"http://127.0.0.1:{server.port}/big", max_response_bytes=5000)
    assert await runner.run(spec, call("hook"), timeout_s=5) == "x" * 5000


async def test_a_slow_webhook_times_out(make_runner: Any, server: Server, http: Any) -> None:
    runner = make_runner(webhook_allow_hosts=LOCAL, http=http)
    spec = webhook(f"http://127.0.0.1:{server.port}/slow", timeout_s=0.2)
    with pytest.raises(ToolFailed, match=r"timed out .*its timeout_s"):
        await runner.run(spec, call("hook"), timeout_s=5)


# --- SSRF: refused before any connection --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", r"loopback \(embedded in ::ffff:7f00:1\)"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fd00::1]/", "private"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://100.64.0.1/", "not globally routable"),
        ("http://metadata.internal/", "link-local"),
        ("https://mixed.example/", "private"),
        ("http://rebound.example/", "loopback"),
    ],
)
async def test_a_webhook_to_a_non_public_address_is_refused_before_connecting(
    make_runner: Any, url: str, reason: str
) -> None:
    resolver = FakeResolver(
        {
            "localhost": [["127.0.0.1", "::1"]],
            "metadata.internal": [["169.254.169.254"]],
            # Every address is checked, not only the first.
            "mixed.example": [["93.184.216.34", "10.1.2.3"]],
            "rebound.example": [["::ffff:127.0.0.1"]],
        }
    )
    runner = make_runner(http=no_http, resolver=resolver)
    with pytest.raises(ToolFailed, match=reason):
        await runner.run(webhook(url), call("hook"), timeout_s=5)


async def test_the_system_resolver_answer_for_localhost_is_refused(make_runner: Any) -> None:
    assert await system_resolver("localhost", 80)  # /etc/hosts: no network needed
    runner = make_runner(http=no_http)
    with pytest.raises(ToolFailed, match="loopback"):
        await runner.run(webhook("http://localhost:9/"), call("hook"), timeout_s=5)


async def test_the_allow_list_exempts_hosts_by_the_name_in_the_url_only(
    make_runner: Any,
) -> None:
    resolver = FakeResolver({"localhost": [["127.0.0.1"]]})
    runner = make_runner(webhook_allow_hosts=LOCAL, http=no_http, resolver=resolver)
    with pytest.raises(ToolFailed, match=r"'localhost' resolves to 127\.0\.0\.1 \(loopback\)"):
        await runner.run(webhook("http://localhost:9/"), call("hook"), timeout_s=5)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/file", "file:///etc/passwd", "gopher://x/"])
async def test_a_webhook_with_a_scheme_other_than_http_is_refused(
    make_runner: Any, url: str
) -> None:
    runner = make_runner(webhook_allow_hosts=LOCAL, http=no_http, resolver=FakeResolver({}))
    with pytest.raises(ToolFailed, match="is not allowed \\(http or https only\\)"):
        await runner.run(webhook(url), call("hook"), timeout_s=5)


async def test_a_webhook_host_that_does_not_resolve_fails(make_runner: Any) -> None:
    runner = make_runner(http=no_http, resolver=FakeResolver({}))
    with pytest.raises(ToolFailed, match=r"cannot resolve webhook host 'nowhere.example'"):
        await runner.run(webhook("https://nowhere.example/"), call("hook"), timeout_s=5)


def test_public_addresses_are_not_refused() -> None:
    for text in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert address_refusal(ipaddress.ip_address(text)) is None, text


def test_ipv4_addresses_hidden_in_ipv6_transition_prefixes_are_checked() -> None:
    assert address_refusal(ipaddress.ip_address("2002:7f00:1::")) == (
        "loopback (embedded in 2002:7f00:1::)"
    )
    assert address_refusal(ipaddress.ip_address("64:ff9b::a00:1")) == (
        "private (embedded in 64:ff9b::a00:1)"
    )


# --- HTTPS: SNI and certificate checked against the original name --------------------------------


def _certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[tuple[Server, Callable[[], aiohttp.ClientSession]]]:
    cert, key = _certificate(tmp_path, "tools.example")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    sni: list[str | None] = []

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(name)

    server_context.sni_callback = record_sni
    runner, srv = await _start(server_context)
    srv.sni = sni
    client_context = ssl.create_default_context(cafile=str(cert))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context))
    yield srv, lambda: session
    await session.close()
    srv.release.set()
    await runner.cleanup()


async def test_an_https_webhook_sends_sni_and_verifies_the_certificate_for_the_original_host(
    make_runner: Any, tls: Any
) -> None:
    srv, http = tls
    resolver = FakeResolver({"tools.example": [["127.0.0.1"]]})
    runner = make_runner(
        webhook_allow_hosts=frozenset({"tools.example"}), http=http, resolver=resolver
    )
    spec = webhook(f"https://tools.example:{srv.port}/echo")
    result = await runner.run(spec, call("hook", '{"x": 1}'), timeout_s=5)
    assert json.loads(result) == {"got": {"x": 1}, "host": f"tools.example:{srv.port}"}
    assert srv.sni == ["tools.example"]


async def test_an_https_webhook_whose_certificate_names_another_host_fails(
    make_runner: Any, tls: Any
) -> None:
    srv, http = tls
    resolver = FakeResolver({"impostor.example": [["127.0.0.1"]]})
    runner = make_runner(
        webhook_allow_hosts=frozenset({"impostor.example"}), http=http, resolver=resolver
    )
    spec = webhook(f"https://impostor.example:{srv.port}/echo")
    with pytest.raises(ToolFailed, match=r"cannot connect to webhook: .*certificate"):
        await runner.run(spec, call("hook"), timeout_s=5)
    assert srv.seen == []


# --- built-in tools ---------------------------------------------------------------------------


def builtin(name: str) -> ToolSpec:
    return python_tool(
        f"agents.tools_builtin:{name}", parameters=tools_builtin.SCHEMAS[name], name=name
    )


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 10", 1024),
        ("-2 ** 2", -4),
        ("7 // 2 + 7 % 2", 4),
        ("10 / 4", 2.5),
        ("sqrt(16) + abs(-1)", 5.0),
        ("round(pi, 2)", 3.14),
        ("max(1, 5, 3)", 5),
        ("(2 ** 1000) ** 4", 2**4000),
    ],
)
def test_the_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert tools_builtin.calculator(expression) == value


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("__import__('os').system('id')", "only sqrt"),
        ("(1).__class__", "unsupported syntax Attribute"),
        ("().__class__.__bases__[0]", "unsupported syntax"),
        ("open", "unknown name 'open'"),
        ("'a' * 3", "unsupported constant"),
        ("9 ** 9 ** 9", "exponent larger than 1000"),
        ("(2 ** 1000) ** 5", "result too large"),
        ("10.0 ** 400", "result too large"),
        ("1e308 * 10", "not finite"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 / 0", "division by zero"),
        ("[x for x in (1,)]", "unsupported syntax"),
        ("lambda: 1", "unsupported syntax"),
        ("1 << 100", "unsupported operator"),
        ("1 +", "not an arithmetic expression"),
        ("1" + " + 1" * 100, "longer than 200"),
    ],
)
def test_the_calculator_refuses_anything_but_bounded_arithmetic(
    expression: str, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        tools_builtin.calculator(expression)


def test_current_time_answers_in_utc_or_the_given_zone() -> None:
    utc = tools_builtin.current_time()
    assert utc["timezone"] == "UTC"
    assert utc["utc_offset"] == "+0000"
    assert dt.datetime.fromisoformat(utc["iso"]).utcoffset() == dt.timedelta(0)
    tokyo = tools_builtin.current_time("Asia/Tokyo")  # no daylight saving: always +09:00
    assert tokyo["utc_offset"] == "+0900"
    assert dt.datetime.fromisoformat(tokyo["iso"]).utcoffset() == dt.timedelta(hours=9)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime"])
def test_current_time_refuses_an_unknown_zone(tz: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        tools_builtin.current_time(tz)


async def test_the_builtins_run_through_the_runner_with_their_schemas(make_runner: Any) -> None:
    runner = make_runner()
    assert await runner.run(
        builtin("calculator"), call("calculator", '{"expression": "6 * 7"}'), timeout_s=5
    ) == ("42")
    clock = json.loads(
        await runner.run(builtin("current_time"), call("current_time", "{}"), timeout_s=5)
    )
    assert clock["timezone"] == "UTC"
    with pytest.raises(ToolFailed, match="raised ValueError: exponent larger than 1000"):
        await runner.run(
            builtin("calculator"), call("calculator", '{"expression": "9**9**9"}'), timeout_s=5
        )
    with pytest.raises(ToolFailed, match="unexpected property 'code'"):
        await runner.run(
            builtin("calculator"),
            call("calculator", '{"expression": "1", "code": "x"}'),
            timeout_s=5,
        )
