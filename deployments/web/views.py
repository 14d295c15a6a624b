import shlex
import threading

"""The dashboard's deployment pages. Views authorise, parse, call an action and respond."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.forms import Form
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from deployments import actions
from deployments.access import get_deployment_for_user
from deployments.domains import CHALLENGE_LABEL, challenge_value, cname_target
from deployments.live.fragments import (
    LOG_LINES,
    TOKEN,
    LogStream,
    PageContent,
    cached_page,
    components,
    live_fragment,
    log_streams,
    overview_page,
    parameters,
    project_page,
)
from deployments.models import Deployment, Domain, EnvVar
from deployments.provisioning.connections import stored_connections
from deployments.provisioning.spec import current_spec
from deployments.runtimes import get_runtime
from deployments.runtimes.base import DeploymentSpec, RuntimeFailure, UnknownService
from deployments.runtimes.local.router import trusted_root
from deployments.status.usage import DEFAULT_WINDOW, WINDOWS, series
from deployments.tenancy import single_user_banner
from deployments.web.forms import (
    BranchForm,
    CloneForm,
    DeleteDeploymentForm,
    EnvVarForm,
    NewDeploymentForm,
    parameter_form,
    parameter_values,
    regenerated,
)
from deployments.web.health import platform_events
from diploi.http import redirect_to
from projects.access import get_project_for_user
from projects.git import GitError
from projects.stack import branches


def cached_page_response(request: HttpRequest, template: str, page: PageContent) -> HttpResponse:
    """A page's content inside the page around it (the viewer's name, the banners), which is cached as
    well, under the content's name, while no message waits to be shown: one lookup when neither
    changed. The viewer's own CSRF token goes in last."""
    token = get_token(request)
    if len(messages.get_messages(request)):  # shown once: this view is not like the next one
        title, content = page.get()
        return TemplateResponse(request, template, {"title": title, "content": mark_safe(content.replace(TOKEN, token))})

    def render() -> str:
        title, content = page.get()
        context = {"title": title, "content": mark_safe(content), "csrf_token": TOKEN}
        return render_to_string(template, context, request)

    around = (template, request.user.username, single_user_banner(request), platform_events(request))
    html = cached_page("whole", (around, page.key), render)
    return HttpResponse(html.replace(TOKEN, token))


@login_required
@require_GET
def project_detail(request: HttpRequest, project_slug: str) -> HttpResponse:
    """The project page: its deployments (paged, live), members and stack file."""
    return cached_page_response(request, "projects/detail.html", project_page(request.user, project_slug, request.GET.get("page")))


def _add_errors(form: Form, error: ValidationError) -> None:
    for field, messages_ in error.message_dict.items():
        for message in messages_:
            form.add_error(field if field in form.fields else None, message)


