"""Typed readers for environment variables.

Every reader fails loudly with :class:`ImproperlyConfigured` naming the variable and what is
wrong with its value, so a bad deployment stops at start-up instead of misbehaving later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    if value is None:
        return None
    return value.strip()


def env_str(
    name: str, default: str | None = None, *, environ: Mapping[str, str] | None = None
) -> str:
    """A string; empty or unset gives ``default``, and no default means the variable is required."""
    value = _raw(name, environ)
    if value:
        return value
    if default is None:
        raise ImproperlyConfigured(f"{name}: is required but not set")
    return default


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}: expected a boolean (1/0, true/false, yes/no, on/off), got {value!r}"
    )


def env_int(
    name: str,
    default: int,
    *,
    min_value: int | None = None,
    max_value: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    value = _raw(name, environ)
    if not value:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected an integer, got {value!r}") from None
    _check_range(name, number, min_value, max_value)
    return number


def env_float(
    name: str,
    default: float,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    value = _raw(name, environ)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ImproperlyConfigured(f"{name}: expected a finite number, got {value!r}")
    _check_range(name, number, min_value, max_value)
    return number


def env_list(
    name: str, default: list[str], *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """A comma-separated list; blank items are an error (a stray comma usually hides a typo)."""
    value = _raw(name, environ)
    if not value:
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ImproperlyConfigured(f"{name}: empty item in comma-separated list {value!r}")
    return items


def env_url(
    name: str,
    default: str | None,
    *,
    schemes: frozenset[str],
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """A URL whose scheme is one of ``schemes``; unset gives ``default`` (which may be None)."""
    value = _raw(name, environ)
    if not value:
        return default
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        raise ImproperlyConfigured(
            f"{name}: unsupported scheme {parts.scheme or '(none)'!r}; expected one of {allowed}"
        )
    # These schemes name a file or nothing, not a host (unix:///run/redis.sock).
    if not parts.netloc and parts.scheme not in {"sqlite", "memory", "filesystem", "unix"}:
        raise ImproperlyConfigured(f"{name}: URL has no host: {_redact(value)!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: invalid port in {_redact(value)!r}") from None
    return value


def _check_range(
    name: str, number: float, min_value: float | None, max_value: float | None
) -> None:
    if min_value is not None and number < min_value:
        raise ImproperlyConfigured(f"{name}: must be >= {min_value}, got {number}")
    if max_value is not None and number > max_value:
        raise ImproperlyConfigured(f"{name}: must be <= {max_value}, got {number}")


def _redact(url: str) -> str:
    """Hide a password in a URL so error messages never print credentials."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
