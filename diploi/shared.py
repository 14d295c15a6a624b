"""What the platform's processes share to read and render less — fragments, pages, sessions and signed-in
users: Django's "shared" cache (Redis when REDIS_URL is set, this process's memory otherwise). Never fatal:
with Redis away a lookup misses and the caller reads or renders for itself, as it would have without the
cache."""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import BaseCache, caches

log = logging.getLogger(__name__)
QUIET_FOR = 30.0  # seconds the cache is left alone after it failed (lookups miss at once meanwhile)
_away_until = 0.0
_unforgotten: set[str] = set()  # keys `forget` could not reach: forgotten first when the cache answers again
GONE = "\x00gone"  # what a forgotten key holds for a while: `add` does not bring back what was just forgotten
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
    log.warning("the shared cache is not answering (reading and rendering without it for %.0f s): %s", QUIET_FOR, e)


def _here() -> bool:
    if time.monotonic() < _away_until:
        return False
    if _unforgotten:
        try:
            keys = list(_unforgotten)
            _cache().set_many(dict.fromkeys(keys, GONE), FORGET_FOR)
            _unforgotten.difference_update(keys)
        except Exception as e:  # noqa: BLE001
            _away(e)
            return False
    return True


def get(key: str) -> Any | None:
    try:
        return _cache().get(key) if _here() else None
    except Exception as e:  # noqa: BLE001 - a cache that is away is a miss
        _away(e)
        return None


class _Recent:
    """The last values this process read or rendered under content-addressed keys, each until its TTL."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self.lock:
            found = self.values.get(key)
            if found is None or found[0] < time.monotonic():
                return None
            self.values.move_to_end(key)
            return found[1]

    def put(self, key: str, value: Any, ttl: float) -> None:
        with self.lock:
            self.values[key] = (time.monotonic() + ttl, value)
            self.values.move_to_end(key)
            while len(self.values) > self.size:
                self.values.popitem(last=False)


_recent = _Recent(256)
T = TypeVar("T")


def get_rendered(key: str) -> Any | None:
    """`get` for a key named by everything its value shows (a digest of the facts a page or fragment
    renders): the same key always holds the same value, so this process keeps the ones it used last
    and asks the shared cache only for the others."""
    value = _recent.get(key)
    if value is None:
        value = get(key)
        if value is not None:
            _recent.put(key, value, RENDERED_FOR)
    return value


def put_rendered(key: str, value: Any, ttl: float) -> bool:
    _recent.put(key, value, min(ttl, RENDERED_FOR))
    return put(key, value, ttl)


def rendered(key: str | None, ttl: float, render: Callable[[], T]) -> T:
    """What `key` holds (see `get_rendered`), else `render()`, kept for `ttl` seconds; a `key` of None
    renders without looking (a producer that just changed what it shows)."""
    value = get_rendered(key) if key else None
    if value is None:
        value = render()
        if key:
            put_rendered(key, value, ttl)
    return value


def clear() -> None:
    """Nothing cached any more, in this process or in the shared cache (tests start from nothing)."""
    with _recent.lock:
        _recent.values.clear()
    _cache().clear()


RENDERED_FOR = 60.0  # seconds this process keeps a rendered value it read (the shared cache keeps it longer)


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


FORGET_FOR = 5.0  # seconds a forgotten key stays forgotten: longer than a read of the database that `add`s it back


def add(key: str, value: Any, ttl: float) -> None:
    """`value` under `key` unless the key holds something, or was forgotten less than FORGET_FOR ago: a
    reader that found the old value in the database just before a change does not put it back."""
    if not _here():
        return
    try:
        _cache().add(key, value, ttl)
    except Exception as e:  # noqa: BLE001
        _away(e)


def forget(key: str) -> None:
    """`key` no longer answers (lookups miss until something is put there). With the cache away, the key is
    forgotten as soon as it answers again, before this process reads anything from it."""
    if _here():
        try:
            _cache().set(key, GONE, FORGET_FOR)
            return
        except Exception as e:  # noqa: BLE001
            _away(e)
    _unforgotten.add(key)


def next_number(key: str) -> int:
    """The next number of a count every process shares, 0 with the cache away. A count that is missing
    (a Redis restarted empty) starts again from the clock's microseconds, above every number handed out
    before, so the order holds across a restart and whatever the processes' clocks say otherwise."""
    if not _here():
        return 0
    try:
        try:
            return _cache().incr(key)
        except ValueError:  # not there yet
            _cache().add(key, time.time_ns() // 1000, None)
            return _cache().incr(key)
    except Exception as e:  # noqa: BLE001
        _away(e)
        return 0


def lookup(key: str) -> Any | None:
    """What `add` or `put` stored under `key`; None when nothing is, or it was forgotten."""
    value = get(key)
    return None if value == GONE else value
