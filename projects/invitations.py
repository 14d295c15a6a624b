"""Who an invitation is addressed to, and answering one."""

from allauth.account.models import EmailAddress
from django.db import transaction
from django.db.models import QuerySet

from accounts.models import User
from projects.models import Invitation, Membership, Role


def addressed_to(user: User) -> QuerySet[Invitation]:
    """Pending invitations to the user's username or to an address the user has verified."""
    verified = [e.lower() for e in EmailAddress.objects.filter(user=user, verified=True).values_list("email", flat=True)]
    return Invitation.pending().filter(invitee__in=[user.username.lower(), *verified]).select_related("project", "invited_by")


@transaction.atomic
def accept(invitation: Invitation, user: User) -> Membership:
    """The user joins with the invitation's role (an existing membership keeps the stronger role); the invitation is used up."""
    membership, created = Membership.objects.get_or_create(project=invitation.project, user=user, defaults={"role": invitation.role})
    rank = [Role.VIEWER, Role.DEVELOPER, Role.OWNER]
    if not created and rank.index(Role(invitation.role)) > rank.index(Role(membership.role)):
        membership.role = invitation.role
        membership.save(update_fields=["role"])
    invitation.delete()
    return membership
