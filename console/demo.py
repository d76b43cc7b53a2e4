"""Demo helpers (``make run``)."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings

from agents.access.keys import hash_key, prefix_of
from agents.models import ApiKey


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def demo_loadgen_key() -> str:
    """The demo traffic's API key, kept in var/ so restarts reuse it instead of piling up keys."""
    from agents.access.services import api_key_create

    path = Path(settings.VAR_DIR) / "demo-loadgen-key"
    if path.exists():
        key = path.read_text().strip()
        if ApiKey.objects.filter(
            prefix=prefix_of(key), secret_hash=hash_key(key), revoked_at__isnull=True
        ).exists():
            return key
    key = api_key_create(name="demo traffic", scopes=["execute"], actor="system:demo").plaintext
    _write_private(path, key)
    return key
