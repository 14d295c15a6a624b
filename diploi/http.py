import errno
import logging
from collections.abc import Callable

from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django_htmx.http import HttpResponseClientRedirect

log = logging.getLogger(__name__)


def redirect_to(request: HttpRequest, to, *args) -> HttpResponse:
    """Redirect; an htmx request is told to navigate (a plain 302 would be followed inside the XHR
    and the next page swapped into the form)."""
    url = resolve_url(to, *args)
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


UTF8 = {"utf-8", "utf8"}


def utf8_bodies(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """A request body in another charset (`charset=utf-16`) is refused with 415 before anything reads
    it: Django would decode a form with it and fail half-way (a 500), and nothing here sends one."""

    def middleware(request: HttpRequest) -> HttpResponse:
        charset = request.content_params.get("charset", "utf-8").strip().strip('"').lower()
        if request.method not in ("GET", "HEAD", "OPTIONS") and charset not in UTF8:
            return HttpResponse(f"Send the request's body as UTF-8 (not {charset[:40]}).", status=415, content_type="text/plain")
        return get_response(request)

    return middleware


# What the platform's own storage says when it cannot take a write now: SQLite's lock held past its
# wait, SQLite's "database or disk is full", PostgreSQL's or the machine's "No space left on device".
BUSY = ("database is locked", "database table is locked")
FULL = ("database or disk is full", "no space left on device", "could not extend file")


def unavailable_reason(exception: BaseException) -> str | None:
    """Why a write failed for a reason of the moment ("busy" or "full"), or None for any other error."""
    if isinstance(exception, OSError) and exception.errno in (errno.ENOSPC, errno.EDQUOT):
        return "full"
    if isinstance(exception, OperationalError | OSError):
        text = str(exception).lower()
        if any(s in text for s in FULL):
            return "full"
        if any(s in text for s in BUSY):
            return "busy"
    return None


UNAVAILABLE = {
    "busy": "The platform's database is busy right now",
    "full": "The platform's disk is full",
}


class Unavailable:
    """A request whose write the platform's storage refused for a reason of the moment — the database
    locked past its wait, the disk full — answers 503 (Retry-After) saying that nothing was saved and to
    try again, instead of a 500: the action's transaction rolled back, and the pages that only read go on
    being served."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        why = unavailable_reason(exception)
        if why is None:
            return None
        log.warning("%s %s: %s (503): %s", request.method, request.path, why, exception)
        text = f"{UNAVAILABLE[why]}: nothing of this request was saved. Try again in a moment."
        if request.htmx:  # (a fragment for the part of the page that asked; htmx swaps 5xx answers only when told)
            response = HttpResponse(text, status=503, content_type="text/plain; charset=utf-8")
        else:
            response = render(request, "unavailable.html", {"message": text}, status=503)
        response["Retry-After"] = "5"
        return response
