"""Who may go where through the SSH gateway: the database side of a login and of each session."""

from dataclasses import dataclass

from accounts.models import SSHKey
from deployments.models import Deployment, State
from deployments.provisioning.spec import current_spec
from deployments.runtimes.base import DeploymentSpec
from deployments.ssh.naming import component_of, deployment_suffixes, split_username, ssh_username
from projects.models import WRITE_ROLES, Membership


class Refused(Exception):
    """A login or session is refused; the message is shown to the user (after the key's signature)."""


class Unregistered(Refused):
    """No active user registered this key."""


@dataclass(frozen=True)
class Target:
    user_id: int
    key_pk: int
    fingerprint: str
    deployment_id: int
    component: str


def resolve(username: str, fingerprint: str) -> Target:
    """The deployment and component `username` names, for the owner of the key; Refused says why."""
    key = SSHKey.objects.select_related("user").filter(fingerprint=fingerprint).first()
    if key is None or not key.user.is_active:
        raise Unregistered("This key is not registered with Diploi: add it on your SSH keys page.")
    name, project_slug = split_username(username)
    memberships = {m.project_id: m.role for m in Membership.objects.filter(user=key.user)}
    candidates = Deployment.objects.filter(project_id__in=memberships).select_related("project", "release")
    if project_slug:
        candidates = candidates.filter(project__slug=project_slug)
    found: list[tuple[Deployment, str]] = []
    for d in candidates.filter(slug__in=deployment_suffixes(name)):
        component = component_of(name, d.slug)
        try:
            services = current_spec(d).services
        except Exception as e:  # noqa: BLE001 - e.g. a stack file broken on this branch
            raise Refused(f"{d.name} cannot be described right now: {e}") from None
        components = [s.identifier for s in services if s.kind == "component"]
        if not component and components:
            found.append((d, components[0]))
        elif component in {s.identifier for s in services}:
            found.append((d, component))
    if not found:
        raise Refused(f"No deployment or component named “{username}” that you can reach.")
    if len(found) > 1:
        names = ", ".join(sorted(f"{ssh_username(c, d, '', qualify=True)}" for d, c in found))
        raise Refused(f"“{username}” is ambiguous; use one of: {names}")
    d, component = found[0]
    if memberships[d.project_id] not in WRITE_ROLES:
        raise Refused(f"Viewers of {d.project.name} cannot open SSH sessions; ask an owner for developer access.")
    if d.state == State.DELETING:
        raise Refused(f"{d.name} is being deleted.")
    return Target(key.user_id, key.pk, fingerprint, d.pk, component)


def spec_of(target: Target) -> DeploymentSpec:
    d = Deployment.objects.select_related("project", "release").get(pk=target.deployment_id)
    if d.state == State.DELETING:
        raise Refused(f"{d.name} is being deleted.")
    return current_spec(d)


def still_allowed(target: Target) -> None:
    """Checked again when each session starts: the key, the membership and the deployment."""
    if not SSHKey.objects.filter(pk=target.key_pk, user_id=target.user_id).exists():
        raise Refused("This key was removed.")
    role = (
        Membership.objects.filter(user_id=target.user_id, project__deployments=target.deployment_id).values_list("role", flat=True).first()
    )
    if role not in WRITE_ROLES:
        raise Refused("You no longer have developer access to this project.")
