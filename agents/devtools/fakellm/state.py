"""What one fakellm server mutates (faults, stats, the request log, the id counter), the key
it is kept under in the aiohttp application, and the JSON answer the handlers share."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agents.devtools.fakellm.faults import FaultConfig, FaultModel

JSON = "application/json"
REQUEST_LOG_SIZE = 100


@dataclass(slots=True)
class EndpointStats:
    total: int = 0
    streams: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "streams": self.streams,
            "outcomes": dict(self.outcomes),
            "statuses": dict(self.statuses),
        }


class Stats:
    """Counts of generation/model requests by endpoint, outcome and status (not admin calls)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.in_flight = 0
        self.endpoints: dict[str, EndpointStats] = {}
        self.since = time.time()

    def begin(self, endpoint: str) -> EndpointStats:
        self.total += 1
        self.in_flight += 1
        stats = self.endpoints.get(endpoint)
        if stats is None:
            stats = self.endpoints[endpoint] = EndpointStats()
        stats.total += 1
        return stats

    @staticmethod
    def record(stats: EndpointStats, outcome: str, status: int | None) -> None:
        stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1
        if status is not None:
            key = str(status)
            stats.statuses[key] = stats.statuses.get(key, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "in_flight": self.in_flight,
            "since": self.since,
            "endpoints": {name: s.to_dict() for name, s in self.endpoints.items()},
        }


class State:
    """Everything one server mutates: faults, stats, the request log, the id counter."""

    def __init__(self, config: FaultConfig) -> None:
        self.faults = FaultModel(config)
        self.stats = Stats()
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.seq = 0
        self.shutdown = asyncio.Event()

    def next_id(self) -> str:
        self.seq += 1
        return f"fake{self.seq:012d}"

    def reset(self) -> None:
        self.faults.reset()
        self.stats.reset()
        self.requests.clear()


STATE = web.AppKey("fakellm_state", State)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type=JSON)
