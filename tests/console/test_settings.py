"""Start-up: a bad environment variable stops Django from starting, and the error names it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Everything settings.py reads: cleared so the parent's environment cannot mask the bad value.
SETTINGS_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "BREAKWATER_ENCRYPTION_KEYS",
    "BREAKWATER_MAX_BODY_BYTES",
    "BREAKWATER_STALE_EXECUTION_S",
    "BREAKWATER_RETENTION_DAYS",
    "BREAKWATER_READYZ_TIMEOUT_S",
    "BREAKWATER_HTTPS",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_PRELOAD",
    "BREAKWATER_BEHIND_PROXY",
    "LOG_LEVEL",
)


def _django_setup(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_VARS}
    env.update(
        DJANGO_SETTINGS_MODULE="console.settings",
        BREAKWATER_VAR_DIR=str(tmp_path),
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_django_starts_with_no_configuration_at_all(tmp_path: Path) -> None:
    # The control for the failures below: the same command succeeds with a clean environment.
    result = _django_setup(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DEBUG", "maybe", "expected a boolean"),
        ("DATABASE_URL", "mysql://x", "unsupported scheme 'mysql'"),
        ("REDIS_URL", "http://x", "unsupported scheme 'http'"),
        ("BREAKWATER_ENCRYPTION_KEYS", "notakey", "not a valid Fernet key"),
        ("SECRET_KEY", "short", "at least 32 characters"),
        ("LOG_LEVEL", "LOUD", "unknown level"),
        ("BREAKWATER_READYZ_TIMEOUT_S", "nan", "expected a finite number"),
        ("ALLOWED_HOSTS", "example.com,,", "empty item"),
        ("BREAKWATER_RETENTION_DAYS", "0", "must be >= 1, got 0"),
        ("BREAKWATER_RETENTION_DAYS", "-3", "must be >= 1, got -3"),
        ("BREAKWATER_RETENTION_DAYS", "7.5", "expected an integer, got '7.5'"),
    ],
)
def test_a_bad_variable_stops_start_up_naming_it(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    result = _django_setup(tmp_path, **{variable: value})
    assert result.returncode != 0
    assert f"ImproperlyConfigured: {variable}: " in result.stderr
    assert says in result.stderr


def test_a_redis_password_in_a_bad_url_is_not_printed_at_start_up(tmp_path: Path) -> None:
    result = _django_setup(tmp_path, REDIS_URL="redis://:s3cr3t-pw@localhost:port/0")
    assert result.returncode != 0
    assert "REDIS_URL: invalid port" in result.stderr
    assert "s3cr3t-pw" not in result.stderr
