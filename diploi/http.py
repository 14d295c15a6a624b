from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, resolve_url
from django_htmx.http import HttpResponseClientRedirect


def redirect_to(request: HttpRequest, to, *args) -> HttpResponse:
    """Redirect; an htmx request is told to navigate (a plain 302 would be followed inside the XHR
    and the next page swapped into the form)."""
    url = resolve_url(to, *args)
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
