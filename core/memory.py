"""Memory watch: every process's resident memory, a growth detector, and an injectable leak.

The reference deployment's third incident was a memory leak found by the OOM killer. Here every
process role (``serve`` and its workers, a Celery worker process, ``drain_records``, beat) runs a
:class:`MemoryWatch`: a daemon thread that reads this process's RSS from ``/proc/self/statm``
every ``BREAKWATER_MEMORY_SAMPLE_S`` seconds (a read of one small file: no work per request),
publishes it, and feeds a :class:`GrowthDetector`.

The detector is pure (its caller gives it the time): it ignores a warm-up (a process loads its
modules, pools and caches, and grows while it does), then fits a least-squares line to the RSS
samples of the last ``window_s`` seconds. It fires when

* the slope exceeds the growth threshold, the line fits (R² at least ``min_r2``: a single step,
  a cache filled at once, fits a line with R² 0.75 at best) and each third of the window grows
  on its own (at least half the threshold): a burst of growth that started and ended inside the
  window (a cache filling for a few minutes, a long warm-up) leaves a third flat; or
* the RSS is over the limit (when a limit is set).

It clears when the slope falls under half the threshold (and the RSS under the limit): the
hysteresis keeps a slope hovering at the threshold from flapping.

:func:`leak_start` / :func:`leak_stop` inject a leak into this process, for the memory-leak
drill (``BREAKWATER_MEMORY_LEAK_BYTES_PER_S`` starts one in every serving process at start-up).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

log = logging.getLogger("breakwater.memory")

MB = 1024 * 1024

RESIDENT_MEMORY = Gauge(
    "breakwater_process_resident_memory_bytes",
    "Resident memory (RSS) of this Breakwater process, by role; one series per live process.",
    ["role"],
    multiprocess_mode="liveall",
)
MEMORY_GROWTH = Gauge(
    "breakwater_memory_growth_bytes_per_second",
    "RSS growth of this process over the memory window (least-squares slope; 0 during warm-up).",
    ["role"],
    multiprocess_mode="liveall",
)
RECYCLES = Counter(
    "breakwater_process_recycles_total",
    "Worker processes replaced on purpose or after they died, by role and reason.",
    ["role", "reason"],
)

# Why a process was recycled: a request or task limit, its RSS limit, or it died on its own.
RECYCLE_REASONS = ("max_requests", "max_tasks", "max_rss", "died")


# --- reading RSS ------------------------------------------------------------------------------

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def parse_statm(text: str, page_size: int = _PAGE_SIZE) -> int:
    """RSS in bytes from the text of ``/proc/<pid>/statm`` (its second field, in pages)."""
    fields = text.split()
    if len(fields) < 2 or not fields[1].isdigit():
        raise ValueError(f"/proc/self/statm: expected 'size resident ...' pages, got {text!r}")
    return int(fields[1]) * page_size


def rss_bytes(pid: int | str = "self") -> int:
    """This process's (or ``pid``'s) resident memory in bytes, from ``/proc``."""
    with open(f"/proc/{pid}/statm") as statm:
        return parse_statm(statm.read())


# --- the detector -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrowthSettings:
    """``growth_bytes_per_s`` 0: the slope never fires; ``limit_bytes`` 0: no limit."""

    window_s: float = 600.0
    warmup_s: float = 300.0
    growth_bytes_per_s: float = 50 * MB / 3600
    limit_bytes: int = 0
    min_r2: float = 0.8
    min_samples: int = 10

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(f"window_s: must be > 0, got {self.window_s}")
        if self.warmup_s < 0:
            raise ValueError(f"warmup_s: must be >= 0, got {self.warmup_s}")
        if self.growth_bytes_per_s < 0:
            raise ValueError(f"growth_bytes_per_s: must be >= 0, got {self.growth_bytes_per_s}")
        if self.limit_bytes < 0:
            raise ValueError(f"limit_bytes: must be >= 0, got {self.limit_bytes}")
        if not 0 <= self.min_r2 <= 1:
            raise ValueError(f"min_r2: must be between 0 and 1, got {self.min_r2}")
        if self.min_samples < 4:
            raise ValueError(f"min_samples: must be >= 4, got {self.min_samples}")


@dataclass(frozen=True, slots=True)
class Fit:
    slope: float  # bytes per second
    r2: float


def least_squares(points: list[tuple[float, float]]) -> Fit:
    """Slope and coefficient of determination of the least-squares line through ``points``."""
    n = len(points)
    if n < 2:
        return Fit(0.0, 0.0)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    syy = sum((y - mean_y) ** 2 for _, y in points)
    if sxx == 0:
        return Fit(0.0, 0.0)
    slope = sxy / sxx
    r2 = 0.0 if syy == 0 else (sxy * sxy) / (sxx * syy)
    return Fit(slope, r2)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the detector makes of the samples so far.

    ``slope``: None during warm-up and until the window holds enough samples. ``firing``: the
    growth or the limit condition holds; ``reason``: ``growth`` or ``limit`` when firing.
    ``opened`` / ``cleared``: this observation changed ``firing``.
    """

    rss: int
    slope: float | None
    r2: float | None
    firing: bool
    reason: str | None
    opened: bool = False
    cleared: bool = False


