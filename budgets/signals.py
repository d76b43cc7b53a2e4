"""Record a price version whenever a deployment's price changes (admin, apply or API alike)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save

from agents.models import ModelDeployment
from budgets.models import PriceVersion

_FIELDS = ("input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok")


def _record_price(sender: type, instance: ModelDeployment, **kwargs: Any) -> None:
    latest = PriceVersion.objects.filter(deployment_id=instance.pk).first()
    if latest is not None and all(
        getattr(latest, name) == getattr(instance, name) for name in _FIELDS
    ):
        return
    PriceVersion(
        deployment_id=instance.pk,
        model=instance.name,
        provider=instance.provider.name,
        upstream_model=instance.upstream_model,
        **{name: getattr(instance, name) for name in _FIELDS},
    ).save()


def connect_signals() -> None:
    post_save.connect(_record_price, sender=ModelDeployment, dispatch_uid="bw-price-version")
