"""What the platform's processes share to render less: Django's cache (Redis when REDIS_URL is set,
this process's memory otherwise). Never fatal: with Redis away a lookup misses and the caller renders
for itself, as it would have without the cache."""

import logging
import time
from typing import Any

from django.core.cache import cache

log = logging.getLogger(__name__)
QUIET_FOR = 30.0  # seconds between two warnings that the cache is away
_warned = 0.0


def _away(e: Exception) -> None:
    global _warned
    if time.monotonic() - _warned > QUIET_FOR:
        _warned = time.monotonic()
        log.warning("the shared fragment cache is not answering (rendering without it): %s", e)


def get(key: str) -> Any | None:
    try:
        return cache.get(key)
    except Exception as e:  # noqa: BLE001 - a cache that is away is a miss
        _away(e)
        return None


def get_many(keys: list[str]) -> dict[str, Any]:
    try:
        return cache.get_many(keys) if keys else {}
    except Exception as e:  # noqa: BLE001
        _away(e)
        return {}


def put(key: str, value: Any, ttl: float) -> bool:
    try:
        cache.set(key, value, ttl)
        return True
    except Exception as e:  # noqa: BLE001
        _away(e)
        return False
