"""The console app's models are defined in :mod:`core.models` (every app writes them); importing
them here registers them under the ``console`` label, where their migrations live."""

from __future__ import annotations

from core.models import AppendOnlyError, AppendOnlyModel, AuditEvent, ConfigVersion

__all__ = ["AppendOnlyError", "AppendOnlyModel", "AuditEvent", "ConfigVersion"]
