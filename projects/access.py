from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404

from accounts.models import User
from projects.invitations import addressed_to
from projects.models import Invitation, Membership, Project


def get_project_for_user(user: User, slug: str, write: bool = False, owner: bool = False) -> Project:
    """The project with the caller's role attached.

    Outsiders get 404 (a project's existence is not disclosed); members whose role is too weak for
    the action get 403. `write` needs developer or owner, `owner` needs owner.
    """
    if not user.is_authenticated:
        raise Http404
    membership = Membership.objects.select_related("project").filter(project__slug=slug, user=user).first()
    if membership is None:
        raise Http404("No such project.")
    project = membership.project
    project.role = membership.role
    if owner and not project.is_owner:
        raise PermissionDenied("Only owners can do this.")
    if write and not project.can_write:
        raise PermissionDenied("Viewers cannot change this project.")
    return project


def projects_for_user(user: User):
    return Project.objects.filter(memberships__user=user).order_by("name")


def get_invitation_for_user(user: User, pk: int) -> Invitation:
    """A pending invitation addressed to the user (username or verified address); anyone else gets 404."""
    return get_object_or_404(addressed_to(user), pk=pk)
