import json
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import User
from deployments import ci, tasks
from deployments.access import get_deployment_for_user
from deployments.domains import cname_target, normalise_domain, verify
from deployments.forms import (
    BranchForm,
    CloneForm,
    DeleteDeploymentForm,
    EnvVarForm,
    NewDeploymentForm,
    parameter_form,
    parameter_values,
)
from deployments.live import record_sample, status_tree, stored_tree
from deployments.models import Deployment, Domain, EnvVar, Sample, State
from deployments.runtimes import get_runtime
from deployments.runtimes.base import RuntimeFailure
from deployments.services import create_deployment
from deployments.spec import current_spec
from deployments.sshgateway import host_key_fingerprint, ssh_username
from diploi.http import redirect_to
from projects.access import get_project_for_user
from projects.models import Project
from projects.stack import branches

LOG_LINES = 200
CI_REPORT_LIMIT = 16384


def sparkline(values: list[float], width: int = 240, height: int = 40) -> str:
    """SVG polyline points for `values`, scaled to the box (0 at the bottom)."""
    if len(values) < 2:
        return ""
    top = max(max(values), 1.0)
    step = width / (len(values) - 1)
    return " ".join(f"{i * step:.1f},{height - (v / top) * height:.1f}" for i, v in enumerate(values))


def _components(d: Deployment) -> list[str]:
    return [c["identifier"] for c in (d.project.stack or {}).get("components", [])]


def ssh_commands(d: Deployment, user: User) -> list[tuple[str, str]]:
    """The exact command per component; qualified with the project when the user reaches another
    deployment of the same name."""
    components = _components(d)
    qualify = Deployment.objects.filter(slug=d.slug, project__memberships__user=user).exclude(pk=d.pk).exists()
    return [(c, f"ssh -p {settings.DIPLOI_SSH_PORT} {ssh_username(c, d, components[0], qualify)}@{settings.DIPLOI_PUBLIC_HOST}") for c in components]


def _parameters(d: Deployment) -> dict[str, list[dict]]:
    """Each service's package parameters, from the project's stack file."""
    stack = d.project.stack or {}
    return {s["identifier"]: s["package"]["parameters"] for s in [*stack.get("components", []), *stack.get("addons", [])]
            if s["package"]["parameters"]}  # fmt: skip


def _parameter_forms(d: Deployment, bound: tuple[str, object] | None = None) -> list[tuple[str, object]]:
    current: dict[str, dict[str, EnvVar]] = {}
    for var in EnvVar.objects.filter(deployment=d).exclude(service=""):
        current.setdefault(var.service, {})[var.key] = var
    return [
        (service, bound[1] if bound and bound[0] == service else parameter_form(params, current.get(service, {})))
        for service, params in _parameters(d).items()
    ]


