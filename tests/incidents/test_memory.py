"""Memory growth becomes an incident per process, resolved when the growth stops or the process
goes away; a normal warm-up opens nothing."""

from __future__ import annotations

import os
import socket

import pytest
from django.test import override_settings

from core.memory import MB
from incidents.memory import memory_incident_resolve_dead, memory_watch
from incidents.models import Incident, IncidentStatus, Severity

# Incidents are written with fresh connections, as on the watch's thread.
pytestmark = pytest.mark.django_db(transaction=True)

FAST = {
    "BREAKWATER_MEMORY_SAMPLE_S": 2.0,
    "BREAKWATER_MEMORY_WINDOW_S": 60.0,
    "BREAKWATER_MEMORY_WARMUP_S": 30.0,
    "BREAKWATER_MEMORY_GROWTH_MB_PER_HOUR": 10.0,
    "BREAKWATER_MEMORY_LIMIT_MB": 0.0,
}
KEY = f"memory:serve:{socket.gethostname()}:{os.getpid()}"


class Process:
    """A fake clock and a fake RSS, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.rss: float = 200 * MB

    def clock(self) -> float:
        return self.now

    def read(self) -> int:
        return int(self.rss)


def _watch(process: Process):  # type: ignore[no-untyped-def]
    return memory_watch("serve", clock=process.clock, read_rss=process.read)


def _run(watch, process: Process, seconds: float, grow_per_s: float) -> None:  # type: ignore[no-untyped-def]
    end = process.now + seconds
    while process.now < end:
        process.now += 2.0
        process.rss += grow_per_s * 2.0
        watch.sample()


@override_settings(**FAST)
def test_a_leaking_process_opens_one_memory_growth_incident_keyed_by_role_host_and_pid() -> None:
    process = Process()
    watch = _watch(process)
    _run(watch, process, 300, grow_per_s=60 * MB / 3600)

    incident = Incident.objects.get()
    assert incident.kind == "memory_growth"
    assert incident.dedup_key == KEY
    assert incident.status == IncidentStatus.OPEN
    assert incident.severity == Severity.MAJOR
    assert f"serve process {os.getpid()}" in incident.title
    (opened,) = incident.events.all()
    assert "growing 60.0 MiB/hour" in opened.message
    assert opened.data["pid"] == os.getpid()
    assert opened.data["role"] == "serve"


@override_settings(**FAST)
def test_the_incident_resolves_when_the_growth_stops() -> None:
    process = Process()
    watch = _watch(process)
    _run(watch, process, 200, grow_per_s=60 * MB / 3600)
    _run(watch, process, 120, grow_per_s=0)

    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.events.last().message.startswith("growth stopped")  # type: ignore[union-attr]


@override_settings(**FAST)
def test_the_incident_resolves_when_the_process_stops() -> None:
    process = Process()
    watch = _watch(process)
    _run(watch, process, 200, grow_per_s=60 * MB / 3600)
    watch.stop()

    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.events.last().message == "process stopped"  # type: ignore[union-attr]


@override_settings(**FAST)
def test_a_normal_warm_up_opens_no_incident() -> None:
    # 80 MB in the first 20 s (imports, pools, caches), then a flat line with small noise.
    process = Process()
    watch = _watch(process)
    _run(watch, process, 20, grow_per_s=4 * MB)
    for i in range(300):
        process.now += 2.0
        process.rss += MB if i % 2 else -MB
        watch.sample()
    assert not Incident.objects.exists()


@override_settings(**{**FAST, "BREAKWATER_MEMORY_LIMIT_MB": 250.0})
def test_an_rss_over_the_limit_opens_the_incident_too() -> None:
    process = Process()
    process.rss = 300 * MB
    watch = _watch(process)
    _run(watch, process, 120, grow_per_s=0)

    incident = Incident.objects.get()
    assert "over the limit (250 MiB)" in incident.events.get().message


@override_settings(**FAST)
def test_a_dead_workers_incident_is_resolved_by_its_supervisor() -> None:
    process = Process()
    watch = _watch(process)
    _run(watch, process, 200, grow_per_s=60 * MB / 3600)

    memory_incident_resolve_dead("serve", os.getpid(), "died")
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.events.last().message == "process exited (died)"  # type: ignore[union-attr]
