"""What the platform's processes share to render less: Django's "shared" cache (Redis when REDIS_URL is
set, this process's memory otherwise). Never fatal: with Redis away a lookup misses and the caller renders
for itself, as it would have without the cache."""

import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches

log = logging.getLogger(__name__)
QUIET_FOR = 30.0  # seconds the cache is left alone after it failed (lookups miss at once meanwhile)
_away_until = 0.0
_backend: tuple[object, BaseCache] | None = None


def _cache() -> BaseCache:
    """One backend for the whole process. `caches["shared"]` is one per request context under ASGI:
    with Redis, every page view opened a new connection to it."""
    global _backend
    config = settings.CACHES.get("shared")
    if _backend is None or _backend[0] is not config:
        _backend = (config, caches.create_connection("shared"))
    return _backend[1]


def _away(e: Exception) -> None:
    global _away_until
    _away_until = time.monotonic() + QUIET_FOR
    log.warning("the shared fragment cache is not answering (rendering without it for %.0f s): %s", QUIET_FOR, e)


def _here() -> bool:
    return time.monotonic() >= _away_until


def get(key: str) -> Any | None:
    try:
        return _cache().get(key) if _here() else None
    except Exception as e:  # noqa: BLE001 - a cache that is away is a miss
        _away(e)
        return None


def get_many(keys: list[str]) -> dict[str, Any]:
    try:
        return _cache().get_many(keys) if keys and _here() else {}
    except Exception as e:  # noqa: BLE001
        _away(e)
        return {}


def put(key: str, value: Any, ttl: float) -> bool:
    if not _here():
        return False
    try:
        _cache().set(key, value, ttl)
        return True
    except Exception as e:  # noqa: BLE001
        _away(e)
        return False
