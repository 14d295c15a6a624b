"""A new user's first steps on the projects page: add a key, try the demo (their own copy), or create a project."""

import re
from pathlib import Path

from accounts.models import SSHKey, User
from deployments.models import Deployment, State
from projects.git import run_git
from projects.models import Project, Role


def steps(client) -> list[str]:
    page = client.get("/projects/").content.decode()
    return re.findall(r'<span class="sr-only">(Done|To do):</span>\s*<strong>([^<]+)</strong>', page)


def test_the_checklist_ticks_itself_and_the_demo_is_the_users_own(cast, django_capture_on_commit_callbacks) -> None:
    ada = User.objects.create_user("ada", email="ada@example.com", password="pw-ada")
    client = cast.client(ada)
    assert steps(client) == [("To do", "Add your SSH key"), ("To do", "Try the demo"), ("To do", "Or create a project")]
    assert "cat ~/.ssh/id_ed25519.pub" in client.get("/projects/").content.decode()

    SSHKey.objects.create(user=ada, title="laptop", key_type="ssh-ed25519", public_key="AAAA", fingerprint="SHA256:ada")
    assert steps(client)[0] == ("Done", "Add your SSH key")

    with django_capture_on_commit_callbacks(execute=False) as queued:
        r = client.post("/demo/")
    project = Project.objects.get(created_by=ada)
    d = Deployment.objects.get(project=project)
    assert r.status_code == 302 and r["Location"] == f"/projects/{project.slug}/d/dev/"
    assert (d.stage, d.branch, d.state) == ("development", "main", State.PENDING)
    assert any("tasks.provision" in repr(c) for c in queued)  # on its way to running
    assert project.memberships.get().user == ada and project.memberships.get().role == Role.OWNER
    repo = Path(project.repository)
    # bare, as a git host keeps it (its development deployment pushes to any branch through the platform)
    assert (
        (repo / "HEAD").is_file()
        and run_git("cat-file", "-e", "HEAD:diploi.yaml", cwd=repo) == b""
        and repo != Path(cast.project.repository)
    )
    assert project.stack and not project.stack_errors
    assert "First steps" not in client.get("/projects/").content.decode()  # a key and the demo: done

    again = client.post("/demo/")  # the one they have, not a second copy
    assert again["Location"] == r["Location"] and Project.objects.filter(created_by=ada).count() == 1

    # Someone else's demo is their own repository, and ada's is not theirs to see.
    bob = User.objects.create_user("bob", email="bob@example.com", password="pw-bob")
    bobs = cast.client(bob)
    assert bobs.get(f"/projects/{project.slug}/").status_code == 404
    bobs.post("/demo/")
    theirs = Project.objects.get(created_by=bob)
    assert theirs.repository != project.repository and theirs.slug != project.slug


def test_the_demo_is_only_made_by_a_post_from_someone_signed_in(cast) -> None:
    assert cast.client(None).post("/demo/")["Location"].startswith("/accounts/login/")
    assert cast.client(cast.viewer).get("/demo/").status_code == 405
    assert not Project.objects.exclude(pk=cast.project.pk).exists()


def test_creating_a_project_ticks_its_step(cast) -> None:
    client = cast.client(cast.owner)
    Project.objects.filter(pk=cast.project.pk).update(created_by=cast.owner)
    assert ("Done", "Project created") in steps(client)
