"""The scale test starts real processes of its own, as the chaos scenarios do: the same
fixtures (a private ``redis-server``; nothing left behind; the migrated template dropped at the
end of the session), and PostgreSQL, which it needs."""

from __future__ import annotations

import pytest

from bench.chaos import stack
from tests.chaos.conftest import (  # noqa: F401 - fixtures, used by name
    _nothing_left_behind,
    _templates_dropped,
    private_redis,
)
from tests.conftest import require_service


@pytest.fixture
def scratch_postgres() -> None:
    """Its scratch database is created next to DATABASE_URL, which must be PostgreSQL."""
    base = stack.postgres_base()
    require_service("PostgreSQL", base is not None, "set DATABASE_URL to a PostgreSQL database")
    assert base is not None
    require_service("PostgreSQL", stack.postgres_reachable(base), f"{base} does not answer")
