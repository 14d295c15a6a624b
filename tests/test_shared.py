"""diploi/shared.py's process copy of rendered values: bounded, and kept no longer than their TTL."""

from diploi import shared


def test_a_rendered_value_is_served_from_the_process_until_its_ttl(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(shared.time, "monotonic", lambda: now[0])
    shared.put_rendered("page:abc", "<p>hello</p>", 30)
    shared._cache().clear()  # gone from the shared cache: the process still has it
    assert shared.get_rendered("page:abc") == "<p>hello</p>"
    now[0] += 31
    assert shared.get_rendered("page:abc") is None  # its TTL passed, and the shared cache has none


def test_the_process_copy_keeps_the_values_used_last(monkeypatch) -> None:
    monkeypatch.setattr(shared, "_recent", shared._Recent(3))
    for i in range(4):
        shared.put_rendered(f"k{i}", i, 60)
        assert shared.get_rendered("k0") == 0  # used at every step: kept
    shared._cache().clear()
    assert [shared.get_rendered(f"k{i}") for i in range(4)] == [0, None, 2, 3]  # k1 was the least recently used


def test_a_shared_count_keeps_its_order_when_the_cache_restarts_empty(redis_url, settings) -> None:
    """Over the real Redis: numbers go up, also after it lost everything (restarted without persistence)."""
    settings.CACHES = {**settings.CACHES, "shared": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}}
    shared._cache().delete("count")
    first, second = shared.next_number("count"), shared.next_number("count")
    assert second == first + 1
    shared._cache().clear()  # an empty Redis
    assert shared.next_number("count") > second
    shared._cache().delete("count")
