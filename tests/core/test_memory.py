"""The memory watch: RSS from /proc, the growth detector on a fake clock, and the drill's leak."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from core.memory import (
    MB,
    GrowthDetector,
    GrowthSettings,
    MemoryWatch,
    Verdict,
    leak_start,
    leak_status,
    leak_stop,
    least_squares,
    parse_statm,
    rss_bytes,
)

# Small numbers that keep the tests readable: a 60 s window after a 30 s warm-up, samples every
# 2 s, 10 MB/hour is the threshold (about 2.9 KB/s).
SETTINGS = GrowthSettings(window_s=60, warmup_s=30, growth_bytes_per_s=10 * MB / 3600)
EVERY_S = 2.0
BASE = 100 * MB


def _run(
    detector: GrowthDetector, rss_at: object, start: float, end: float, every_s: float = EVERY_S
) -> list[Verdict]:
    verdicts = []
    at = start
    while at <= end:
        verdicts.append(detector.observe(at, int(rss_at(at))))  # type: ignore[operator]
        at += every_s
    return verdicts


def test_least_squares_recovers_a_line_exactly() -> None:
    fit = least_squares([(x, 3.0 * x + 7) for x in range(10)])
    assert fit.slope == pytest.approx(3.0)
    assert fit.r2 == pytest.approx(1.0)


def test_least_squares_of_a_flat_series_has_no_slope_and_no_fit() -> None:
    fit = least_squares([(x, 5.0) for x in range(10)])
    assert fit.slope == 0
    assert fit.r2 == 0


def test_a_steady_leak_after_warm_up_fires_once_with_its_slope() -> None:
    detector = GrowthDetector(SETTINGS, started_at=0.0)
    rate = 20 * MB / 3600  # twice the threshold
    verdicts = _run(detector, lambda t: BASE + rate * t, 0, 200)

    opened = [v for v in verdicts if v.opened]
    assert len(opened) == 1
    assert opened[0].reason == "growth"
    assert opened[0].slope == pytest.approx(rate, rel=0.01)
    assert verdicts[-1].firing


def test_nothing_is_judged_during_warm_up_or_before_a_window_is_covered() -> None:
    detector = GrowthDetector(SETTINGS, started_at=0.0)
    rate = 100 * MB / 3600
    verdicts = _run(detector, lambda t: BASE + rate * t, 0, 30 + 0.8 * 60 - EVERY_S)
    assert all(v.slope is None and not v.firing for v in verdicts)


def test_growth_during_warm_up_then_flat_opens_nothing() -> None:
    # A process loading its modules and filling its pools: steep at first, then flat.
    detector = GrowthDetector(SETTINGS, started_at=0.0)

    def rss(t: float) -> float:
        return BASE + 50 * MB * min(t, 25.0) / 25.0

    verdicts = _run(detector, rss, 0, 600)
    assert not any(v.firing for v in verdicts)


def test_a_single_step_does_not_fire_even_with_a_steep_fitted_slope() -> None:
    # A cache filled at once at t=120: the fitted line over a window around it is steep and
    # fits fairly well, but each half of the window is flat.
    detector = GrowthDetector(SETTINGS, started_at=0.0)
    verdicts = _run(detector, lambda t: BASE + (30 * MB if t >= 120 else 0), 0, 400)
    steep = [v for v in verdicts if v.slope is not None and v.slope > SETTINGS.growth_bytes_per_s]
    assert steep  # the plain least-squares slope alone would have fired
    assert not any(v.firing for v in verdicts)


def test_a_single_step_fits_a_line_too_poorly_to_fire() -> None:
    # Whatever its height, a step's least-squares fit has R² <= 0.75 (0.75 when centred).
    points = [(float(x), 0.0 if x < 30 else 30.0 * MB) for x in range(0, 61, 2)]
    assert least_squares(points).r2 == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("rate_times_threshold", [3, 5, 20])
def test_a_burst_of_growth_a_third_of_a_window_long_does_not_fire(
    rate_times_threshold: float,
) -> None:
    # A cache filling for 20 s of a 60 s window, then full: a steep, well-fitted slope in the
    # windows around it, but a third of each such window is flat.
    detector = GrowthDetector(SETTINGS, started_at=0.0)
    rate = rate_times_threshold * SETTINGS.growth_bytes_per_s

    def rss(t: float) -> float:
        return BASE + rate * min(max(t - 150.0, 0.0), 20.0)

    verdicts = _run(detector, rss, 0, 400)
    fitted = [v for v in verdicts if v.slope and v.slope > SETTINGS.growth_bytes_per_s]
    assert any(v.r2 is not None and v.r2 >= SETTINGS.min_r2 for v in fitted)
    assert not any(v.firing for v in verdicts)


def test_growth_over_two_thirds_of_a_window_fires() -> None:
    detector = GrowthDetector(SETTINGS, started_at=0.0)
    rate = 3 * SETTINGS.growth_bytes_per_s
    verdicts = _run(detector, lambda t: BASE + rate * min(max(t - 150.0, 0.0), 40.0), 0, 400)
    assert any(v.firing for v in verdicts)


def test_a_noisy_steady_leak_with_the_default_settings_fires_once_and_stays_firing() -> None:
    settings = GrowthSettings()  # 300 s warm-up, 600 s window, 50 MB/hour
    detector = GrowthDetector(settings, started_at=0.0)
    noise = random.Random(1)
    rate = 1.5 * settings.growth_bytes_per_s
    verdicts = _run(
        detector, lambda t: BASE + rate * t + noise.uniform(-2 * MB, 2 * MB), 0, 7200, every_s=5
    )
    opened = [i * 5 for i, v in enumerate(verdicts) if v.opened]
    assert len(opened) == 1
    assert 300 + 0.8 * 600 <= opened[0] <= 300 + 600 + 60
    assert not any(v.cleared for v in verdicts)


def test_noise_around_a_flat_level_does_not_fire() -> None:
    noise = random.Random(7)
    detector = GrowthDetector(SETTINGS, started_at=0.0)
    verdicts = _run(detector, lambda t: BASE + noise.uniform(-2 * MB, 2 * MB), 0, 1000)
    assert not any(v.firing for v in verdicts)


def test_growth_below_the_threshold_does_not_fire() -> None:
    detector = GrowthDetector(SETTINGS, started_at=0.0)
    rate = 0.8 * SETTINGS.growth_bytes_per_s
    verdicts = _run(detector, lambda t: BASE + rate * t, 0, 400)
    assert not any(v.firing for v in verdicts)


def test_growth_that_stops_clears_once_the_window_is_flat_again() -> None:
    detector = GrowthDetector(SETTINGS, started_at=0.0)
    rate = 20 * MB / 3600

    def rss(t: float) -> float:
        return BASE + rate * min(t, 200.0)

    verdicts = _run(detector, rss, 0, 400)
    assert [v.opened for v in verdicts].count(True) == 1
    cleared = [i for i, v in enumerate(verdicts) if v.cleared]
    assert len(cleared) == 1
    at = cleared[0] * EVERY_S
    assert 200 < at <= 200 + 60  # within one window of the growth stopping
    assert not verdicts[-1].firing


def test_an_rss_over_the_limit_fires_and_clears_when_it_falls_back() -> None:
    limited = GrowthSettings(window_s=60, warmup_s=30, growth_bytes_per_s=0, limit_bytes=BASE)
    detector = GrowthDetector(limited, started_at=0.0)

    def rss(t: float) -> float:
        return BASE + (MB if 150 <= t < 250 else -MB)

    verdicts = _run(detector, rss, 0, 400)
    (opened,) = [v for v in verdicts if v.opened]
    assert opened.reason == "limit"
    assert [v.cleared for v in verdicts].count(True) == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("window_s", 0, "window_s: must be > 0, got 0"),
        ("warmup_s", -1, "warmup_s: must be >= 0, got -1"),
        ("growth_bytes_per_s", -1, "growth_bytes_per_s: must be >= 0, got -1"),
        ("limit_bytes", -1, "limit_bytes: must be >= 0, got -1"),
        ("min_r2", 2, "min_r2: must be between 0 and 1, got 2"),
        ("min_samples", 2, "min_samples: must be >= 4, got 2"),
    ],
)
def test_bad_detector_settings_are_refused_naming_the_field(
    field: str, value: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        GrowthSettings(**{field: value})  # type: ignore[arg-type]


def test_statm_gives_resident_pages_times_the_page_size() -> None:
    assert parse_statm("25000 1200 300 10 0 900 0\n", page_size=4096) == 1200 * 4096
    with pytest.raises(ValueError, match="/proc/self/statm"):
        parse_statm("garbage")


def test_this_processs_rss_agrees_with_proc_status() -> None:
    text = Path("/proc/self/status").read_text()
    status = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    vm_rss = int(status["VmRSS"].split()[0]) * 1024
    assert abs(rss_bytes() - vm_rss) < 8 * MB  # read a moment apart


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sample_value(name: str, role: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"role": role})


def test_the_watch_publishes_rss_and_slope_and_reports_opening_and_clearing() -> None:
    clock = FakeClock()
    rss: dict[str, float] = {"now": BASE}
    events: list[tuple[str, Verdict]] = []
    watch = MemoryWatch(
        "test-watch",
        SETTINGS,
        every_s=EVERY_S,
        clock=clock,
        read_rss=lambda: int(rss["now"]),
        on_open=lambda v: events.append(("open", v)),
        on_clear=lambda v: events.append(("clear", v)),
    )
    assert _sample_value("breakwater_memory_growth_bytes_per_second", "test-watch") == 0
    rate = 20 * MB / 3600
    for _ in range(100):
        clock.now += EVERY_S
        rss["now"] += rate * EVERY_S
        watch.sample()
    assert _sample_value("breakwater_process_resident_memory_bytes", "test-watch") == int(
        rss["now"]
    )
    slope = _sample_value("breakwater_memory_growth_bytes_per_second", "test-watch")
    assert slope == pytest.approx(rate, rel=0.01)
    assert [kind for kind, _ in events] == ["open"]

    watch.stop()  # the process goes away: what it opened is cleared
    assert [kind for kind, _ in events] == ["open", "clear"]


def test_a_failing_incident_callback_does_not_stop_the_watch() -> None:
    clock = FakeClock()
    level = {"now": float(BASE)}

    def boom(verdict: Verdict) -> None:
        raise RuntimeError("database down")

    samples: list[int] = []
    watch = MemoryWatch(
        "test-boom",
        SETTINGS,
        every_s=EVERY_S,
        clock=clock,
        read_rss=lambda: int(level["now"]),
        on_open=boom,
        on_sample=samples.append,
    )
    for _ in range(60):
        clock.now += EVERY_S
        level["now"] += 100 * MB / 3600 * EVERY_S
        watch.sample()
    assert watch.detector.firing
    assert len(samples) == 60


# Run in a fresh interpreter: late in a full run this process's heap holds freed space (and
# glibc's mmap threshold has risen), so the leak's chunks may reuse pages already resident and
# the RSS delta would say little about whether the leak's own pages are.
_LEAK_PROBE = """
import json, time
from core.memory import MB, leak_start, leak_status, leak_stop, rss_bytes
before = rss_bytes()
leak_start(40 * MB)
deadline = time.monotonic() + 10
while leak_status()[1] < 10 * MB and time.monotonic() < deadline:
    time.sleep(0.05)
