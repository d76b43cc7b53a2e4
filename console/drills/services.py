"""Drill runs and the configuration rows a drill creates and removes (writes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from agents.access.services import api_key_create, api_key_revoke
from agents.config.apply import config_apply
from agents.config.schema import ConfigDocument, ModelSpec, ProviderSpec
from agents.models import ModelDeployment, Provider
from console.models import DrillKind, DrillRun, DrillStatus
from core.audit import audit_record
from core.errors import ValidationFailed

# A drill's temporary key expires by itself even if the drill's process dies before revoking it.
KEY_LIFETIME = timedelta(hours=1)


def drill_create(*, kind: str, options: dict[str, Any], actor: str) -> DrillRun:
    """A queued run; ``options`` are the drill's settings (never an API key)."""
    if kind not in DrillKind.values:
        raise ValidationFailed(
            [f"kind: unknown drill {kind!r}; expected one of {', '.join(DrillKind.values)}"]
        )
    if "api_key" in options:
        raise ValueError("drill options must not hold an API key")
    drill = DrillRun.objects.create(kind=kind, options=options, actor=actor)
    audit_record(
        actor=actor,
        action="drill_start",
        target_type="drill",
        target_id=str(drill.pk),
        after={"kind": kind, "options": options},
    )
    return drill


def drill_update(*, drill_id: int, **fields: Any) -> None:
    DrillRun.objects.filter(pk=drill_id).update(**fields)


def drill_finish(
    *, drill_id: int, status: str, figures: dict[str, Any], log: str, error: str = ""
) -> None:
    if status not in DrillStatus.values:
        raise ValueError(f"status: unknown {status!r}")
    DrillRun.objects.filter(pk=drill_id).update(
        status=status, figures=figures, log=log, error=error, finished_at=timezone.now()
    )


def drill_key_create(*, run_id: int, actor: str) -> tuple[int, str]:
    """A temporary admin key for drill ``run_id``: ``(id, plaintext)``. Admin: the drill
    creates and deletes its agent. It expires in an hour whatever happens."""
    created = api_key_create(
        name=f"drill {run_id} (temporary)",
        scopes=["admin"],
        expires_at=timezone.now() + KEY_LIFETIME,
        actor=actor,
    )
    return created.api_key.pk, created.plaintext


def drill_key_revoke(*, key_id: int, actor: str) -> None:
    api_key_revoke(key_id=key_id, actor=actor, reason="drill finished")


def drill_upstreams_create(
    *, rows: Sequence[tuple[str, str, str, float, float]], actor: str
) -> None:
    """One OpenAI-kind provider and one model per ``(name, base_url, model, $ in, $ out)``,
    through config as code (validated, audited, in one transaction)."""
    document = ConfigDocument(
        providers=[ProviderSpec(name=name, kind="openai", base_url=url) for name, url, *_ in rows],
        models=[
            ModelSpec(
                name=model,
                provider=name,
                upstream_model="gpt-4o-mini",
                input_usd_per_mtok=Decimal(str(price_in)),
                output_usd_per_mtok=Decimal(str(price_out)),
                max_concurrency=256,
            )
            for name, _, model, price_in, price_out in rows
        ],
    )
    config_apply(document=document, actor=actor)


def drill_upstreams_delete(*, rows: Sequence[tuple[str, str]], actor: str) -> None:
    """Delete the drill's ``(provider, model)`` rows (their executions keep the deployment id)."""
    with transaction.atomic():
        for provider, model in rows:
            for deployment in ModelDeployment.objects.filter(name=model, provider__name=provider):
                audit_record(
                    actor=actor,
                    action="modeldeployment_delete",
                    target_type="modeldeployment",
                    target_id=str(deployment.pk),
                    before={"label": f"model {model}"},
                )
                deployment.delete()
            for row in Provider.objects.filter(name=provider):
                audit_record(
                    actor=actor,
                    action="provider_delete",
                    target_type="provider",
                    target_id=str(row.pk),
                    before={"label": f"provider {provider}"},
                )
                row.delete()
