"""Shared fixtures and the service policy.

Tests that need PostgreSQL, Redis or Chromium ask for them through :func:`require_service`.
Without the service they skip, unless ``BREAKWATER_REQUIRE_SERVICES=1`` (CI), where a missing
service fails the test: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connections, transaction
from django.test import TransactionTestCase

ROOT = Path(__file__).resolve().parent.parent
REQUIRE = os.environ.get("BREAKWATER_REQUIRE_SERVICES", "").strip().lower() in {
    "1",
    "true",
    "yes",
    "on",
}


def _with_redis_db(url: str, offset: int) -> str:
    """``url`` with its database number (the path, or ``?db=`` for a unix socket) + ``offset``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        query["db"] = str(int(query.get("db", 0)) + offset)
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path=f"/{int(parts.path.strip('/') or 0) + offset}"))


def _redis_db_per_worker() -> None:
    """Under pytest-xdist, each worker takes its own Redis database: the URL's own plus the
    worker's number (gw0: the URL's, gw1: the next, ...), as pytest-django gives each worker
    its own test database. Shared, the workers' tests would meet in the hot state (breakers and
    rate limits are keyed by agent name, budget windows by ids both test databases repeat),
    and one worker's drainer would take the other's journal entries.

    Django read the settings before this module was imported, but nothing has connected yet
    (clients, caches, channel layers and Celery's connections are made on first use), so the
    settings derived from ``REDIS_URL`` are rewritten here. Children inherit it through
    ``REDIS_URL`` in their environment."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    original = settings.REDIS_URL
    if not worker.startswith("gw") or not original:
        return
    url = _with_redis_db(original, int(worker.removeprefix("gw")))
    os.environ["REDIS_URL"] = settings.REDIS_URL = url
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        if getattr(settings, name) == original:
            setattr(settings, name, url)
    cache: dict[str, Any] = settings.CACHES["default"]
    if cache.get("LOCATION") == original:
        cache["LOCATION"] = url
    layer: dict[str, Any] = settings.CHANNEL_LAYERS["default"]
    for host in layer.get("CONFIG", {}).get("hosts", []):
        if host.get("address") == original:
            host["address"] = url


_redis_db_per_worker()


# Tables a transactional test's clean-up keeps: what ``post_migrate`` would write back at once.
_KEPT_ON_FLUSH = frozenset({"django_content_type", "auth_permission"})


def _truncate_what_the_test_wrote(self: Any) -> None:  # a TransactionTestCase
    """A transactional test's clean-up on PostgreSQL, measured at ~0.23 s a test with Django's
    flush (TRUNCATE of every table, ~0.14 s, then ``post_migrate`` re-creating the content types
    and permissions, ~0.08 s) over some 1,000 transactional tests. Here one query finds the
    tables that hold rows and only those are emptied; content types and permissions are kept instead of truncated and re-created, so no
    ``post_migrate``. What is left is what Django's flush leaves. Django's own flush still runs
    on SQLite and for the cases it special-cases (``available_apps``, serialized rollback)."""
    names = self._databases_names(include_mirrors=False)
    if (
        self.available_apps is not None
        or self.serialized_rollback
        or any(connections[name].vendor != "postgresql" for name in names)
    ):
        _django_fixture_teardown(self)
        return
    for name in names:
        connection = connections[name]
        tables = [
            table
            for table in connection.introspection.django_table_names(
                only_existing=True, include_views=False
            )
            if table not in _KEPT_ON_FLUSH
        ]
        if not tables:
            continue
        qn = connection.ops.quote_name
        probe = " UNION ALL ".join(
            f"SELECT %s WHERE EXISTS (SELECT 1 FROM {qn(table)})"  # noqa: S608 - model tables
            for table in tables
        )
        with transaction.atomic(using=name), connection.cursor() as cursor:
            cursor.execute(probe, tables)
            written = [row[0] for row in cursor.fetchall()]
            if not written:
                continue
            if _may_skip_triggers(connection):
                # DELETE of a few small tables is ~10x faster than TRUNCATE (which makes new
                # files for each table and index); with triggers off, the append-only
                # tables' refusal and the foreign keys' checks do not fire: every row goes.
                cursor.execute("SET LOCAL session_replication_role = replica")
                for table in written:
                    cursor.execute(f"DELETE FROM {qn(table)}")  # noqa: S608 - model tables
            else:
                cursor.execute(f"TRUNCATE {', '.join(qn(t) for t in written)} CASCADE")


_superuser: dict[str, bool] = {}


def _may_skip_triggers(connection: Any) -> bool:
    """``session_replication_role`` needs a superuser (CI's ``postgres``); others TRUNCATE."""
    if connection.alias not in _superuser:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            row = cursor.fetchone()
        _superuser[connection.alias] = bool(row and row[0])
    return _superuser[connection.alias]


_django_fixture_teardown = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]
TransactionTestCase._fixture_teardown = _truncate_what_the_test_wrote  # type: ignore[attr-defined]


def require_service(name: str, available: bool, hint: str) -> None:
    if available:
        return
    message = f"{name} not available: {hint}"
    if REQUIRE:
        pytest.fail(f"{message} (BREAKWATER_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def _redis_reachable() -> bool:
    if not settings.REDIS_URL:
        return False
    import redis

    try:
        return bool(redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session", autouse=True)
def _no_hot_state_from_an_earlier_run() -> None:
    """The suite starts with none of Breakwater's keys (``bw:``) in its Redis database: budget
    windows are keyed by ids and breakers by names that every fresh test database repeats, so
    an earlier run's counters would be taken for this run's. Only the ``bw:`` keys of this
    database (this worker's, under xdist) are removed."""
    if not _redis_reachable():
        return
    import redis

    client = redis.Redis.from_url(str(settings.REDIS_URL), socket_connect_timeout=1)
    try:
        batch = []
        for key in client.scan_iter(match="bw:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_service("Redis", _redis_reachable(), "set REDIS_URL to a reachable server")
    assert settings.REDIS_URL is not None
    return settings.REDIS_URL


@pytest.fixture
def postgres(db: None) -> None:
    from django.db import connection

    require_service(
        "PostgreSQL", connection.vendor == "postgresql", "set DATABASE_URL=postgres://..."
    )


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require_service("Chromium", path is not None, "apt-get install chromium chromium-driver")
    assert path is not None
    return path


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI, refuse to start when the services the suite is meant to exercise are absent."""
    if not REQUIRE or hasattr(session.config, "workerinput"):
        return
    problems = []
    on_postgres = os.environ.get("DATABASE_URL", "").startswith(("postgres", "postgresql"))
    if not on_postgres and "dbmatrix" not in (session.config.option.markexpr or ""):
        problems.append("DATABASE_URL is not a PostgreSQL URL")
    if not _redis_reachable():
        problems.append("REDIS_URL is not set or Redis does not answer")
    if problems:
        raise pytest.UsageError("BREAKWATER_REQUIRE_SERVICES=1 but " + "; ".join(problems))


@pytest.fixture
def demo_yaml() -> str:
    return (ROOT / "demo" / "breakwater.yaml").read_text()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Real hashers cost ~1 s per password; tests only need some hasher."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _isolated_var_dir(settings: Any, tmp_path: Path) -> None:
    """Each test journals into its own directory, so no drainer picks up another test's (or
    another process's) executions."""
    settings.VAR_DIR = tmp_path
