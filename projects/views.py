import shutil
import smtplib
from pathlib import PurePosixPath

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Count, ProtectedError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.module_loading import import_string
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from diploi.http import redirect_to
from projects import git
from projects.access import get_invitation_for_user, get_project_for_user, projects_for_user
from projects.demo import first_steps
from projects.forms import DeleteProjectForm, InviteForm, ProjectForm, RoleForm, unique_slug
from projects.invitations import accept, addressed_to
from projects.models import Invitation, Membership, Project, Role, builds_externally
from projects.stack import branches, project_mirror, refresh_stack
from projects.stackerrors import TooLarge
from projects.validators import safe_relative_folder, without_credentials


@login_required
@require_GET
def project_list(request: HttpRequest) -> HttpResponse:
    projects = projects_for_user(request.user).annotate(deployment_count=Count("deployments", distinct=True))
    roles = dict(Membership.objects.filter(user=request.user).values_list("project_id", "role"))
    for project in projects:
        project.role = roles.get(project.pk, "")
    ctx = {"projects": projects, "invitations": addressed_to(request.user), "checklist": first_steps(request.user)}
    return TemplateResponse(request, "projects/list.html", ctx)


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


@login_required
@require_POST
def packages_update(request: HttpRequest, slug: str) -> HttpResponse:
    """Re-resolve every package named by Git URL (the only time a locked ref moves) and say what moved."""
    project = get_project_for_user(request.user, slug, write=True)
    changed = refresh_stack(project, update_packages=True)
    for ref, (old, new) in sorted(changed.items()):
        messages.info(request, f"{without_credentials(ref)}: {old[:10] or 'new'} → {new[:10]}")
    if not changed:
        messages.info(request, "Every package is at the newest commit of its ref.")
    return redirect_to(request, project)


PREVIEW_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}
MAX_PREVIEW_BYTES = 2 * 1024 * 1024


@login_required
@require_GET
def preview_image(request: HttpRequest, slug: str, index: int) -> HttpResponse:
    """A starter's preview image (`previewImageUrls`), read from `.diploi/` at the checked commit."""
    project = get_project_for_user(request.user, slug)
    names = (project.stack or {}).get("preview_images", [])
    if index >= len(names) or not project.stack_commit:
        raise Http404
    name = names[index]
    if name.startswith(("http://", "https://")):
        return HttpResponseRedirect(name)
    kind = PREVIEW_TYPES.get(PurePosixPath(name).suffix.lower())
    folder = safe_relative_folder(f".diploi/{name}")
    if kind is None or folder is None or not folder.startswith(".diploi/"):
        raise Http404
    try:
        data = git.read_file(project_mirror(project), project.stack_commit, folder, MAX_PREVIEW_BYTES)
    except (git.GitError, TooLarge):
        data = None
    if data is None:
        raise Http404
    response = HttpResponse(data, content_type=kind)
    response["Content-Security-Policy"] = "default-src 'none'"
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _settings_page(request: HttpRequest, project: Project, **forms) -> HttpResponse:
    ctx = {
        "project": project,
        "form": forms.get("form") or ProjectForm(instance=project),
        "member_form": forms.get("member_form") or InviteForm(project=project),
        "invitations": Invitation.pending().filter(project=project).select_related("invited_by"),
        "new_invitation": forms.get("new_invitation"),
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


def _refusal() -> str:
    """Why nobody may join projects now ("" in team mode)."""
    return import_string(settings.DIPLOI_MEMBERS_REFUSED)()


@login_required
@require_POST
def member_add(request: HttpRequest, slug: str) -> HttpResponse:
    """Invite someone; they become a member when they accept. The link is shown once (only its hash is kept)."""
    project = get_project_for_user(request.user, slug, owner=True)
    form = InviteForm(request.POST, project=project)
    if refused := _refusal():
        form.is_valid()
        form.add_error(None, f"Members cannot be added: {refused}")
    elif form.is_valid():
        invitation, token = Invitation.issue(project, form.cleaned_data["who"], form.cleaned_data["role"], request.user)
        link = request.build_absolute_uri(reverse("invitations:open", args=[token]))
        sent = send_invitation(invitation, link) if "@" in invitation.invitee else ""
        new = {"invitee": invitation.invitee, "link": link, "sent": sent}
        return _settings_page(request, project, new_invitation=new, partial="members")
    return _settings_page(request, project, member_form=form, partial="members")


def send_invitation(invitation: Invitation, link: str) -> str:
    """E-mail the link to an invited address; what to tell the owner about it."""
    by = invitation.invited_by.username if invitation.invited_by else "An owner"
    body = (
        f"{by} invites you to the project “{invitation.project.name}” on Diploi as {invitation.get_role_display().lower()}.\n\n"
        f"Open this link to accept (log in or sign up first); it works until {invitation.expires:%Y-%m-%d %H:%M} UTC:\n{link}\n"
    )
    try:
        send_mail(f"Invitation to {invitation.project.name} on Diploi", body, None, [invitation.invitee])
    except (OSError, smtplib.SMTPException) as e:
        return f"The e-mail could not be sent ({e.__class__.__name__}); send the link yourself."
    return f"An e-mail with the link was sent to {invitation.invitee}."


@login_required
@require_POST
def invitation_cancel(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = get_project_for_user(request.user, slug, owner=True)
    invitation = get_object_or_404(Invitation, pk=pk, project=project)
    invitation.delete()
    messages.success(request, f"The invitation to {invitation.invitee} was cancelled; its link no longer works.")
    return _members_changed(request, project)


@login_required
@require_http_methods(["GET", "POST"])
def invitation_open(request: HttpRequest, token: str) -> HttpResponse:
    """The link an owner sends: whoever holds it (logged in) may accept or decline."""
    invitation = Invitation.for_token(token)
    if invitation is None:
        return TemplateResponse(request, "projects/invitation.html", {"invitation": None}, status=404)
    if request.method == "GET":
        return TemplateResponse(request, "projects/invitation.html", {"invitation": invitation, "refusal": _refusal()})
    return _answer(request, invitation)


@login_required
@require_POST
def invitation_answer(request: HttpRequest, pk: int) -> HttpResponse:
    """Accept or decline, from the Projects page, an invitation addressed to one's username or verified address."""
    return _answer(request, get_invitation_for_user(request.user, pk))


def _answer(request: HttpRequest, invitation: Invitation) -> HttpResponse:
    name = invitation.project.name
    if request.POST.get("answer") == "decline":
        invitation.delete()
        messages.success(request, f"You declined the invitation to “{name}”.")
        return redirect_to(request, "projects:list")
    if refused := _refusal():
        messages.error(request, f"You cannot join “{name}” now: {refused}")
        return redirect_to(request, "projects:list")
    membership = accept(invitation, request.user)
    messages.success(request, f"You joined “{name}” as {membership.get_role_display().lower()}.")
    return redirect_to(request, membership.project)


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
