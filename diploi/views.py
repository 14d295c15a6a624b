from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for load balancers and Kubernetes probes: the web process answers (no database)."""
    return HttpResponse("ok", content_type="text/plain")


@require_GET
def router_root(request: HttpRequest) -> FileResponse:
    """The router's own CA certificate (public: it is what a client needs to trust before it trusts the site)."""
    from deployments.runtimes import get_runtime

    path = get_runtime().own_ca
    if path is None or not path.exists():
        raise Http404("Deployments' certificates here come from a public CA.")
    return FileResponse(open(path, "rb"), content_type="application/x-x509-ca-cert", as_attachment=True, filename="diploi-root.crt")
