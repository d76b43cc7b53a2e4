"""The quick fault scenarios of ``make chaos`` (bench/chaos), run as tests.

Each test starts real processes of its own (fakellm, ``serve``, and in distributed mode a private
``redis-server`` on a port of 6391-6399, ``drain_records`` and a Celery worker), on a scratch
database created next to ``DATABASE_URL`` when it is PostgreSQL (SQLite otherwise), and asserts
the scenario's targets. The processes and databases are gone when the test ends.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from bench.chaos import stack
from tests.conftest import require_service


@pytest.fixture
def private_redis() -> None:
    """Distributed scenarios start (and kill) their own ``redis-server``: it must be installed
    and one port of 6391-6399 free."""
    require_service(
        "redis-server", shutil.which("redis-server") is not None, "apt-get install redis-server"
    )
    free = [p for p in stack.REDIS_PORTS if not stack.port_in_use(p)]
    require_service("a free port in 6391-6399", bool(free), "stop what listens there")


@pytest.fixture
def scratch_database() -> None:
    """When DATABASE_URL is PostgreSQL the scenarios create databases next to it: the server
    must answer (else they run on SQLite, which needs nothing)."""
    base = stack.postgres_base()
    if base is not None:
        require_service("PostgreSQL", stack.postgres_reachable(base), f"{base} does not answer")


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    yield
    stack.stop_all()


@pytest.fixture(scope="session", autouse=True)
def _templates_dropped() -> Iterator[None]:
    """The migrated template the scenarios' databases are copied from lives for the session."""
    yield
    stack.drop_templates()
