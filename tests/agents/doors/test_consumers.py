"""``WS /ws/executions/{id}/`` through the project's ASGI application (routing, session
middleware, origin check) with Channels' WebsocketCommunicator: the in-memory channel layer in
embedded mode, the Redis channel layer with REDIS_URL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from agents.access.services import api_key_create
from agents.executions.live import LiveEvents, group_name
from agents.models import ApiKey, Execution
from console.asgi import application
from tests.agents.api import test_queued as base
from tests.agents.api.test_queued import FINAL, Worker, _post, _queued, wait_for

# The queued-execution fixtures (agents, keys, the in-process worker) are shared.
agents_config, keys, worker = base.agents_config, base.keys, base.worker

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://localhost")
TASK = "agents.tasks.execution_run"


async def _key_id(name: str) -> int:
    return (await ApiKey.objects.aget(name=name)).pk


async def _queued_for(key_name: str | None, agent: str = "helper") -> str:
    key_id = await _key_id(key_name) if key_name else None
    return str(await sync_to_async(_queued)(agent=agent, api_key_id=key_id))


def _socket(execution_id: str, *, key: str | None = None, headers: Any = ()) -> Any:
    path = f"/ws/executions/{execution_id}/" + (f"?key={key}" if key else "")
    return WebsocketCommunicator(application, path, headers=[ORIGIN, *headers])


async def _messages_until_closed(socket: Any) -> list[dict[str, Any]]:
    """Every JSON message, until the server closes the socket."""
    messages: list[dict[str, Any]] = []
    while True:
        output = await socket.receive_output(15)
        if output["type"] == "websocket.close":
            assert output.get("code", 1000) == 1000
            return messages
        messages.append(json.loads(output["text"]))


@pytest.fixture
async def watched(keys: dict[str, str]) -> str:
    """A queued execution made by the ``execute`` key; its message has not reached a worker."""
    return await _queued_for("exec")


async def test_the_key_that_queued_it_sees_queued_running_tokens_then_completed(
    keys: dict[str, str], worker: Worker, watched: str
) -> None:
    socket = _socket(watched, key=keys["execute"])
    connected, _ = await socket.connect()
    assert connected
    assert await socket.receive_json_from(5) == {
        "type": "status",
        "execution_id": watched,
        "status": "queued",
    }
    worker.worker.submit(TASK, execution_id=watched)
    messages = await _messages_until_closed(socket)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "status"
    assert messages[0]["status"] == "running"
    assert kinds[-1] == "completed"
    assert set(kinds[1:-1]) == {"token"}
    completed = messages[-1]
    assert completed["status"] == "succeeded"
    row = await Execution.objects.aget(pk=watched)
    assert completed["result"]["output"] == row.output != ""
    assert completed["result"]["cost_usd"] == float(row.cost_usd)
    assert "".join(m["text"] for m in messages if m["type"] == "token") == row.output
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs)
    await socket.disconnect()


async def test_an_authorization_header_works_like_the_query_key(
    keys: dict[str, str], watched: str
) -> None:
    socket = _socket(watched, headers=[(b"authorization", f"Bearer {keys['execute']}".encode())])
    connected, _ = await socket.connect()
    assert connected
    assert (await socket.receive_json_from(5))["status"] == "queued"
    await socket.disconnect()


async def test_a_read_key_may_watch_executions_of_its_agents(
    keys: dict[str, str], watched: str
) -> None:
    for key in (keys["read"], keys["operate"], keys["helper-only"]):
        socket = _socket(watched, key=key)
        connected, _ = await socket.connect()
        assert connected
        await socket.disconnect()


def _session_cookie(role: str | None = "viewer") -> bytes:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.test import Client

    user = get_user_model().objects.create_user(f"ops-{role}", password="pw-123456")
    if role is not None:  # get_or_create: a transactional test flushes the migration's groups
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def test_a_console_user_watches_with_the_session_cookie(
    keys: dict[str, str], watched: str
) -> None:
    cookie = await sync_to_async(_session_cookie)()
    socket = _socket(watched, headers=[(b"cookie", cookie)])
    connected, _ = await socket.connect()
    assert connected
    assert (await socket.receive_json_from(5))["status"] == "queued"
    await socket.disconnect()


async def test_a_signed_in_user_without_a_console_role_is_refused(
    keys: dict[str, str], watched: str
) -> None:
    cookie = await sync_to_async(_session_cookie)(None)
    socket = _socket(watched, headers=[(b"cookie", cookie)])
    connected, code = await socket.connect()
    assert not connected
    assert code == 4403


def test_the_consumers_role_names_are_the_consoles() -> None:
    from agents.doors.consumers import CONSOLE_ROLES
    from console.roles import ROLES

    assert CONSOLE_ROLES == ROLES


EVIL = (b"origin", b"http://evil.example")


def _raw_socket(execution_id: str, query: str, headers: Any) -> Any:
    """A socket with exactly these headers (no default Origin)."""
    path = f"/ws/executions/{execution_id}/{query}"
    return WebsocketCommunicator(application, path, headers=list(headers))


async def test_a_cookie_socket_from_another_origin_is_refused(
    keys: dict[str, str], watched: str
) -> None:
    cookie = await sync_to_async(_session_cookie)()
    socket = _raw_socket(watched, "", [EVIL, (b"cookie", cookie)])
    connected, _ = await socket.connect()
    assert not connected
    await socket.disconnect()


async def test_a_key_socket_is_the_keys_alone_whatever_cookie_comes_with_it(
    keys: dict[str, str], watched: str
) -> None:
    # The console user behind the cookie could watch; the key (a reader of another agent)
    # may not: a foreign page with the cookie and that key learns nothing.
    cookie = await sync_to_async(_session_cookie)()
    other = await sync_to_async(api_key_create)(
        name="other-reader", scopes=["read"], agents=["other"]
    )
    socket = _raw_socket(watched, f"?key={other.plaintext}", [EVIL, (b"cookie", cookie)])
    assert await socket.connect() == (False, 4404)
    await socket.disconnect()


@pytest.mark.parametrize("query", ["?key=bw_" + "x" * 46, "?key=", "?%6B%65%79=nope"])
async def test_a_bad_key_is_refused_even_with_a_valid_session_cookie(
    keys: dict[str, str], watched: str, query: str
) -> None:
    cookie = await sync_to_async(_session_cookie)()
    socket = _raw_socket(watched, query, [ORIGIN, (b"cookie", cookie)])
    assert await socket.connect() == (False, 4401)
    await socket.disconnect()


async def test_a_refused_socket_never_opens(keys: dict[str, str], watched: str) -> None:
    outsider = await sync_to_async(api_key_create)(name="outsider", scopes=["execute"])
    other_agents = await sync_to_async(api_key_create)(
        name="other-reader", scopes=["read"], agents=["other"]
    )
    cases = [
        (watched, None, 4401),
        (watched, "bw_" + "x" * 46, 4401),
        (watched, outsider.plaintext, 4404),  # an execute-only key sees only its own
        (watched, other_agents.plaintext, 4404),  # a reader of other agents
        ("6f1d2c8e-0b8e-4a56-9d4a-2f9a1a7c3b10", keys["execute"], 4404),
    ]
    for execution_id, key, code in cases:
        socket = _socket(execution_id, key=key)
        connected, answer = await socket.connect()
        assert (connected, answer) == (False, code), (execution_id, key)


async def test_a_finished_execution_answers_status_and_completed_at_once(
    keys: dict[str, str], worker: Worker, watched: str
) -> None:
    worker.worker.submit(TASK, execution_id=watched)
    await wait_for(watched, FINAL, worker)
    socket = _socket(watched, key=keys["execute"])
    connected, _ = await socket.connect()
    assert connected
    messages = await _messages_until_closed(socket)
    assert [(m["type"], m["status"]) for m in messages] == [
        ("status", "succeeded"),
        ("completed", "succeeded"),
    ]
    assert messages[1]["result"]["execution_id"] == watched


async def test_cancelling_a_queued_execution_pushes_completed_to_watchers(
    keys: dict[str, str], watched: str
) -> None:
    socket = _socket(watched, key=keys["execute"])
    assert (await socket.connect())[0]
    assert (await socket.receive_json_from(5))["status"] == "queued"
    response = await _post(keys["execute"], f"/api/v1/executions/{watched}/cancel")
    assert response.status_code == 200
    messages = await _messages_until_closed(socket)
    assert [(m["type"], m["status"]) for m in messages] == [("completed", "cancelled")]


async def test_live_events_coalesce_a_burst_of_tokens_and_keep_their_order(
    agents_config: None,
) -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group_name("e-1"), channel)
    live = LiveEvents(layer)
    live.watch("e-1")
    live.execution_started("e-1", "helper")
    for index in range(200):
        live.execution_token("e-1", f"w{index} ")
    live.execution_token("e-unwatched", "ignored")
    await asyncio.sleep(0.1)
    live.execution_token("e-1", "tail")
    sent = await live.complete("e-1", {"status": "succeeded"})
    received = [await layer.receive(channel) for _ in range(sent)]
    await layer.group_discard(group_name("e-1"), channel)
    assert [m["type"] for m in received] == [
        "execution.status",
        "execution.token",
        "execution.token",
        "execution.completed",
    ]
    assert received[1]["text"] == "".join(f"w{index} " for index in range(200))
    assert received[2]["text"] == "tail"
    assert [m["seq"] for m in received] == [1, 2, 3, 4]