class GrowthDetector:
    """Feed it ``observe(at, rss)`` in time order; ``started_at`` is the process's start."""

    def __init__(self, settings: GrowthSettings, *, started_at: float) -> None:
        self.settings = settings
        self.started_at = started_at
        self._samples: deque[tuple[float, float]] = deque()
        self.firing = False
        self.reason: str | None = None

    def _growing(self, points: list[tuple[float, float]], fit: Fit) -> bool:
        threshold = self.settings.growth_bytes_per_s
        if threshold <= 0 or fit.slope <= threshold or fit.r2 < self.settings.min_r2:
            return False
        # Growth across the whole window, not a burst inside it: every third grows on its own.
        start, span = points[0][0], points[-1][0] - points[0][0]
        for third in range(3):
            low, high = start + span * third / 3, start + span * (third + 1) / 3
            part = [p for p in points if low <= p[0] <= high]
            if least_squares(part).slope < threshold / 2:
                return False
        return True

    def observe(self, at: float, rss: int) -> Verdict:
        s = self.settings
        if at < self.started_at + s.warmup_s:
            return Verdict(rss=rss, slope=None, r2=None, firing=False, reason=None)
        self._samples.append((at, float(rss)))
        while self._samples and self._samples[0][0] < at - s.window_s:
            self._samples.popleft()
        points = list(self._samples)
        # A verdict needs enough samples spanning most of a window (not the first few seconds).
        covered = points[-1][0] - points[0][0] >= 0.8 * s.window_s
        if len(points) < s.min_samples or not covered:
            return Verdict(rss=rss, slope=None, r2=None, firing=self.firing, reason=self.reason)
        fit = least_squares(points)
        over_limit = s.limit_bytes > 0 and rss > s.limit_bytes
        half = s.growth_bytes_per_s / 2
        # Hysteresis: growth that fired keeps firing until the slope is under half the threshold.
        still_growing = self.firing and half > 0 and fit.slope >= half
        was = self.firing
        if over_limit:
            self.firing, self.reason = True, "limit"
        elif self._growing(points, fit) or still_growing:
            self.firing, self.reason = True, "growth"
        else:
            self.firing, self.reason = False, None
        return Verdict(
            rss=rss,
            slope=fit.slope,
            r2=fit.r2,
            firing=self.firing,
            reason=self.reason,
            opened=self.firing and not was,
            cleared=was and not self.firing,
        )


# --- the watch thread ---------------------------------------------------------------------------

OnVerdict = Callable[[Verdict], None]


