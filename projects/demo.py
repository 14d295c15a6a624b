"""Each user's own copy of the sample project ("Try the demo" on the projects page)."""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from accounts.models import User
from projects.forms import unique_slug
from projects.git import run_git, share
from projects.models import Membership, Project, Role
from projects.sample import create_sample_repository
from projects.stack import refresh_stack

DEMO_NAME = "Diploi sample"


def demo_repository(user: User) -> Path:
    """Where the user's own copy of the sample repository lives (one per user)."""
    return settings.DATA_DIR / "repos" / f"demo-{user.pk}"


def users_demo(user: User) -> Project | None:
    """The user's own copy of the demo project, if they made it and still own it."""
    mine = Project.objects.filter(repository=str(demo_repository(user)), memberships__user=user, memberships__role=Role.OWNER)
    return mine.first()


def create_demo(user: User) -> Project:
    """A new Git repository of the sample for `user` (theirs to push to) and a project of it they own."""
    repo = demo_repository(user)
    if not (repo / "HEAD").exists() and not (repo / ".git").exists():  # (earlier demos had a work tree)
        shutil.rmtree(repo, ignore_errors=True)  # what an attempt that died half-way left
        repo.parent.mkdir(parents=True, exist_ok=True)
        # bare, as a git host keeps it: the development deployment's pushes land on any branch
        with tempfile.TemporaryDirectory() as tmp:
            create_sample_repository(Path(tmp) / "sample")
            run_git("clone", "--bare", "--quiet", "--", str(Path(tmp) / "sample"), str(repo))
        run_git("remote", "remove", "origin", cwd=repo)
        share(repo)
    with transaction.atomic():
        slug = unique_slug(f"{DEMO_NAME} {user.username}")
        project = Project.objects.create(name=DEMO_NAME, slug=slug, repository=str(repo), default_branch="main", created_by=user)
        Membership.objects.create(project=project, user=user, role=Role.OWNER)
    refresh_stack(project)
    return project


@dataclass(frozen=True)
class FirstSteps:
    """The projects page's checklist for a new user; each step ticks itself once done."""

    key_added: bool
    project_created: bool
    demo: Project | None

    @property
    def done(self) -> bool:
        return self.key_added and (self.project_created or self.demo is not None)


def first_steps(user: User) -> FirstSteps:
    demo = users_demo(user)
    created = Project.objects.filter(created_by=user).exclude(pk=demo.pk if demo else None).exists()
    return FirstSteps(user.ssh_keys.exists(), created, demo)
