from django.http import Http404

from accounts.models import User
from deployments.models import Deployment
from projects.access import get_project_for_user


def get_deployment_for_user(user: User, project_slug: str, slug: str, write: bool = False, owner: bool = False) -> Deployment:
    """The deployment, reached through its project: outsiders get 404, too weak a role 403."""
    project = get_project_for_user(user, project_slug, write=write, owner=owner)
    deployment = Deployment.objects.select_related("project", "release").filter(project=project, slug=slug).first()
    if deployment is None:
        raise Http404("No such deployment.")
    deployment.project = project  # keeps the caller's role
    return deployment
