"""The memory-leak drill against a real ``serve --workers 2 --max-rss-mb M`` on PostgreSQL (this
test's database, flushed after it) and a private Redis, with a memory watch of short windows:
``manage.py drill memory-leak`` makes one worker leak, and what it prints is checked against
what happened (the incident in the database, the worker's pid gone, every execution stored
once)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.live import ROOT, embedded_env, free_port, private_redis, wait_http

pytestmark = pytest.mark.django_db(transaction=True)

# Short windows, so that the drill takes seconds: the detector judges 4 s of samples every
# 0.25 s, and only a growth past 5 MiB/s (ordinary traffic on a warm worker grows far less).
WATCH = {
    "BREAKWATER_MEMORY_SAMPLE_S": "0.25",
    "BREAKWATER_MEMORY_WINDOW_S": "4",
    "BREAKWATER_MEMORY_WARMUP_S": "2",
    "BREAKWATER_MEMORY_GROWTH_MB_PER_HOUR": str(5 * 3600),
}
MAX_RSS_MB = 260  # a warm worker here is 120-140 MiB
SERVE = [sys.executable, "manage.py", "serve"]
DRILL = [sys.executable, "manage.py", "drill", "memory-leak"]


def database_url() -> str:
    """This test's PostgreSQL database (the suite's server, pytest-django's test database)."""
    db = settings.DATABASES["default"]
    assert db["ENGINE"].endswith("postgresql")
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def deployment(postgres: None, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    with private_redis() as (redis_url, _):
        env = {"DATABASE_URL": database_url(), "REDIS_URL": redis_url}
        port = free_port()
        log = (tmp_path / "serve.log").open("w")
        process = subprocess.Popen(
            [*SERVE, "--port", str(port), "--workers", "2", "--max-rss-mb", str(MAX_RSS_MB)],
            cwd=ROOT,
            env=embedded_env(tmp_path, **env, **WATCH),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/healthz", deadline_s=60)
            yield url, env
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            log.close()


def test_one_leaking_worker_is_detected_recycled_and_no_request_is_lost(
    deployment: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = deployment
    done = subprocess.run(
        [*DRILL, "--url", url, "--json", "--seconds", "45", "--warmup-s", "1", "--rate", "4"],
        cwd=ROOT,
        env=embedded_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "passed", result
    assert done.returncode == 0
    got: dict[str, Any] = result["figures"]["values"]
    assert got["workers"] == 2
    assert got["recycle_rss_bytes"] == MAX_RSS_MB * 1024 * 1024
    # The worker grew past its limit (a limit is a trigger: it grows while its replacement
    # starts), the detector saw it first, and the supervisor replaced it.
    assert got["rss_peak_bytes"] > got["recycle_rss_bytes"]
    assert 0 < got["time_to_detect_s"] < got["time_to_recycle_s"]
    assert got["recycles_max_rss"] == 1
    assert got["replacement"] not in (None, got["pid"])
    # What the deployment recorded agrees with what the drill printed.
    from incidents.models import Incident

    incident = Incident.objects.get(pk=got["incident_id"])
    assert incident.kind == "memory_growth"
    assert incident.dedup_key.endswith(f":{got['pid']}")
    assert incident.status == "resolved"
    assert got["resolution"] == "process stopped"
    # Every request answered by the model and stored once.
    assert got["requests"] >= 10
    assert got["answered"] == got["requests"] == got["recorded"] == got["recorded_distinct"]
