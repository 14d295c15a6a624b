from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, resolve_url
from django_htmx.http import HttpResponseClientRedirect


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
