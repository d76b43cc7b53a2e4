"""Provider secrets at rest: Fernet with key rotation (``BREAKWATER_ENCRYPTION_KEYS``).

The first key encrypts; every listed key decrypts, so rotating is: put the new key first, run
``manage.py rotate_provider_secrets``, then drop the old key. Plaintext never leaves this module
except through :func:`decrypt_secret`, which the provider adapters call right before a request.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class SecretUnavailable(Exception):
    """A stored secret cannot be decrypted with the configured keys."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured(
            "BREAKWATER_ENCRYPTION_KEYS: is required to store provider secrets "
            "(generate one with `python manage.py generate_encryption_key`), "
            "or reference an environment variable with api_key_env instead"
        )
    fernets = []
    for index, key in enumerate(keys):
        try:
            fernets.append(Fernet(key.encode()))
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"BREAKWATER_ENCRYPTION_KEYS: key #{index + 1} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None
    return MultiFernet(fernets)


def _configured() -> MultiFernet:
    return _fernet(tuple(settings.BREAKWATER_ENCRYPTION_KEYS))


def check_keys() -> None:
    """Validate the configured keys (if any) so a bad key stops start-up, naming the variable."""
    if settings.BREAKWATER_ENCRYPTION_KEYS:
        _configured()


def encrypt_secret(plaintext: str) -> str:
    if not plaintext:
        raise ValueError("secret must not be empty")
    return _configured().encrypt(plaintext.encode()).decode()


def decrypt_secret(token: str) -> str:
    try:
        return _configured().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnavailable(
            "stored secret cannot be decrypted with BREAKWATER_ENCRYPTION_KEYS "
            "(was the key that encrypted it removed?)"
        ) from None


def rotate_secret(token: str) -> str:
    """Re-encrypt ``token`` under the primary key (idempotent for already-rotated tokens)."""
    try:
        return _configured().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretUnavailable(
            "stored secret cannot be decrypted with BREAKWATER_ENCRYPTION_KEYS"
        ) from None


def generate_key() -> str:
    return Fernet.generate_key().decode()
