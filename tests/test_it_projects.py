import html
from pathlib import Path

import pytest

from deployments.models import Deployment
from projects.models import Membership, Project, Role

pytestmark = pytest.mark.usefixtures("local_repositories")


def test_it_creates_a_project_and_reads_its_stack(cast, sample_repo: Path) -> None:
    client = cast.client(cast.outsider)
    r = client.post("/projects/new/", {"name": "My Shop!", "repository": str(sample_repo), "default_branch": "main"})
    project = Project.objects.get(name="My Shop!")
    assert r.status_code == 302 and r["Location"] == f"/projects/{project.slug}/"
    assert project.slug == "my-shop"
    assert Membership.objects.get(project=project).user == cast.outsider
    assert Membership.objects.get(project=project).role == Role.OWNER
    assert project.stack_errors == [] and project.stack["addons"][0]["identifier"] == "redis"


def test_it_gives_unique_slugs(cast, sample_repo: Path) -> None:
    client = cast.client(cast.owner)
    for _ in range(2):
        client.post("/projects/new/", {"name": "Shop", "repository": str(sample_repo), "default_branch": "main"})
    assert sorted(Project.objects.values_list("slug", flat=True)) == ["shop", "shop-2", "shop-3"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("default_branch", "feature..x", "is not a valid branch name"),
        ("default_branch", "-rf", "must not start with '-'"),
        ("default_branch", "a b", "must not contain spaces"),
        ("default_branch", "topic.lock", "ends with '.lock'"),
        ("repository", "ext::sh -c touch% /tmp/pwned", "This repository address is not allowed."),
        ("repository", "--upload-pack=touch /tmp/x", "This repository address is not allowed."),
        ("repository", "relative/path", "Enter a Git URL"),
        ("name", "!!!", "must contain at least one letter or digit"),
        ("name", "", "This field is required."),
    ],
)
def test_it_rejects_bad_input_and_keeps_what_was_typed(cast, sample_repo: Path, field: str, value: str, message: str) -> None:
    data = {"name": "Shop", "repository": str(sample_repo), "default_branch": "main", field: value}
    r = cast.client(cast.owner).post("/projects/new/", data, headers={"HX-Request": "true"})
    body = html.unescape(r.content.decode())
    assert r.status_code == 200 and message in body
    assert '<form id="project-form"' in body and "<html" not in body
    assert str(sample_repo) in body or field == "repository"
    assert Project.objects.count() == 1


def test_an_owner_changes_roles_and_removes_members(cast) -> None:
    client = cast.client(cast.owner)
    membership = Membership.objects.get(project=cast.project, user=cast.viewer)
    client.post(f"/projects/{cast.project.slug}/members/{membership.pk}/", {"role": "developer"})
    assert Membership.objects.get(pk=membership.pk).role == Role.DEVELOPER
    client.post(f"/projects/{cast.project.slug}/members/{membership.pk}/", {"role": "admin"})
    assert Membership.objects.get(pk=membership.pk).role == Role.DEVELOPER
    client.post(f"/projects/{cast.project.slug}/members/{membership.pk}/remove/")
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert cast.client(cast.viewer).get(f"/projects/{cast.project.slug}/").status_code == 404


def test_the_last_owner_stays(cast) -> None:
    client = cast.client(cast.owner)
    mine = Membership.objects.get(project=cast.project, user=cast.owner)
    client.post(f"/projects/{cast.project.slug}/members/{mine.pk}/", {"role": "viewer"})
    client.post(f"/projects/{cast.project.slug}/members/{mine.pk}/remove/")
    assert Membership.objects.get(pk=mine.pk).role == Role.OWNER
    page = client.get(f"/projects/{cast.project.slug}/settings/").content.decode()
    assert "A project needs at least one owner" in page

    # With a second owner, the first may step down.
    dev = Membership.objects.get(project=cast.project, user=cast.developer)
    client.post(f"/projects/{cast.project.slug}/members/{dev.pk}/", {"role": "owner"})
    client.post(f"/projects/{cast.project.slug}/members/{mine.pk}/", {"role": "viewer"})
    assert Membership.objects.get(pk=mine.pk).role == Role.VIEWER


