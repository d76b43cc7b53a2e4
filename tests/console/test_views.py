"""Health probes and the console home page."""

from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import AsyncClient, Client
from pytest_django.fixtures import Settings

import core.redis


@pytest.fixture
def fresh_redis_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget pooled clients so the overridden REDIS_URL is the one used (restored after)."""
    monkeypatch.setattr(core.redis, "_async_clients", weakref.WeakKeyDictionary())


async def test_healthz_answers_without_touching_anything(async_client: AsyncClient) -> None:
    response = await async_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_refuses_other_methods(client: Client) -> None:
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db(transaction=True)
async def test_readyz_is_ready_when_the_database_answers(
    async_client: AsyncClient, settings: Settings
) -> None:
    settings.EMBEDDED = True
    response = await async_client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database"}
    assert body["checks"]["database"]["ok"] is True
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db(transaction=True)
async def test_readyz_is_unavailable_naming_redis_when_redis_does_not_answer(
    async_client: AsyncClient, settings: Settings, fresh_redis_clients: None
) -> None:
    settings.EMBEDDED = False
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = await async_client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is False
    assert "Connect" in body["checks"]["redis"]["error"]


@pytest.mark.django_db(transaction=True)
async def test_readyz_checks_redis_in_distributed_mode(
    async_client: AsyncClient, settings: Settings, redis_url: str, fresh_redis_clients: None
) -> None:
    settings.EMBEDDED = False
    settings.REDIS_URL = redis_url
    response = await async_client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"]["redis"]["ok"] is True


@pytest.mark.django_db(transaction=True)
async def test_readyz_is_unavailable_when_the_database_is_unreachable(
    async_client: AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    import console.views

    def no_database() -> None:
        raise OperationalError("connection refused")

    settings.EMBEDDED = True
    monkeypatch.setattr(console.views, "_check_database", no_database)
    response = await async_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == {
        "ok": False,
        "error": "OperationalError: connection refused",
    }


@pytest.mark.django_db(transaction=True)
def test_the_database_probe_recovers_after_its_connection_breaks(postgres: None) -> None:
    # PostgreSQL only: Django never closes SQLite's in-memory test database connections.
    from django.db import connection

    import console.views

    def probe_break_probe() -> object:
        console.views._check_database()
        if connection.connection is not None:  # a kept connection, now killed under Django
            connection.connection.close()
        console.views._check_database()  # a database restart must not fail this forever
        return connection.connection

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(probe_break_probe).result() is None
