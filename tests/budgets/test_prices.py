from __future__ import annotations

from decimal import Decimal

import pytest

from agents.config.apply import ConfigError, config_apply, config_parse
from agents.config.export import config_export
from budgets.models import PriceVersion

DOC = """
providers:
  - {name: p, kind: simulated}
models:
  - {name: m, provider: p, upstream_model: u, input_usd_per_mtok: %s, output_usd_per_mtok: 2}
  - {name: local, provider: p, upstream_model: llama}
"""


def _apply(input_price: str) -> None:
    config_apply(document=config_parse(DOC % input_price))


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_price_change_adds_a_version_and_never_rewrites_history() -> None:
    _apply("1")
    _apply("1")  # unchanged: no new version
    _apply("1.5")
    versions = list(
        PriceVersion.objects.filter(model="m")
        .order_by("effective_from", "id")
        .values_list("input_usd_per_mtok", "output_usd_per_mtok")
    )
    assert versions == [(Decimal("1"), Decimal("2")), (Decimal("1.5"), Decimal("2"))]


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_model_without_a_price_is_accepted_and_exported_without_one() -> None:
    _apply("1")
    local = next(m for m in config_export()["models"] if m["name"] == "local")
    assert "input_usd_per_mtok" not in local
    assert PriceVersion.objects.get(model="local").input_usd_per_mtok is None


def test_half_a_price_is_refused_with_the_models_path() -> None:
    text = DOC.replace("output_usd_per_mtok: 2", "cached_input_usd_per_mtok: 0.5") % "1"
    with pytest.raises(ConfigError) as caught:
        config_parse(text)
    assert caught.value.errors == [
        "models[0]: set both input_usd_per_mtok and output_usd_per_mtok, or neither"
    ]
