"""The audit trail (who changed what, when and why; append-only, enforced by the database) and the
configuration version every process polls.

These rows belong to the ``console`` app (its label and migrations), but every app writes them, so
they are defined here, below the apps; ``console/models.py`` imports them for Django's registry.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone


class AppendOnlyError(Exception):
    """Raised when code tries to change or delete an append-only row."""


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only")


class AppendOnlyModel(models.Model):
    """Rows are inserted once and never updated or deleted.

    The ORM guard here gives a clear Python error; database triggers (see the migrations) refuse
    the same through any other path.
    """

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError(f"{type(self).__name__} rows are append-only")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError(f"{type(self).__name__} rows are append-only")


class AuditEvent(AppendOnlyModel):
    at = models.DateTimeField(default=timezone.now)  # indexed with id: audit_time
    actor = models.CharField(max_length=150)  # "user:alice", "apikey:bw_ab12cd34", "system:apply"
    action = models.CharField(max_length=64)  # "<entity>_<action>", e.g. "agent_update"
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=128)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    request_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        app_label = "console"
        ordering = ["-at", "-id"]
        # Each serves a newest-first keyset walk on (at, id) (console.audit_trail): the whole
        # trail, one actor's, one action's, one target's (docs/DECISIONS.md, "Audit indexes").
        indexes = [
            models.Index(fields=["target_type", "target_id", "-at"], name="audit_target"),
            models.Index(fields=["at", "id"], name="audit_time"),
            models.Index(fields=["actor", "at", "id"], name="audit_actor_time"),
            models.Index(fields=["action", "at", "id"], name="audit_action_time"),
        ]
        constraints = [
            models.CheckConstraint(condition=~Q(actor=""), name="audit_actor_required"),
            models.CheckConstraint(condition=~Q(action=""), name="audit_action_required"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target_type}:{self.target_id}"


class ConfigVersion(models.Model):
    """One row whose ``version`` goes up whenever agents, deployments, providers, budgets or keys
    change. Serving processes poll it (about once a second) and reload their in-memory config,
    so the hot path never reads configuration from the database."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        app_label = "console"
        constraints = [models.CheckConstraint(condition=Q(id=1), name="config_version_singleton")]

    def __str__(self) -> str:
        return f"config v{self.version}"
