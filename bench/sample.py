"""Shared by the benchmarks: a fresh schema and the sample project, owned by a user "bench"."""

from pathlib import Path

from django.core.management import call_command

from accounts.models import User
from projects.models import Membership, Project, Role
from projects.sample import create_sample_repository
from projects.stack import refresh_stack


def sample_project(folder: Path) -> tuple[User, Project]:
    call_command("migrate", verbosity=0)
    repo = create_sample_repository(folder / "sample")
    user = User.objects.create_user("bench")
    project = Project.objects.create(name="Sample", slug="sample", repository=str(repo), default_branch="main")
    Membership.objects.create(project=project, user=user, role=Role.OWNER)
    refresh_stack(project)
    project.refresh_from_db()
    return user, project