class MemoryWatch:
    """Samples this process's RSS every ``every_s`` seconds on a daemon thread.

    ``on_open`` / ``on_clear`` run on that thread when the detector starts or stops firing (the
    incident's side: ``incidents.memory``). ``on_sample`` runs after each sample (``serve``'s
    worker checks its RSS limit there). ``stop()`` calls ``on_clear`` if still firing: the
    process that grew is going away.
    """

    def __init__(
        self,
        role: str,
        settings: GrowthSettings,
        *,
        every_s: float = 5.0,
        on_open: OnVerdict | None = None,
        on_clear: OnVerdict | None = None,
        on_sample: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        read_rss: Callable[[], int] = rss_bytes,
    ) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s: must be > 0, got {every_s}")
        self.role = role
        self.pid = os.getpid()
        self.every_s = every_s
        self.detector = GrowthDetector(settings, started_at=clock())
        self._on_open = on_open
        self._on_clear = on_clear
        self._on_sample = on_sample
        self._clock = clock
        self._read_rss = read_rss
        self._rss_gauge = RESIDENT_MEMORY.labels(role=role)
        self._growth_gauge = MEMORY_GROWTH.labels(role=role)
        self._growth_gauge.set(0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: Verdict | None = None
        # What the process's owner says about it (``serve`` sets them on a supervised worker):
        # the drill's endpoint reports them, so a drill knows whether a leak here is recycled.
        self.supervised = False
        self.recycle_rss_bytes = 0  # 0: never recycled on its RSS

    @property
    def uptime_s(self) -> float:
        return self._clock() - self.detector.started_at

    def sample(self) -> Verdict | None:
        """One sample (the thread calls it; tests call it with a fake clock)."""
        try:
            rss = self._read_rss()
        except (OSError, ValueError):
            log.warning("could not read this process's RSS", exc_info=True)
            return None
        self._rss_gauge.set(rss)
        verdict = self.detector.observe(self._clock(), rss)
        if verdict.slope is not None:
            self._growth_gauge.set(verdict.slope)
        self.last = verdict
        for callback, due in ((self._on_open, verdict.opened), (self._on_clear, verdict.cleared)):
            if due and callback is not None:
                self._call(callback, verdict)
        if self._on_sample is not None:
            try:
                self._on_sample(rss)
            except Exception:
                log.exception("memory watch: on_sample failed")
        return verdict

    @staticmethod
    def _call(callback: OnVerdict, verdict: Verdict) -> None:
        try:
            callback(verdict)
        except Exception:
            log.exception("memory watch: incident update failed")

    def start(self) -> MemoryWatch:
        global _current
        _current = self
        if self._thread is None:
            self.sample()
            self._thread = threading.Thread(target=self._loop, name="bw-memory", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if self.detector.firing and self._on_clear is not None and self.last is not None:
            self.detector.firing = False
            self._call(self._on_clear, self.last)


_current: MemoryWatch | None = None


def current_watch() -> MemoryWatch | None:
    """The memory watch this process started last (None: none, or it was started in the
    parent of this forked process)."""
    watch = _current
    return watch if watch is not None and watch.pid == os.getpid() else None


# --- the injectable leak (drills) ---------------------------------------------------------------

# The most a drill may leak: a leak is meant to be seen and recycled, not to take the host down
# (the drill endpoint refuses more; docs/INTERFACES.md §4).
LEAK_MAX_BYTES_PER_S = 100 * MB
LEAK_DEFAULT_MAX_BYTES = 1024 * MB


class _Leak:
    """Allocates ``bytes_per_second`` of touched memory (so it is resident) in ticks, and keeps
    it until :func:`leak_stop`; it stops growing once it holds ``max_bytes`` (0: no cap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._held = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rate = 0.0
        self.max_bytes = 0

    def start(self, bytes_per_second: float, *, max_bytes: int = 0, tick_s: float = 0.25) -> None:
        if not math.isfinite(bytes_per_second) or bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second: must be > 0, got {bytes_per_second}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be >= 0, got {max_bytes}")
        self.stop(free=False)
        with self._lock:
            self.rate = bytes_per_second
            self.max_bytes = max_bytes
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(bytes_per_second, max_bytes, tick_s, self._stop),
                daemon=True,
                name="bw-leak",
            )
            self._thread.start()

    def _run(self, rate: float, cap: int, tick_s: float, stop: threading.Event) -> None:
        due = 0.0
        last = time.monotonic()
        while not stop.wait(tick_s):
            now = time.monotonic()
            due += rate * (now - last)
            last = now
            size = int(due)
            if cap:
                size = min(size, cap - self._held)
            if size > 0:
                due -= size
                chunk = b"\xa5" * size  # written, so its pages are resident
                with self._lock:
                    self._chunks.append(chunk)
                    self._held += size
                    full = bool(cap) and self._held >= cap
                    if full:
                        self.rate = 0.0
                if full:
                    log.warning("memory drill: the leak reached its cap (%d bytes); holding", cap)
                    return

    def stop(self, *, free: bool = True) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            self.rate = 0.0
            self.max_bytes = 0
        if thread is not None:
            thread.join(timeout=5)
        if free:
            with self._lock:
                self._chunks.clear()
                self._held = 0

    def held(self) -> int:
        with self._lock:
            return self._held


_leak = _Leak()


def leak_start(bytes_per_second: float, *, max_bytes: int = 0) -> None:
    """Start leaking ``bytes_per_second`` in this process (replaces a running leak; keeps what
    was leaked so far), until it holds ``max_bytes`` (0: no cap). For drills: the memory watch
    must see it, the worker must be recycled."""
    log.warning("memory drill: leaking %.0f bytes/s in process %d", bytes_per_second, os.getpid())
    _leak.start(bytes_per_second, max_bytes=max_bytes)


def leak_stop() -> int:
    """Stop the leak and free what it held; returns the bytes it had leaked."""
    held = _leak.held()
    _leak.stop(free=True)
    return held


def leak_status() -> tuple[float, int, int]:
    """(bytes per second now, 0 when stopped or capped; bytes held; the cap, 0: none)."""
    return _leak.rate, _leak.held(), _leak.max_bytes
