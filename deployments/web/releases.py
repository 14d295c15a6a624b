"""Push to deploy on the dashboard: deploy, rebuild, roll back, promote, pause and resume, a
release's log, and the project's webhook. Views authorise, parse, call an action and respond."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from deployments import actions
from deployments.access import get_deployment_for_user, get_registry_credential_for_owner
from deployments.models import Build, BuildStatus, Poll, RegistryCredential, Webhook
from deployments.triggers import polling
from deployments.web.forms import RegistryForm
from diploi.http import redirect_to
from projects.access import get_project_for_user


def _refused(request: HttpRequest, error: ValidationError) -> None:
    messages.error(request, " ".join(error.messages))


@login_required
@require_POST
def deploy(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    actions.do_deploy(d, actor=request.user)
    messages.success(request, f"Deploying the tip of {d.branch}." if d.builds_releases else f"Updating the code to the tip of {d.branch}.")
    return redirect_to(request, d)


@login_required
@require_POST
def rebuild(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    try:
        build = actions.do_rebuild(d, actor=request.user)
    except ValidationError as e:
        _refused(request, e)
    else:
        messages.success(request, f"Rebuilding {build.commit[:10] or 'the tip of ' + d.branch}.")
    return redirect_to(request, d)


@login_required
@require_POST
def rollback(request: HttpRequest, project_slug: str, slug: str, pk: int) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    try:
        build = actions.do_rollback(d, pk, actor=request.user)
    except ValidationError as e:
        _refused(request, e)
    else:
        messages.success(request, f"Rolling back to {build.commit[:10]}; new pushes are not deployed until you resume.")
    return redirect_to(request, d)


@login_required
@require_POST
def promote(request: HttpRequest, project_slug: str, slug: str, pk: int) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    target = get_deployment_for_user(request.user, project_slug, request.POST.get("target", ""), write=True)
    try:
        build = actions.do_promote(d, pk, target, actor=request.user)
    except ValidationError as e:
        _refused(request, e)
        return redirect_to(request, d)
    messages.success(request, f"Promoting {build.commit[:10]} to {target.name}.")
    return redirect_to(request, target)


@login_required
@require_POST
def auto_deploy(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    on = request.POST.get("auto_deploy") == "on"
    actions.do_set_auto_deploy(d, on, actor=request.user)
    messages.success(request, f"Pushes to {d.branch} are deployed." if on else f"Pushes to {d.branch} are no longer deployed.")
    return redirect_to(request, d)


@login_required
@require_POST
def resume(request: HttpRequest, project_slug: str, slug: str) -> HttpResponse:
    d = get_deployment_for_user(request.user, project_slug, slug, write=True)
    actions.do_resume(d, actor=request.user)
    messages.success(request, f"Resumed: deploying the tip of {d.branch}, and the pushes after it.")
    return redirect_to(request, d)


@login_required
@require_GET
def release_detail(request: HttpRequest, project_slug: str, slug: str, pk: int) -> HttpResponse:
    """A release: what, why, who, how long, and its whole build log (refreshed while it runs)."""
    d = get_deployment_for_user(request.user, project_slug, slug)
    build = get_object_or_404(Build.objects.select_related("source__deployment"), pk=pk, deployment=d)
    ctx = {
        "d": d,
        "project": d.project,
        "tab": "overview",
        "build": build,
        "live": build.status in (BuildStatus.QUEUED, BuildStatus.RUNNING),
    }
    template = "deployments/release.html#log" if request.htmx else "deployments/release.html"
    return TemplateResponse(request, template, ctx)


@login_required
@require_http_methods(["GET", "POST"])
def registries(request: HttpRequest, project_slug: str) -> HttpResponse:
    """The project's registry logins (owners only: they pull private images). A password is never shown back."""
    project = get_project_for_user(request.user, project_slug, owner=True)
    form = RegistryForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        actions.do_set_registry_credential(project, data["host"], data["username"], data["password"], actor=request.user)
        messages.success(request, f"Saved the login for {data['host']}: deployments use it from their next start or build.")
        return redirect_to(request, "deployments:registries", project.slug)
    ctx = {"project": project, "form": form, "credentials": RegistryCredential.objects.filter(project=project)}
    return TemplateResponse(request, "deployments/registries.html", ctx, status=400 if form.errors else 200)


@login_required
@require_POST
def registry_remove(request: HttpRequest, project_slug: str, pk: int) -> HttpResponse:
    credential = get_registry_credential_for_owner(request.user, project_slug, pk)
    actions.do_remove_registry_credential(credential, actor=request.user)
    return redirect_to(request, "deployments:registries", project_slug)


@login_required
@require_http_methods(["GET", "POST"])
def push_settings(request: HttpRequest, project_slug: str) -> HttpResponse:
    """The project's webhook URL and secret (owners only: the secret deploys), and how polling fares."""
    project = get_project_for_user(request.user, project_slug, owner=True)
    secret = None
    if request.method == "POST":
        webhook = actions.do_rotate_webhook_secret(project, actor=request.user)
        secret = webhook.secret
    webhook = Webhook.objects.filter(project=project).first()
    ctx = {
        "project": project,
        "webhook": webhook,
        "url": request.build_absolute_uri(reverse("webhook", args=[webhook.token])) if webhook else "",
        "secret": secret,
        "poll": Poll.objects.filter(repository=project.repository).first(),
        "poll_interval": settings.DIPLOI_POLL_INTERVAL,
        "poll_slow": settings.DIPLOI_POLL_INTERVAL * polling.SAFETY_NET,
    }
    template = "deployments/push.html#push" if request.htmx else "deployments/push.html"
    return TemplateResponse(request, template, ctx)
