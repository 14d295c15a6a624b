from django.shortcuts import get_object_or_404

from accounts.models import SSHKey, User


def get_ssh_key_for_user(user: User, pk: int) -> SSHKey:
    """A key is visible to its owner only; anyone else gets 404."""
    return get_object_or_404(SSHKey, pk=pk, user=user)
