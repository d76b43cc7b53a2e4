"""The console's money, rate, duration and time filters, and the paged-list tag."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.template import Context, Template, TemplateSyntaxError
from django.test import RequestFactory

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


LIST = (
    '{% load console %}{% paged_list none_match="No rows match." show_all="Show every row" '
    'older="Older rows" %}<table>{{ rows|length }} rows</table>{% empty %}Nothing yet.'
    "{% endpaged_list %}"
)


def _list(**context: object) -> str:
    request = RequestFactory().get("/rows/")
    values = {"rows": [], "errors": [], "filtered": False, "paged": False, "next_query": None}
    return Template(LIST).render(Context({"request": request, **values, **context}))


def test_a_paged_list_shows_its_table_and_the_pager_when_there_are_rows() -> None:
    html = _list(rows=[1, 2], next_query="after=abc", paged=True, first_query="")
    assert '<div class="table-wrap"><table>2 rows</table></div>' in html
    assert '<a href="?">Newest</a>' in html
    assert '<a href="?after=abc" rel="next">Older rows</a>' in html
    assert "Nothing yet." not in html


def test_a_paged_list_says_nothing_matches_a_filter_with_a_link_to_every_row() -> None:
    html = _list(filtered=True)
    assert '<p class="empty">No rows match. <a href="/rows/">Show every row</a>.</p>' in html
    assert "<table>" not in html
    assert 'class="pager"' not in html
    assert '<p class="empty">Nothing yet.</p>' in _list()


def test_a_paged_list_shows_errors_instead_of_an_empty_text() -> None:
    html = _list(errors=["after: not a cursor"])
    assert '<li class="message error">after: not a cursor</li>' in html
    assert 'class="empty"' not in html


def test_a_paged_list_without_its_three_texts_is_a_template_error() -> None:
    with pytest.raises(TemplateSyntaxError, match="none_match, older, show_all"):
        Template('{% load console %}{% paged_list older="x" %}{% endpaged_list %}')