@login_required
@require_http_methods(["GET", "POST"])
def deployment_new(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_for_user(request.user, project_slug, write=True)
    form = NewDeploymentForm(request.POST or None, branches=branches(project), default_branch=project.default_branch)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            d = create_deployment(project, data["name"], data["stage"], data["branch"], request.user, enabled=data["enabled"])
        except ValidationError as e:
            _add_errors(form, e)
        else:
            messages.success(request, f"Deployment “{d.name}” created; it is being provisioned.")
            return redirect_to(request, d)
    template = "deployments/new.html#form" if request.htmx else "deployments/new.html"
    return TemplateResponse(request, template, {"project": project, "form": form})


def overview_context(d: Deployment, user: User | None = None, observe: bool = True) -> dict:
    """Everything the Overview shows; the page and the websocket render the same partials from it.

    The page observes the runtime itself; the websocket (`observe=False`) renders what the monitor
    stored, so a thousand viewers cost no runtime calls."""
    samples = list(Sample.objects.filter(deployment=d, at__gte=timezone.now() - timedelta(minutes=15)).values_list("cpu_percent", "memory_bytes"))
    if observe:
        tree = status_tree(d)
        sample = record_sample(d, tree)
        cpu, memory = sample.cpu_percent, sample.memory_bytes
    else:
        tree = stored_tree(d)
        cpu, memory = samples[-1] if samples else (0, 0)
    return {
        "d": d,
        "project": d.project,
        "tab": "overview",
        "tree": tree,
        "cpu": cpu,
        "memory": memory,
        "cpu_points": sparkline([s[0] for s in samples]),
        "build": d.builds.first(),
        "ssh": ssh_commands(d, user) if user is not None else [],
        "ssh_host_key": host_key_fingerprint(),
        "ssh_sessions": list(d.ssh_sessions.select_related("user")[:10]),
        "has_keys": user is not None and user.ssh_keys.exists(),
        "transitions": list(d.transitions.order_by("-at", "-pk")[:8]),
        "domains": list(d.domains.all()),
    }


@login_required
@require_GET
def deployment_detail(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug)
    template = "deployments/detail.html#live" if request.htmx else "deployments/detail.html"
    return TemplateResponse(request, template, overview_context(d, request.user))


def _options_page(request: HttpRequest, d: Deployment, partial: str | None = None, **forms) -> HttpResponse:
    components = _components(d)
    ctx = {
        "d": d,
        "project": d.project,
        "tab": "options",
        "branch_form": forms.get("branch_form") or BranchForm(initial={"branch": d.branch}),
        "env_form": forms.get("env_form") or EnvVarForm(components=components),
        "delete_form": forms.get("delete_form") or DeleteDeploymentForm(deployment=d),
        "env_vars": EnvVar.objects.filter(deployment=d),
        "parameter_forms": forms.get("parameter_forms") or _parameter_forms(d),
        "domains": Domain.objects.filter(deployment=d),
        "cname_target": cname_target(d),
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


def _add_errors(form, error: ValidationError) -> None:
    for field, messages_ in error.message_dict.items():
        for message in messages_:
            form.add_error(field if field in form.fields else None, message)


@login_required
@require_GET
def deployment_options(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    return _options_page(request, get_deployment_for_user(request.user, project_slug, slug))


def _actor(request: HttpRequest) -> str:
    return f"user:{request.user.username}"


@login_required
@require_POST
def deployment_enabled(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    enabled = request.POST.get("enabled") == "on"
    with transaction.atomic():
        Deployment.objects.filter(pk=d.pk).update(enabled=enabled)
        tasks.set_enabled.delay_on_commit(d.pk, actor=_actor(request))
    messages.success(request, "Starting the deployment." if enabled else "Stopping the deployment; its storage is kept.")
    return redirect_to(request, "deployments:options", project_slug, slug)


@login_required
@require_POST
def deployment_branch(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    form = BranchForm(request.POST)
    if not form.is_valid():
        return _options_page(request, d, "general", branch_form=form)
    with transaction.atomic():
        Deployment.objects.filter(pk=d.pk).update(branch=form.cleaned_data["branch"])
        tasks.provision.delay_on_commit(d.pk, actor=_actor(request))
    messages.success(request, f"Now following {form.cleaned_data['branch']}; updating.")
    return redirect_to(request, "deployments:options", project_slug, slug)


def _save_env(request: HttpRequest, d: Deployment, service: str, values: dict[str, tuple[str, bool]]) -> None:
    """Store {key: (value, secret)} for `service` ("" = every component) and re-provision on commit,
    which restarts the services whose environment changed."""
    with transaction.atomic():
        for key, (value, secret) in values.items():
            EnvVar.objects.update_or_create(deployment=d, service=service, key=key, defaults={"value": value, "secret": secret})
        tasks.provision.delay_on_commit(d.pk, actor=_actor(request))


@login_required
@require_POST
def env_save(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    form = EnvVarForm(request.POST, components=_components(d))
    if not form.is_valid():
        return _options_page(request, d, "env", env_form=form)
    data = form.cleaned_data
    _save_env(request, d, data["service"], {data["key"]: (data["value"], data["secret"])})
    messages.success(request, f"{data['key']} saved; restarting the affected components.")
    return _options_changed(request, d, "env")


@login_required
@require_POST
def parameters_save(request: HttpRequest, project_slug: str, slug: str, service: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    params = _parameters(d).get(service)
    if params is None:
        return HttpResponse(status=404)
    form = parameter_form(params, {}, request.POST)
    if not form.is_valid():
        return _options_page(request, d, "parameters", parameter_forms=_parameter_forms(d, (service, form)))
    _save_env(request, d, service, parameter_values(params, form))
    messages.success(request, f"Parameters of {service} saved; restarting it.")
    return redirect_to(request, "deployments:options", project_slug, slug)


@login_required
@require_POST
def domain_add(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    raw = request.POST.get("name", "")
    try:
        name = normalise_domain(raw)
        Domain.objects.create(deployment=d, name=name)
    except ValidationError as e:
        return _options_page(request, d, "domains", domain_error=e.messages[0], domain_value=raw)
    except IntegrityError:
        return _options_page(request, d, "domains", domain_error=f"{raw} is already in use by a deployment.", domain_value=raw)
    messages.success(request, f"{name} added. Create the CNAME record shown, then verify.")
    return _options_changed(request, d, "domains")


@login_required
@require_POST
def domain_verify(request: HttpRequest, project_slug: str, slug: str, pk: int) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    domain = verify(get_object_or_404(Domain, pk=pk, deployment=d))
    (messages.success if domain.verified else messages.error)(request, f"{domain.display_name}: {domain.check_result}")
    return _options_changed(request, d, "domains")


@login_required
@require_POST
def domain_remove(request: HttpRequest, project_slug: str, slug: str, pk: int) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    domain = get_object_or_404(Domain, pk=pk, deployment=d)
    domain.delete()
    messages.success(request, f"{domain.display_name} removed.")
    return _options_changed(request, d, "domains")


@login_required
@require_POST
def env_delete(request: HttpRequest, project_slug: str, slug: str, pk: int) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    var = get_object_or_404(EnvVar, pk=pk, deployment=d)
    with transaction.atomic():
        var.delete()
        tasks.provision.delay_on_commit(d.pk, actor=_actor(request))
    messages.success(request, f"{var.key} deleted; restarting the affected components.")
    return _options_changed(request, d, "env")


@login_required
@require_POST
def deployment_restart(request: HttpRequest, project_slug: str, slug: str, service: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    try:
        current_spec(d).service(service)
    except RuntimeFailure as e:
        messages.error(request, str(e))
    else:
        tasks.restart.delay_on_commit(d.pk, service, actor=_actor(request))
        messages.success(request, f"Restarting {service}.")
    return redirect_to(request, d)


@login_required
@require_POST
def deployment_delete(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, owner=True)
    form = DeleteDeploymentForm(request.POST, deployment=d)
    if not form.is_valid():
        return _options_page(request, d, "danger", delete_form=form)
    with transaction.atomic():
        d.transition(State.DELETING, _actor(request), "deletion requested")
        tasks.destroy.delay_on_commit(d.pk, actor=_actor(request))
    messages.success(request, f"Deleting “{d.name}” and its storage.")
    return redirect_to(request, d.project)


@login_required
@require_http_methods(["GET", "POST"])
def deployment_clone(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    source = get_deployment_for_user(request.user, project_slug, slug, write=True)
    form = CloneForm(request.POST or None, branches=branches(source.project), default_branch=source.branch,
                     initial={"name": f"{source.name}-copy", "stage": source.stage})  # fmt: skip
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            clone = create_deployment(source.project, data["name"], data["stage"], data["branch"], request.user,
                                      enabled=data["enabled"], clone_of=source, copy_storage=data["copy_storage"])  # fmt: skip
        except ValidationError as e:
            _add_errors(form, e)
        else:
            messages.success(request, f"“{clone.name}” is being created from “{source.name}”, which keeps running.")
            return redirect_to(request, clone)
    template = "deployments/clone.html#form" if request.htmx else "deployments/clone.html"
    return TemplateResponse(request, template, {"d": source, "project": source.project, "tab": "options", "form": form})


@login_required
@require_GET
def deployment_logs(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug)
    spec = current_spec(d)
    services = [s.identifier for s in spec.services]
    service = request.GET.get("service") or (services[0] if services else "")
    lines: list[str] = []
    if service in services:
        lines = list(get_runtime().logs(spec, service, tail=LOG_LINES))
    follow = request.GET.get("follow") == "1"
    ctx = {"d": d, "project": d.project, "tab": "logs", "services": services, "service": service, "lines": lines, "follow": follow, "keep": LOG_LINES}
    return TemplateResponse(request, "deployments/logs.html", ctx)


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


@csrf_exempt
@require_POST
def ci_build_report(request: HttpRequest) -> JsonResponse:
    """CI reports a component's image at a commit (external build mode), with the project's CI token.
    A bad or missing token is 401 whatever the project (nothing about projects is disclosed)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    project = Project.for_ci_token(token.strip()) if scheme.lower() == "bearer" else None
    if project is None:
        response = JsonResponse({"error": "A valid CI token is needed: Authorization: Bearer <the project's CI token>."}, status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    if len(request.body) > CI_REPORT_LIMIT:
        return JsonResponse({"error": f"The report is larger than {CI_REPORT_LIMIT} bytes."}, status=413)
    try:
        data = json.loads(request.body or b"null")
    except ValueError as e:
        return JsonResponse({"error": f"The body is not JSON: {e}"}, status=400)
    try:
        report = ci.record_report(project, data)
    except ValidationError as e:
        return JsonResponse({"error": "The report was not accepted.", "fields": {k: " ".join(v) for k, v in e.message_dict.items()}}, status=400)
    waiting = ci.waiting_deployments(project, report.commit)
    for d in waiting:
        tasks.provision.delay_on_commit(d.pk, actor="ci")
    return JsonResponse({"commit": report.commit, "component": report.component, "status": report.status,
                         "deployments": [d.slug for d in waiting]}, status=202)  # fmt: skip
