"""Sessions and signed-in users read through the shared cache: a page view reads neither from the database
while they are unchanged.

The database stays the record. A change to a session (log in, log out, a new password's hash) or to a user
(a new password, deactivated) replaces or forgets the cached copy in the same request, so every web
process sees it at once; a copy is kept at most CACHED_FOR seconds. With the cache away, reads go to the
database, and what was changed meanwhile is forgotten before anything is read from the cache again
(`shared.forget`)."""

from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.middleware import AuthenticationMiddleware as DjangoAuthenticationMiddleware
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.sessions.backends.db import SessionStore as DatabaseStore
from django.http import HttpRequest
from django.utils.crypto import constant_time_compare
from django.utils.functional import SimpleLazyObject

from diploi import shared

CACHED_FOR = 60.0


def _session_key(session_key: str) -> str:
    return f"session:{session_key}"


def user_key(user_id: Any) -> str:
    return f"user:{user_id}"


class SessionStore(DatabaseStore):
    """Django's database sessions, read through the shared cache."""

    def load(self) -> dict:
        if self.session_key:
            data = shared.lookup(_session_key(self.session_key))
            if data is not None:
                return data
        s = self._get_session_from_db()  # None when missing or expired
        if s is None:
            return {}
        data = self.decode(s.session_data)
        shared.add(_session_key(s.session_key), data, min(CACHED_FOR, self.get_expiry_age(expiry=s.expire_date)))
        return data

    def save(self, must_create: bool = False) -> None:
        super().save(must_create)
        key = _session_key(self.session_key)
        if not shared.put(key, self._get_session(no_load=must_create), min(CACHED_FOR, self.get_expiry_age())):
            shared.forget(key)  # the copy cached before this change must not answer

    def delete(self, session_key: str | None = None) -> None:
        key = session_key or self.session_key
        super().delete(session_key)
        if key:
            shared.forget(_session_key(key))


def signed_in_user(request: HttpRequest) -> AbstractBaseUser | AnonymousUser:
    """Django's `auth.get_user`, with the user read from the shared cache when a copy is there: the same
    checks (a backend still configured, an active user, the session's password hash) on the copy."""
    session = request.session
    user_id, backend, session_hash = (session.get(k) for k in (auth.SESSION_KEY, auth.BACKEND_SESSION_KEY, auth.HASH_SESSION_KEY))
    if user_id is None:
        return AnonymousUser()
    user = shared.lookup(user_key(user_id))
    if (
        user is not None
        and backend in settings.AUTHENTICATION_BACKENDS
        and user.is_active
        and session_hash
        and constant_time_compare(session_hash, user.get_session_auth_hash())
    ):
        return user
    user = auth.get_user(request)  # the database, and Django's handling of a hash that does not verify
    if user.is_authenticated:
        shared.add(user_key(user_id), user, CACHED_FOR)
    return user


def forget_user(
    sender: type, instance: AbstractBaseUser, created: bool = False, update_fields: frozenset | None = None, **kwargs: Any
) -> None:
    """Signal receiver: a changed or deleted user is read from the database next time (a new one has no
    copy yet; the time of the last log in, which every log in saves, is read by no check)."""
    if not created and update_fields != {"last_login"}:
        shared.forget(user_key(instance.pk))


class AuthenticationMiddleware(DjangoAuthenticationMiddleware):
    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        request.user = SimpleLazyObject(lambda: _user(request))


def _user(request: HttpRequest) -> AbstractBaseUser | AnonymousUser:
    if not hasattr(request, "_cached_user"):
        request._cached_user = signed_in_user(request)
    return request._cached_user
