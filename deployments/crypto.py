"""Encryption at rest for env values, secret parameters and add-on passwords (MultiFernet).

DIPLOI_ENCRYPTION_KEYS is a comma-separated list of Fernet keys: the first encrypts, all decrypt,
so a key can be rotated by putting the new one first. Without it a key is generated once and kept in
the data directory.
"""

from functools import cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError:
        raise ImproperlyConfigured("DIPLOI_ENCRYPTION_KEYS must be Fernet keys (32 url-safe base64 bytes)") from None


@cache
def _key_file(path: Path) -> str:
    """The generated key, read once per process (it never changes once written)."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(Fernet.generate_key().decode())
    return path.read_text().strip()


def fernet() -> MultiFernet:
    keys = tuple(settings.DIPLOI_ENCRYPTION_KEYS) or (_key_file(settings.DATA_DIR / "encryption_key"),)
    return _fernet(keys)


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured("A stored secret cannot be decrypted with the configured encryption keys") from None


class EncryptedTextField(models.TextField):
    """Stores text encrypted; reads give back plain text."""

    def from_db_value(self, value, expression, connection):
        return None if value is None else decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return None if value is None else encrypt(value)
