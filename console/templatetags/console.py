"""Template filters for the console: money, rates, durations and times (docs/INTERFACES.md §4).

* ``usd``: dollars to the cent; sums under a dollar keep up to four significant digits
  (``$0.0042``), so a cheap agent's spend never shows as ``$0.00``.
* ``pct``: a ratio 0..1 as a percentage (``99.95%``); None as an en dash.
* ``ms``: milliseconds, or seconds from 10 s up.
* ``when``: a ``<time>`` element in UTC; ``static/js/console.js`` shows it in the viewer's zone
  and keeps UTC on hover.
* ``{% paged_list %}``: a keyset-paginated list (its errors, table, empty text and pager).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()
DASH = "\u2013"  # an en dash


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@register.filter
def usd(value: Any) -> str:
    number = _number(value)
    if number is None:
        return DASH
    sign = "-" if number < 0 else ""
    number = abs(number)
    if number == 0:
        return "$0.00"
    if number >= 1 or round(number, 2) == number:
        return f"{sign}${number:,.2f}"
    text = f"{Decimal(repr(number)):.4g}"  # four significant digits, no exponent below 1e-4
    if "e" in text:
        text = f"{number:.8f}".rstrip("0")
    return f"{sign}${text}"


@register.filter
def pct(value: Any, digits: int = 2) -> str:
    number = _number(value)
    if number is None:
        return DASH
    text = f"{number * 100:.{int(digits)}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


@register.filter
def ms(value: Any) -> str:
    number = _number(value)
    if number is None:
        return DASH
    if number >= 10_000:
        return f"{number / 1000:,.1f} s"
    return f"{number:,.0f} ms"


@register.filter
def count(value: Any) -> str:
    number = _number(value)
    return DASH if number is None else f"{number:,.0f}"


@register.filter
def when(value: datetime | float | int | None) -> SafeString | str:
    if value is None or value == "":
        return DASH
    moment = (
        datetime.fromtimestamp(float(value), tz=UTC)
        if isinstance(value, int | float)
        else value.astimezone(UTC)
    )
    return format_html(
        '<time datetime="{}" title="{} UTC">{} UTC</time>',
        moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        moment.strftime("%Y-%m-%d %H:%M:%S"),
        moment.strftime("%Y-%m-%d %H:%M:%S"),
    )


class PagedListNode(template.Node):
    def __init__(
        self, table: template.NodeList, empty: template.NodeList, texts: dict[str, Any]
    ) -> None:
        self.table, self.empty, self.texts = table, empty, texts

    def render(self, context: template.Context) -> str:
        assert context.template is not None  # rendering a template, as for any tag
        partial = context.template.engine.get_template("console/partials/paged_list.html")
        texts = {name: value.resolve(context) for name, value in self.texts.items()}
        with context.push(
            table=self.table.render(context), empty=self.empty.render(context), **texts
        ):
            return str(partial.render(context))


@register.tag
def paged_list(parser: template.base.Parser, token: template.base.Token) -> PagedListNode:
    """A list page's errors, table, empty text and pager, from the view's ``rows``, ``errors``,
    ``filtered`` and :func:`console.pages.paging.pager_links`::

        {% paged_list none_match="No incidents match these filters." show_all="Show every
           incident" older="Older incidents" %}<table>…</table>
        {% empty %}No incidents yet…{% endpaged_list %}

    The table shows when there are rows; else the empty text, or, when filtered or paged,
    ``none_match`` with a link to the unfiltered list; then the pager's Newest and ``older``.
    """
    bits = token.split_contents()[1:]
    texts = template.base.token_kwargs(bits, parser)
    wanted = {"none_match", "show_all", "older"}
    if bits or set(texts) != wanted:
        raise template.TemplateSyntaxError(
            f"paged_list takes exactly {', '.join(sorted(wanted))} as name=value"
        )
    table = parser.parse(("empty", "endpaged_list"))
    empty = template.NodeList()
    if parser.next_token().contents == "empty":
        empty = parser.parse(("endpaged_list",))
        parser.delete_first_token()
    return PagedListNode(table, empty, texts)
