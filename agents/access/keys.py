"""API key format: ``bw_`` + 8-char public id + 32-char secret + 6-char checksum (base62).

The checksum (CRC32 of the rest) lets secret scanners and our own auth recognise a Breakwater
key, and reject a mistyped one, without a database look-up. Only the SHA-256 of the whole key
is stored; the row is found by its public prefix (``bw_`` + id) and the hash compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib
from dataclasses import dataclass

ALPHABET = string.digits + string.ascii_letters
KEY_PREFIX = "bw_"
ID_LEN = 8
SECRET_LEN = 32
CHECKSUM_LEN = 6
KEY_LEN = len(KEY_PREFIX) + ID_LEN + SECRET_LEN + CHECKSUM_LEN


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LEN)


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class NewKey:
    plaintext: str
    prefix: str
    secret_hash: str


def generate_key() -> NewKey:
    body = KEY_PREFIX + _random(ID_LEN) + _random(SECRET_LEN)
    plaintext = body + _checksum(body)
    return NewKey(
        plaintext=plaintext,
        prefix=plaintext[: len(KEY_PREFIX) + ID_LEN],
        secret_hash=hash_key(plaintext),
    )


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def looks_like_key(candidate: str) -> bool:
    """Right shape and checksum: a cheap filter before any look-up."""
    if len(candidate) != KEY_LEN or not candidate.startswith(KEY_PREFIX):
        return False
    body, check = candidate[:-CHECKSUM_LEN], candidate[-CHECKSUM_LEN:]
    if any(ch not in ALPHABET for ch in candidate[len(KEY_PREFIX) :]):
        return False
    return hmac.compare_digest(_checksum(body), check)


def prefix_of(candidate: str) -> str:
    return candidate[: len(KEY_PREFIX) + ID_LEN]


def verify_key(candidate: str, secret_hash: str) -> bool:
    """Constant-time comparison of ``candidate``'s hash with the stored one."""
    return hmac.compare_digest(hash_key(candidate).encode(), secret_hash.encode())
