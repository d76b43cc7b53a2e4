"""A small asynchronous client of the Breakwater API, for drills (aiohttp, one session)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp


class DrillError(Exception):
    """The drill cannot go on (the server refused, answered something unexpected, ...)."""


class ApiClient:
    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        # Drill traffic runs many requests at once; keep-alive connections, no per-host cap
        # lower than the traffic's own.
        connector = aiohttp.TCPConnector(limit=256)
        self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ApiClient used outside 'async with'")
        return self._session

    async def call(
        self, method: str, path: str, *, payload: Any = None, params: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """``(status, JSON body or None)``; a connection failure is a :class:`DrillError`."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        try:
            async with self.session.request(
                method, self.base_url + path, json=payload, params=params, headers=headers
            ) as response:
                text = await response.text()
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = text
                return response.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DrillError(
                f"{method} {self.base_url}{path}: {exc or type(exc).__name__}"
            ) from exc

    async def ok(
        self, method: str, path: str, *, payload: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """The body of a 2xx answer; anything else is a :class:`DrillError` naming it."""
        status, body = await self.call(method, path, payload=payload, params=params)
        if not 200 <= status < 300:
            raise DrillError(f"{method} {path}: HTTP {status}: {_message(body)}")
        return body

    async def wait_authorised(self, deadline_s: float = 10.0) -> None:
        """A key created a moment ago is known to every serving process within about a
        second: wait for this one to be accepted (401 until then)."""
        end = time.monotonic() + deadline_s
        while True:
            status, body = await self.call("GET", "/api/v1/deployments")
            if status == 200:
                return
            if status != 401 or time.monotonic() > end:
                raise DrillError(f"GET /api/v1/deployments: HTTP {status}: {_message(body)}")
            await asyncio.sleep(0.2)

    async def pages(self, path: str, params: dict[str, Any], *, most: int) -> list[dict[str, Any]]:
        """Up to ``most`` items of a keyset-paginated list."""
        items: list[dict[str, Any]] = []
        query = dict(params)
        while len(items) < most:
            body = await self.ok("GET", path, params=query)
            items.extend(body["items"])
            if not body.get("next"):
                break
            query["after"] = body["next"]
        return items[:most]


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body)[:300]
