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