def test_a_project_with_deployments_cannot_be_deleted(cast) -> None:
    Deployment.objects.create(project=cast.project, name="dev", slug="dev", branch="main")
    client = cast.client(cast.owner)
    r = client.post(f"/projects/{cast.project.slug}/delete/", {"confirm": "Shop"})
    assert "This project still has deployments. Delete them first" in r.content.decode()
    assert Project.objects.filter(pk=cast.project.pk).exists()
    assert "still has deployments" in client.get(f"/projects/{cast.project.slug}/settings/").content.decode()


def test_deleting_needs_the_exact_name(cast, data_dir: Path) -> None:
    client = cast.client(cast.owner)
    r = client.post(f"/projects/{cast.project.slug}/delete/", {"confirm": "shop"})
    assert "Type “Shop” exactly" in r.content.decode()
    assert Project.objects.filter(pk=cast.project.pk).exists()
    mirror = data_dir / "git" / f"project-{cast.project.pk}.git"
    assert mirror.exists()

    r = client.post(f"/projects/{cast.project.slug}/delete/", {"confirm": "Shop"})
    assert r.status_code == 302 and r["Location"] == "/projects/"
    assert not Project.objects.filter(pk=cast.project.pk).exists()
    assert not Membership.objects.exists()
    assert not mirror.exists()


def test_changing_the_branch_rereads_the_stack(cast, sample_repo: Path) -> None:
    from projects.git import run_git
    from projects.sample import commit_all

    client = cast.client(cast.developer)
    data = {"name": "Shop", "repository": cast.project.repository, "default_branch": "nope"}
    r = client.post(f"/projects/{cast.project.slug}/settings/", data)
    assert "Branch “nope” does not exist in the repository (it has main)." in html.unescape(r.content.decode())
    assert Project.objects.get(pk=cast.project.pk).default_branch == "main"  # nothing saved

    run_git("checkout", "-q", "-b", "broken", cwd=sample_repo)
    (sample_repo / "diploi.yaml").write_text("diploiVersion: v1.0\ncomponents: 3\n")
    commit_all(sample_repo, "Break the stack on a branch")
    client.post(f"/projects/{cast.project.slug}/settings/", {**data, "default_branch": "broken"})
    project = Project.objects.get(pk=cast.project.pk)
    assert project.default_branch == "broken" and project.stack_errors and project.stack is None


def test_an_htmx_form_that_succeeds_navigates_the_page(cast, sample_repo: Path) -> None:
    r = cast.client(cast.owner).post(
        "/projects/new/", {"name": "Via htmx", "repository": str(sample_repo), "default_branch": "main"}, headers={"HX-Request": "true"}
    )
    assert r.status_code == 200 and r["HX-Redirect"] == "/projects/via-htmx/"


def test_a_dockerfile_component_says_how_it_runs_and_why_this_machine_cannot(cast, sample_repo: Path) -> None:
    """The project page names the container a Dockerfile component runs as; here, where the test's data
    directory lies in a folder closed to other users (and perhaps podman is missing), also why it cannot."""
    from projects.sample import commit_all
    from projects.stack import refresh_stack

    (sample_repo / "web" / "Dockerfile").write_text('FROM busybox\nCMD ["httpd", "-f", "-p", "8080"]\n')
    stack = (sample_repo / "diploi.yaml").read_text()
    (sample_repo / "diploi.yaml").write_text(stack.replace("package: python", "package: dockerfile", 1))
    commit_all(sample_repo, "The web component as its Dockerfile")
    refresh_stack(Project.objects.get(pk=cast.project.pk))
    client = cast.client(cast.viewer)
    text = " ".join(html.unescape(client.get(f"/projects/{cast.project.slug}/").content.decode()).split())
    assert "a container built from <code>Dockerfile</code> (podman)" in text
    assert "this machine cannot run it: " in text
