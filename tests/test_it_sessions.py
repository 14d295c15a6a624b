"""Sessions and signed-in users read through the shared cache (accounts/sessions.py): a page view reads
neither from the database, and whatever ends a session ends it at once — for every web process, for a
reader that raced it, and with the cache away when it happened."""

import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.sessions import SessionStore
from diploi import shared

PAGE = "/projects/shop/"


def signed_in(client: Client) -> bool:
    response = client.get(PAGE)
    assert response.status_code in (200, 302), response.status_code
    return response.status_code == 200


def same_cookie(client: Client) -> Client:
    """Another browser tab (or another web process: the cache is what they share) with the same session."""
    other = Client()
    other.cookies["sessionid"] = client.cookies["sessionid"].value  # its own jar: a log out there leaves this one's cookie
    return other


def test_a_page_view_reads_neither_session_nor_user_from_the_database(cast) -> None:
    client = cast.client(cast.viewer)
    assert signed_in(client)
    with CaptureQueriesContext(connection) as queries:
        assert signed_in(client)
    assert [q["sql"].split()[:3] for q in queries] == [["SELECT", "m.role,", 'p."id",']]  # the page's own statement


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(lambda client, user: client.post("/accounts/logout/"), id="log out"),
        pytest.param(lambda client, user: (user.set_password("another-pw"), user.save()), id="a new password"),
        pytest.param(lambda client, user: (setattr(user, "is_active", False), user.save()), id="deactivated"),
        pytest.param(lambda client, user: user.delete(), id="deleted"),
    ],
)
def test_what_ends_a_session_ends_it_at_once_for_every_reader(cast, end) -> None:
    first = cast.client(cast.viewer)
    second = same_cookie(first)
    assert signed_in(first) and signed_in(second)  # both read it from the cache now
    end(second, cast.viewer)
    assert not signed_in(first)


def test_a_reader_that_read_the_session_just_before_a_log_out_does_not_bring_it_back(cast, monkeypatch) -> None:
    """The race of every read-through cache: a reader gets the row, the session ends and its copy is
    forgotten, then the reader caches what it read. The forgotten key refuses that copy."""
    client = cast.client(cast.viewer)
    other = same_cookie(client)
    read = SessionStore._get_session_from_db

    def read_then_log_out(store: SessionStore):
        row = read(store)
        monkeypatch.setattr(SessionStore, "_get_session_from_db", read)
        assert other.post("/accounts/logout/").status_code == 302
        return row

    monkeypatch.setattr(SessionStore, "_get_session_from_db", read_then_log_out)
    shared.clear()  # the reader finds no copy, so it reads the database
    client.get(PAGE)  # the racing reader: it read the row before the log out, and caches it after
    assert not signed_in(client)


def test_a_log_out_while_the_cache_is_away_is_forgotten_before_it_is_read_again(cast, settings, monkeypatch, redis_url: str) -> None:
    from tests.conftest import free_port

    redis = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url, "KEY_PREFIX": uuid.uuid4().hex}
    settings.CACHES = {**settings.CACHES, "shared": redis}
    monkeypatch.setattr(shared, "_away_until", 0.0)
    monkeypatch.setattr(shared, "_unforgotten", set())
    client = cast.client(cast.viewer)
    assert signed_in(client)  # its session and user are in Redis now

    away = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}
    settings.CACHES = {**settings.CACHES, "shared": away}
    assert same_cookie(client).post("/accounts/logout/").status_code == 302
    assert shared._unforgotten  # what it could not reach

    settings.CACHES = {**settings.CACHES, "shared": redis}  # back, with the old copy still in it
    monkeypatch.setattr(shared, "_away_until", 0.0)  # its quiet time over
    assert not signed_in(client)
    assert not shared._unforgotten
