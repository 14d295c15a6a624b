"""What the platform's processes share to render less: Django's "shared" cache (Redis when REDIS_URL is
set, this process's memory otherwise). Never fatal: with Redis away a lookup misses and the caller renders
for itself, as it would have without the cache."""

import logging
import time
from typing import Any

from django.core.cache import caches

log = logging.getLogger(__name__)
QUIET_FOR = 30.0  # seconds the cache is left alone after it failed (lookups miss at once meanwhile)
_away_until = 0.0


def _away(e: Exception) -> None:
    global _away_until
    _away_until = time.monotonic() + QUIET_FOR
    log.warning("the shared fragment cache is not answering (rendering without it for %.0f s): %s", QUIET_FOR, e)


def _here() -> bool:
    return time.monotonic() >= _away_until


def get(key: str) -> Any | None:
    try:
        return caches["shared"].get(key) if _here() else None
    except Exception as e:  # noqa: BLE001 - a cache that is away is a miss
        _away(e)
        return None


def get_many(keys: list[str]) -> dict[str, Any]:
    try:
        return caches["shared"].get_many(keys) if keys and _here() else {}
    except Exception as e:  # noqa: BLE001
        _away(e)
        return {}


def put(key: str, value: Any, ttl: float) -> bool:
    if not _here():
        return False
    try:
        caches["shared"].set(key, value, ttl)
        return True
    except Exception as e:  # noqa: BLE001
        _away(e)
        return False
