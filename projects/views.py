import shutil

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Count, ProtectedError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.module_loading import import_string
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from diploi.http import redirect_to
from projects.access import get_project_for_user, projects_for_user
from projects.forms import DeleteProjectForm, MemberForm, ProjectForm, RoleForm, unique_slug
from projects.models import Membership, Project, Role, builds_externally
from projects.stack import branches, project_mirror, refresh_stack


@login_required
@require_GET
def project_list(request: HttpRequest) -> HttpResponse:
    projects = projects_for_user(request.user).annotate(deployment_count=Count("deployments", distinct=True))
    roles = dict(Membership.objects.filter(user=request.user).values_list("project_id", "role"))
    for project in projects:
        project.role = roles.get(project.pk, "")
    return TemplateResponse(request, "projects/list.html", {"projects": projects})


@login_required
@require_http_methods(["GET", "POST"])
def project_create(request: HttpRequest) -> HttpResponse:
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            project = form.save(commit=False)
            project.slug = unique_slug(project.name)
            project.created_by = request.user
            project.save()
            Membership.objects.create(project=project, user=request.user, role=Role.OWNER)
        refresh_stack(project)
        messages.success(request, f"Project “{project.name}” created.")
        return redirect_to(request, project)
    template = "projects/create.html#form" if request.htmx else "projects/create.html"
    return TemplateResponse(request, template, {"form": form})


@login_required
@require_POST
def project_refresh(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_project_for_user(request.user, slug, write=True)
    refresh_stack(project)
    if request.htmx:
        return TemplateResponse(request, "projects/detail.html#stack", {"project": project})
    return redirect_to(request, project)


def _settings_page(request: HttpRequest, project: Project, **forms) -> HttpResponse:
    ctx = {
        "project": project,
        "form": forms.get("form") or ProjectForm(instance=project),
        "member_form": forms.get("member_form") or MemberForm(project=project),
        "delete_form": forms.get("delete_form") or DeleteProjectForm(project=project),
        "members": project.memberships.select_related("user"),
        "roles": Role.choices,
        "branches": branches(project),
        "has_deployments": project.deployments.exists(),
        "new_ci_token": forms.get("new_ci_token"),
        "ci_api_url": request.build_absolute_uri(reverse("ci_build_report")),
        "builds_externally": builds_externally(),
    }
    template = "projects/settings.html"
    if request.htmx and (partial := forms.get("partial")):
        template += f"#{partial}"
    return TemplateResponse(request, template, ctx)


@login_required
@require_http_methods(["GET", "POST"])
def project_settings(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_project_for_user(request.user, slug, write=request.method == "POST")
    if request.method == "GET":
        return _settings_page(request, project)
    form = ProjectForm(request.POST, instance=project)
    if form.is_valid():
        form.save()
        refresh_stack(project)
        messages.success(request, "Project settings saved.")
        return redirect_to(request, "projects:settings", project.slug)
    return _settings_page(request, project, form=form, partial="general")


@login_required
@require_POST
def member_add(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_project_for_user(request.user, slug, owner=True)
    form = MemberForm(request.POST, project=project)
    if refused := import_string(settings.DIPLOI_MEMBERS_REFUSED)():
        form.is_valid()
        form.add_error(None, f"Members cannot be added: {refused}")
    elif form.is_valid():
        user = form.cleaned_data["who"]
        Membership.objects.create(project=project, user=user, role=form.cleaned_data["role"])
        messages.success(request, f"{user.username} added as {Role(form.cleaned_data['role']).label.lower()}.")
        if not request.htmx:
            return redirect_to(request, "projects:settings", project.slug)
        form = None
    return _settings_page(request, project, member_form=form, partial="members")


def _members_changed(request: HttpRequest, project: Project) -> HttpResponse:
    if request.htmx:
        return _settings_page(request, project, partial="members")
    return redirect_to(request, "projects:settings", project.slug)


def _is_last_owner(membership: Membership) -> bool:
    return (
        membership.role == Role.OWNER
        and not Membership.objects.filter(project=membership.project, role=Role.OWNER).exclude(pk=membership.pk).exists()
    )


@login_required
@require_POST
def member_update(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = get_project_for_user(request.user, slug, owner=True)
    membership = get_object_or_404(Membership.objects.select_related("user", "project"), pk=pk, project=project)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose owner, developer or viewer.")
    elif form.cleaned_data["role"] != Role.OWNER and _is_last_owner(membership):
        messages.error(request, "A project needs at least one owner; make someone else owner first.")
    else:
        membership.role = form.cleaned_data["role"]
        membership.save(update_fields=["role"])
        messages.success(request, f"{membership.user.username} is now {membership.get_role_display().lower()}.")
    return _members_changed(request, project)


@login_required
@require_POST
def member_remove(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = get_project_for_user(request.user, slug, owner=True)
    membership = get_object_or_404(Membership.objects.select_related("user", "project"), pk=pk, project=project)
    if _is_last_owner(membership):
        messages.error(request, "A project needs at least one owner; the last owner cannot be removed.")
    else:
        membership.delete()
        messages.success(request, f"{membership.user.username} removed from the project.")
    return _members_changed(request, project)


@login_required
@require_POST
def ci_token_rotate(request: HttpRequest, slug: str) -> HttpResponse:
    """A new CI token, shown once on the page (not in a redirect's message: it would sit in the session)."""
    project = get_project_for_user(request.user, slug, owner=True)
    token = project.rotate_ci_token()
    return _settings_page(request, project, new_ci_token=token, partial="ci")


@login_required
@require_POST
def project_delete(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_project_for_user(request.user, slug, owner=True)
    form = DeleteProjectForm(request.POST, project=project)
    if not form.is_valid():
        return _settings_page(request, project, delete_form=form, partial="danger")
    mirror = project_mirror(project)
    try:
        project.delete()
    except ProtectedError:  # a deployment was created after the form was checked
        form.add_error("confirm", "Delete the project's deployments first.")
        return _settings_page(request, project, delete_form=form, partial="danger")
    shutil.rmtree(mirror, ignore_errors=True)
    messages.success(request, f"Project “{project.name}” deleted.")
    return redirect_to(request, "projects:list")
