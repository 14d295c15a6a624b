"""Every project URL, for every role: outsiders get 404, viewers cannot write, only owners manage."""

import pytest

from deployments.models import Deployment
from projects.models import Invitation, Membership, Project, Role


def project_urls(cast) -> dict[str, tuple[str, dict, str]]:
    """name -> (url, POST data or None for GET, the weakest role that may use it)."""
    slug = cast.project.slug
    viewer_membership = Membership.objects.get(user=cast.viewer, project=cast.project)
    invitation = Invitation.objects.filter(project=cast.project).first() or Invitation.issue(cast.project, "ada", "viewer", None)[0]
    return {
        "detail": (f"/projects/{slug}/", None, "viewer"),
        "settings": (f"/projects/{slug}/settings/", None, "viewer"),
        "refresh": (f"/projects/{slug}/refresh/", {}, "developer"),
        "save settings": (
            f"/projects/{slug}/settings/",
            {"name": "Renamed", "repository": cast.project.repository, "default_branch": "main"},
            "developer",
        ),
        "add member": (f"/projects/{slug}/members/", {"who": "outsider", "role": "viewer"}, "owner"),
        "change role": (f"/projects/{slug}/members/{viewer_membership.pk}/", {"role": "developer"}, "owner"),
        "remove member": (f"/projects/{slug}/members/{viewer_membership.pk}/remove/", {}, "owner"),
        "cancel invitation": (f"/projects/{slug}/invitations/{invitation.pk}/cancel/", {}, "owner"),
        "delete": (f"/projects/{slug}/delete/", {"confirm": "Shop"}, "owner"),
    }


EVERY_URL = ["detail", "settings", "refresh", "save settings", "add member", "change role", "remove member", "cancel invitation", "delete"]
RANK = {"viewer": 0, "developer": 1, "owner": 2}
NEEDED = {
    "refresh": "developer",
    "save settings": "developer",
    "add member": "owner",
    "change role": "owner",
    "remove member": "owner",
    "cancel invitation": "owner",
    "delete": "owner",
}
TOO_WEAK = [(role, name) for name, needed in NEEDED.items() for role in ("viewer", "developer") if RANK[role] < RANK[needed]]


def call(client, url: str, data: dict | None):
    return client.get(url) if data is None else client.post(url, data)


def snapshot(cast) -> tuple:
    project = Project.objects.filter(pk=cast.project.pk).values_list("name", "stack_checked").first()
    members = sorted(Membership.objects.values_list("user__username", "role"))
    return project, members, sorted(Invitation.objects.values_list("invitee", "role"))


@pytest.mark.parametrize("name", EVERY_URL)
def test_it_answers_404_to_outsiders_and_changes_nothing(cast, name: str) -> None:
    url, data, _ = project_urls(cast)[name]
    before = snapshot(cast)
    assert call(cast.client(cast.outsider), url, data).status_code == 404
    assert snapshot(cast) == before


@pytest.mark.parametrize("name", EVERY_URL)
def test_it_redirects_anonymous_users_to_login(cast, name: str) -> None:
    url, data, _ = project_urls(cast)[name]
    before = snapshot(cast)
    r = call(cast.client(None), url, data)
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")
    assert snapshot(cast) == before


@pytest.mark.parametrize("role, name", TOO_WEAK)
def test_it_answers_403_when_the_role_is_too_weak(cast, role: str, name: str) -> None:
    url, data, needed = project_urls(cast)[name]
    assert needed == NEEDED[name]
    before = snapshot(cast)
    assert call(cast.client(getattr(cast, role)), url, data).status_code == 403
    assert snapshot(cast) == before


@pytest.mark.parametrize("name", ["detail", "settings"])
@pytest.mark.parametrize("role", ["viewer", "developer", "owner"])
def test_it_shows_pages_to_every_member(cast, role: str, name: str) -> None:
    url, data, _ = project_urls(cast)[name]
    assert call(cast.client(getattr(cast, role)), url, data).status_code == 200


def test_a_developer_may_change_settings(cast, local_repositories) -> None:
    url, data, _ = project_urls(cast)["save settings"]
    assert call(cast.client(cast.developer), url, data).status_code == 302
    assert Project.objects.get(pk=cast.project.pk).name == "Renamed"


def test_it_lists_only_the_users_projects(cast) -> None:
    Project.objects.create(name="Secret", slug="secret", repository="/srv/secret", default_branch="main")
    page = cast.client(cast.viewer).get("/projects/").content.decode()
    assert "Shop" in page and "Secret" not in page
    assert "Shop" not in cast.client(cast.outsider).get("/projects/").content.decode()


def test_it_needs_a_csrf_token_even_for_htmx(cast, teams) -> None:
    client = cast.client(cast.owner, enforce_csrf_checks=True)
    url = f"/projects/{cast.project.slug}/members/"
    data = {"who": "outsider", "role": "viewer"}
    assert client.post(url, data, headers={"HX-Request": "true"}).status_code == 403
    assert not Invitation.objects.filter(invitee="outsider").exists()

    client.get(f"/projects/{cast.project.slug}/settings/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    r = client.post(url, data, headers={"HX-Request": "true", "X-CSRFToken": token})
    assert r.status_code == 200
    assert Invitation.objects.get(invitee="outsider").role == Role.VIEWER


def test_the_page_carries_the_csrf_token_for_htmx(cast) -> None:
    page = cast.client(cast.owner).get(f"/projects/{cast.project.slug}/").content.decode()
    assert 'hx-headers=\'{"X-CSRFToken": "' in page


def test_deployments_are_not_reachable_through_a_foreign_project(cast) -> None:
    Deployment.objects.create(project=cast.project, name="dev", slug="dev", branch="main")
    page = cast.client(cast.outsider).get(f"/projects/{cast.project.slug}/")
    assert page.status_code == 404