@login_required
@require_http_methods(["GET", "POST"])
def deployment_new(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_for_user(request.user, project_slug, write=True)
    form = NewDeploymentForm(request.POST or None, project=project, default_branch=project.default_branch)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            d = actions.do_create_deployment(
                project, data["name"], data["stage"], data["branch"], actor=request.user, enabled=data["enabled"]
            )
        except ValidationError as e:
            _add_errors(form, e)
        else:
            messages.success(request, f"Deployment “{d.name}” created; it is being provisioned.")
            return redirect_to(request, d)
    template = "deployments/new.html#form" if request.htmx else "deployments/new.html"
    return TemplateResponse(request, template, {"project": project, "form": form})


@login_required
@require_GET
def deployment_detail(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    """The Overview: what the monitor stored, never the runtime's live answer (see live_context)."""
    if request.htmx:  # the Refresh button: the live part alone
        return HttpResponse(live_fragment(get_deployment_for_user(request.user, project_slug, slug)))
    return cached_page_response(request, "deployments/detail.html", overview_page(request.user, project_slug, slug))


@login_required
@require_GET
def deployment_usage(request: HttpRequest, project_slug: str, slug: str) -> JsonResponse:
    """The resource graphs' points for one window (?window=1m|1h|1d|7d), from what the monitor kept."""
    d = get_deployment_for_user(request.user, project_slug, slug)
    window = WINDOWS.get(request.GET.get("window", DEFAULT_WINDOW))
    if window is None:
        return JsonResponse({"error": f"window is one of {', '.join(WINDOWS)}"}, status=400)
    return JsonResponse(series(d, window))


@login_required
@require_GET
def deployment_describe(request: HttpRequest, project_slug: str, slug: str, service: str) -> HttpResponse:
    """What runs for one container (its command line may hold what only writers should see)."""
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    spec = current_spec(d)
    try:
        facts = get_runtime().describe(spec, service)
    except UnknownService:
        raise Http404("No such component or add-on.") from None
    except RuntimeFailure as e:
        facts = [("Unavailable", str(e))]
    ctx = {"d": d, "project": d.project, "tab": "overview", "service": service, "facts": facts}
    return TemplateResponse(request, "deployments/describe.html", ctx)


@login_required
@require_GET
def connections_reveal(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    """The connection strings with their secrets, for a member who may write."""
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    ctx = {"d": d, "project": d.project, "connections": stored_connections(d), "reveal": True}
    return TemplateResponse(request, "deployments/detail.html#connections", ctx)


# --- the Options tab -----------------------------------------------------------------------------


def _parameter_forms(d: Deployment, bound: tuple[str, Form] | None = None) -> list[tuple[str, Form]]:
    current: dict[str, dict[str, EnvVar]] = {}
    for var in EnvVar.objects.filter(deployment=d).exclude(service=""):
        current.setdefault(var.service, {})[var.key] = var
    return [
        (service, bound[1] if bound and bound[0] == service else parameter_form(params, current.get(service, {})))
        for service, params in parameters(d).items()
    ]


def _options_page(request: HttpRequest, d: Deployment, partial: str | None = None, **forms) -> HttpResponse:
    ctx = {
        "d": d,
        "project": d.project,
        "tab": "options",
        "branch_form": forms.get("branch_form") or BranchForm(initial={"branch": d.branch}, project=d.project),
        "env_form": forms.get("env_form") or EnvVarForm(components=components(d)),
        "delete_form": forms.get("delete_form") or DeleteDeploymentForm(deployment=d),
        "env_vars": EnvVar.objects.filter(deployment=d),
        "parameter_forms": forms.get("parameter_forms") or _parameter_forms(d),
        "domains": Domain.objects.filter(deployment=d),
        "cname_target": cname_target(d),
        "challenge_label": CHALLENGE_LABEL,
        "challenge_value": challenge_value(d),
        "domain_error": forms.get("domain_error"),
        "domain_value": forms.get("domain_value", ""),
        "branches": branches(d.project),
    }
    template = "deployments/options.html" + (f"#{partial}" if request.htmx and partial else "")
    return TemplateResponse(request, template, ctx)


def _options_changed(request: HttpRequest, d: Deployment, partial: str) -> HttpResponse:
    """After a change on the Options tab: re-render its section in place, or reload the page."""
    if request.htmx:
        return _options_page(request, d, partial)
    return redirect_to(request, "deployments:options", d.project.slug, d.slug)


@login_required
@require_GET
def deployment_options(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    return _options_page(request, get_deployment_for_user(request.user, project_slug, slug))


@login_required
@require_POST
def deployment_enabled(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    enabled = request.POST.get("enabled") == "on"
    actions.do_set_enabled(d, enabled, actor=request.user)
    messages.success(request, "Starting the deployment." if enabled else "Stopping the deployment; its storage is kept.")
    return redirect_to(request, "deployments:options", project_slug, slug)


@login_required
@require_POST
def deployment_branch(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    form = BranchForm(request.POST, project=d.project)
    if not form.is_valid():
        return _options_page(request, d, "general", branch_form=form)
    actions.do_follow_branch(d, form.cleaned_data["branch"], actor=request.user)
    messages.success(request, f"Now following {form.cleaned_data['branch']}; updating.")
    return redirect_to(request, "deployments:options", project_slug, slug)


@login_required
@require_POST
def env_save(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    form = EnvVarForm(request.POST, components=components(d))
    if not form.is_valid():
        return _options_page(request, d, "env", env_form=form)
    data = form.cleaned_data
    actions.do_save_env(d, data["service"], {data["key"]: (data["value"], data["secret"])}, actor=request.user)
    messages.success(request, f"{data['key']} saved; restarting the affected components.")
    return _options_changed(request, d, "env")


@login_required
@require_POST
def env_delete(request: HttpRequest, project_slug: str, slug: str, pk: int) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    var = get_object_or_404(EnvVar, pk=pk, deployment=d)
    actions.do_delete_env(d, var, actor=request.user)
    messages.success(request, f"{var.key} deleted; restarting the affected components.")
    return _options_changed(request, d, "env")


@login_required
@require_POST
def parameters_save(request: HttpRequest, project_slug: str, slug: str, service: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    params = parameters(d).get(service)
    if params is None:
        return HttpResponse(status=404)
    form = parameter_form(params, {}, request.POST)
    if not form.is_valid():
        return _options_page(request, d, "parameters", parameter_forms=_parameter_forms(d, (service, form)))
    again = regenerated(params, form)
    actions.do_save_env(d, service, {k: v for k, v in parameter_values(params, form).items() if k not in again}, actor=request.user)
    actions.do_regenerate(d, service, again, actor=request.user)
    messages.success(request, f"Parameters of {service} saved; restarting it.")
    return redirect_to(request, "deployments:options", project_slug, slug)


@login_required
@require_POST
def domain_add(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    raw = request.POST.get("name", "")
    try:
        domain = actions.do_add_domain(d, raw, actor=request.user)
    except ValidationError as e:
        return _options_page(request, d, "domains", domain_error=e.messages[0], domain_value=raw)
    messages.success(request, f"{domain.name} added. Create the CNAME record shown, then verify.")
    return _options_changed(request, d, "domains")


@login_required
@require_POST
def domain_verify(request: HttpRequest, project_slug: str, slug: str, pk: int) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    domain = actions.do_verify_domain(get_object_or_404(Domain, pk=pk, deployment=d), actor=request.user)
    (messages.success if domain.verified else messages.error)(request, f"{domain.display_name}: {domain.check_result}")
    return _options_changed(request, d, "domains")


@login_required
@require_POST
def domain_remove(request: HttpRequest, project_slug: str, slug: str, pk: int) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    domain = get_object_or_404(Domain, pk=pk, deployment=d)
    actions.do_remove_domain(domain, actor=request.user)
    messages.success(request, f"{domain.display_name} removed.")
    return _options_changed(request, d, "domains")


@login_required
@require_POST
def deployment_restart(request: HttpRequest, project_slug: str, slug: str, service: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    try:
        actions.do_restart(d, service, actor=request.user)
    except RuntimeFailure as e:
        messages.error(request, str(e))
    else:
        messages.success(request, f"Restarting {service}.")
    return redirect_to(request, d)


@login_required
@require_POST
def deployment_delete(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, owner=True)
    form = DeleteDeploymentForm(request.POST, deployment=d)
    if not form.is_valid():
        return _options_page(request, d, "danger", delete_form=form)
    actions.do_delete(d, actor=request.user)
    messages.success(request, f"Deleting “{d.name}” and its storage.")
    return redirect_to(request, d.project)


@login_required
@require_http_methods(["GET", "POST"])
def deployment_clone(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    source = get_deployment_for_user(request.user, project_slug, slug, write=True)
    initial = {"name": f"{source.name}-copy", "stage": source.stage}
    form = CloneForm(request.POST or None, project=source.project, default_branch=source.branch, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            clone = actions.do_clone(
                source,
                data["name"],
                data["stage"],
                data["branch"],
                actor=request.user,
                enabled=data["enabled"],
                copy_storage=data["copy_storage"],
            )
        except ValidationError as e:
            _add_errors(form, e)
        else:
            messages.success(request, f"“{clone.name}” is being created from “{source.name}”, which keeps running.")
            return redirect_to(request, clone)
    template = "deployments/clone.html#form" if request.htmx else "deployments/clone.html"
    return TemplateResponse(request, template, {"d": source, "project": source.project, "tab": "options", "form": form})


# --- logs ----------------------------------------------------------------------------------------


@login_required
@require_GET
def deployment_logs(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug)
    spec = current_spec(d)
    streams = log_streams(d) or [LogStream(s.identifier, s.identifier, s.identifier) for s in spec.services]
    chosen = request.GET.get("service") or (streams[0].value if streams else "")
    stream = next((s for s in streams if s.value == chosen), None)
    if chosen and stream is None:
        messages.error(request, f"This deployment has no log “{chosen[:100]}”.")
    lines: list[str] = []
    if stream and stream.command:
        if d.project.can_write:
            lines = run_for_a_while(spec, stream.service, stream.command)
        else:
            messages.info(request, "This log is a command run in the service; developers and owners can run it.")
    elif stream:
        lines = list(get_runtime().logs(spec, stream.service, tail=LOG_LINES))
    ctx = {
        "d": d,
        "project": d.project,
        "tab": "logs",
        "streams": streams,
        "stream": stream,
        "lines": lines,
        "follow": request.GET.get("follow") == "1" and stream is not None and not stream.command,
        "keep": LOG_LINES,
    }
    return TemplateResponse(request, "deployments/logs.html", ctx, status=404 if chosen and stream is None else 200)


EXEC_LOG_SECONDS = 3.0


def run_for_a_while(spec: DeploymentSpec, service: str, command: tuple[str, ...]) -> list[str]:
    """What a package's exec log command prints in its first few seconds (it may never end)."""
    try:
        shell = get_runtime().open_shell(spec, service, shlex.join(command), pty=False)
    except RuntimeFailure as e:
        return [f"(could not run it: {e})"]
    out = bytearray()

    def read() -> None:
        while len(out) < 64 * 1024 and (chunk := shell.read()):
            out.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(EXEC_LOG_SECONDS)
    shell.kill()
    reader.join(2)
    shell.close()
    return out.decode(errors="replace").splitlines()[-LOG_LINES:]


@login_required
@require_GET
def deployment_logs_download(request: HttpRequest, project_slug: str, slug: str, service: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug)
    spec = current_spec(d)
    try:
        spec.service(service)
    except RuntimeFailure:
        return HttpResponse(status=404)
    lines = get_runtime().logs(spec, service, since=0)
    response = StreamingHttpResponse((line + "\n" for line in lines), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{d.project.slug}-{d.slug}-{service}.log"'
    return response


@login_required
@require_POST
def try_demo(request: HttpRequest) -> HttpResponse:
    """Try the demo: the user's own copy of the sample project and its development deployment."""
    try:
        d = actions.do_try_demo(request.user)
    except (GitError, OSError) as e:
        messages.error(request, f"The demo could not be copied: {e}")
        return redirect_to(request, "projects:list")
    messages.success(request, f"“{d.project.name}” is yours: its own repository and this development deployment, on its way.")
    return redirect_to(request, d)


@require_GET
def router_root(request: HttpRequest) -> FileResponse:
    """The router's own CA certificate (public: a client needs it before it can trust the site)."""
    path = trusted_root()
    if path is None or not path.exists():
        raise Http404("Deployments' certificates here come from a public CA.")
    return FileResponse(open(path, "rb"), content_type="application/x-x509-ca-cert", as_attachment=True, filename="diploi-root.crt")
