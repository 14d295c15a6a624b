from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.views.decorators.http import require_GET


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for load balancers and Kubernetes probes: the web process answers (no database)."""
    return HttpResponse("ok", content_type="text/plain")


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """What browsers ask for by themselves, whatever a page's <link rel="icon"> says: the same icon."""
    return HttpResponsePermanentRedirect(static("img/favicon.svg"))
