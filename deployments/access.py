from django.http import Http404

from accounts.models import User
from deployments.models import Deployment, RegistryCredential
from deployments.queries import deployments_shown, overview_facts, project_facts
from projects.access import get_project_for_user


def get_deployment_for_user(user: User, project_slug: str, slug: str, write: bool = False, owner: bool = False) -> Deployment:
    """The deployment, reached through its project: outsiders get 404, too weak a role 403."""
    project = get_project_for_user(user, project_slug, write=write, owner=owner)
    deployment = deployments_shown().filter(project=project, slug=slug).first()
    if deployment is None:
        raise Http404("No such deployment.")
    deployment.project = project  # keeps the caller's role
    return deployment


def deployment_facts_for_user(user: User, project_slug: str, slug: str) -> tuple:
    """What the deployment's Overview shows (see `overview_facts`), read in the same statement as the
    membership that lets the user see it: outsiders get 404."""
    facts = overview_facts(user.pk, project_slug, slug) if user.is_authenticated else None
    if facts is None:
        raise Http404("No such deployment.")
    return facts


def project_facts_for_user(user: User, project_slug: str, number: int) -> tuple:
    """What the project page shows at page `number` of its list (see `project_facts`), read in the same
    statement as the membership that lets the user see it: outsiders get 404."""
    facts = project_facts(user.pk, project_slug, number) if user.is_authenticated else None
    if facts is None:
        raise Http404("No such project.")
    return facts


def get_deployment_by_id_for_user(user: User, pk: int, write: bool = False) -> Deployment:
    """The same check, for callers that know only the id (the websocket)."""
    if not getattr(user, "is_authenticated", False):
        raise Http404
    found = Deployment.objects.filter(pk=pk).values_list("project__slug", "slug").first()
    if found is None:
        raise Http404("No such deployment.")
    return get_deployment_for_user(user, found[0], found[1], write=write)


def get_registry_credential_for_owner(user: User, project_slug: str, pk: int) -> RegistryCredential:
    """A registry login of the project, for its owners: outsiders get 404, other members 403."""
    project = get_project_for_user(user, project_slug, owner=True)
    credential = RegistryCredential.objects.filter(project=project, pk=pk).first()
    if credential is None:
        raise Http404("No such registry login.")
    credential.project = project
    return credential