rate, held, cap = leak_status()
grown = rss_bytes() - before
freed = leak_stop()
print(json.dumps({"rate": rate, "held": held, "cap": cap, "grown": grown, "freed": freed,
                  "after": leak_status()}))
"""


def test_the_injected_leak_grows_this_processs_rss_until_stopped() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LEAK_PROBE],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["held"] >= 10 * MB, "the leak allocated nothing"
    assert probe["rate"] == 40 * MB
    assert probe["cap"] == 0
    assert probe["grown"] >= probe["held"] // 2  # the pages are written, so resident
    assert probe["freed"] >= 10 * MB
    assert probe["after"] == [0.0, 0, 0]


def test_a_capped_leak_stops_growing_at_its_cap_and_holds_it() -> None:
    leak_start(40 * MB, max_bytes=6 * MB)
    try:
        deadline = time.monotonic() + 10
        while leak_status()[0] > 0:  # the rate falls to 0 once the cap is reached
            assert time.monotonic() < deadline, "the leak never reached its cap"
            time.sleep(0.05)
        time.sleep(0.3)  # a tick after the cap: nothing more
        assert leak_status() == (0.0, 6 * MB, 6 * MB)
    finally:
        assert leak_stop() == 6 * MB


def test_a_leak_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="bytes_per_second: must be > 0, got 0"):
        leak_start(0)
