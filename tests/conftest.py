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


@pytest.fixture(autouse=True)
def fresh_runtime():
    """get_runtime() is cached per process; each test has its own data directory, so its own runtime."""
    from deployments.runtimes import get_runtime

    get_runtime.cache_clear()
    yield
    get_runtime.cache_clear()


@pytest.fixture
def runtime(data_dir: Path):
    """The local runtime of this test's data directory; its supervisor (and every process) stops after."""
    from deployments.runtimes import get_runtime

    rt = get_runtime()
    yield rt
    rt.supervisor.shutdown()


def wait_until(check, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll `check` until it returns something truthy; its last exception or value explains a failure."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def http_get(url: str, timeout: float = 3.0) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()
