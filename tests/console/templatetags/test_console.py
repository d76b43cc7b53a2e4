"""The console's money, rate, duration and time filters."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from console.templatetags.console import count, ms, pct, usd, when


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "\u2013"),
        (0, "$0.00"),
        (Decimal("2500"), "$2,500.00"),
        (1234.567, "$1,234.57"),
        (0.5, "$0.50"),
        (0.0042, "$0.0042"),
        (0.00012345, "$0.0001234"),
        (-3.2, "-$3.20"),
        ("not a number", "\u2013"),
    ],
    ids=["none", "zero", "thousands", "cents", "half", "small", "tiny", "negative", "garbage"],
)
def test_money_shows_cents_and_keeps_small_sums_visible(value: object, shown: str) -> None:
    assert usd(value) == shown


@pytest.mark.parametrize(
    ("value", "digits", "shown"),
    [(0.9995, 2, "99.95%"), (1, 2, "100%"), (0.1, 0, "10%"), (0, 0, "0%"), (None, 2, "\u2013")],
    ids=["two-digits", "whole", "no-digits", "zero", "none"],
)
def test_rates_are_percentages(value: object, digits: int, shown: str) -> None:
    assert pct(value, digits) == shown


def test_durations_switch_to_seconds_from_ten_seconds() -> None:
    assert (ms(1234.4), ms(12_500), ms(None)) == ("1,234 ms", "12.5 s", "\u2013")


def test_counts_have_thousands_separators() -> None:
    assert count(1_500_000) == "1,500,000"


def test_times_are_utc_time_elements_for_the_browser_to_localise() -> None:
    html = str(when(datetime(2026, 12, 1, 9, 30, tzinfo=UTC)))
    assert html == (
        '<time datetime="2026-12-01T09:30:00Z" title="2026-12-01 09:30:00 UTC">'
        "2026-12-01 09:30:00 UTC</time>"
    )
    assert str(when(1796117400.0)).startswith('<time datetime="2026-12-01T09:30:00Z"')
