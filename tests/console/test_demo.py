from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"outage_s": "soon"}, "--outage-s: expected MIN-MAX seconds"),
        ({"outage_s": "50-40"}, "outage length"),
        ({"outage_every_s": 30.0}, "outage every"),
        ({"first_outage_s": -5.0}, "first outage"),
    ],
)
def test_a_bad_outage_flag_is_refused_before_anything_is_touched(
    options: dict[str, object], message: str
) -> None:
    # No database marker: the command must fail before it migrates.
    with pytest.raises(CommandError, match=message):
        call_command("demo", no_serve=True, **options)
