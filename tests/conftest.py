from dataclasses import dataclass
from pathlib import Path

import pytest
from django.test import Client

from accounts.models import User
from projects.models import Membership, Project, Role
from projects.sample import create_sample_repository
from projects.stack import refresh_stack


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    """Each test gets its own data directory (git mirrors, repositories, deployments)."""
    settings.DATA_DIR = tmp_path / "data"
    # Real hashing costs ~0.3 s per password; the launcher test still logs in with the real one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.DATA_DIR.mkdir()
    return settings.DATA_DIR


@pytest.fixture
def sample_repo(tmp_path: Path) -> Path:
    return create_sample_repository(tmp_path / "sample-repo")


@dataclass
class Cast:
    owner: User
    developer: User
    viewer: User
    outsider: User
    project: Project

    def client(self, user: User | None, **kwargs) -> Client:
        client = Client(**kwargs)
        if user is not None:
            client.force_login(user)
        return client


@pytest.fixture
def cast(db, sample_repo: Path) -> Cast:
    """A project with one member of each role, and a user who is not a member."""
    users = {name: User.objects.create_user(name, email=f"{name}@example.com", password="pw-" + name) for name in
             ("owner", "developer", "viewer", "outsider")}  # fmt: skip
    project = Project.objects.create(name="Shop", slug="shop", repository=str(sample_repo), default_branch="main")
    for role in (Role.OWNER, Role.DEVELOPER, Role.VIEWER):
        Membership.objects.create(project=project, user=users[role.value], role=role)
    refresh_stack(project)
    return Cast(project=project, **users)
