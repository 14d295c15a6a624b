"""Bad input gets a 4xx with a sentence, never a 500, and changes nothing (issue 19's list)."""

import re
import shutil
from pathlib import Path

import pytest

from deployments.models import Deployment, State
from projects.models import Project
from tests.conftest import page_text


@pytest.fixture
def dev(cast) -> Deployment:
    return Deployment.objects.create(
        project=cast.project, name="Dev", slug="dev", branch="main", state=State.RUNNING, commit=cast.project.stack_commit
    )


def test_github_login_is_no_route_when_it_is_not_configured(cast) -> None:
    assert cast.client(None).get("/accounts/github/login/").status_code == 404
    assert "GitHub" not in page_text(cast.client(None).get("/accounts/login/"))


def test_a_log_request_for_a_service_that_is_not_there_is_a_page(cast, dev) -> None:
    client = cast.client(cast.viewer)
    for service in ("%00", "nope", "../../etc"):
        r = client.get(f"/projects/shop/d/dev/logs/?service={service}")
        assert r.status_code == 404 and "has no log" in page_text(r), service
        assert client.get(f"/projects/shop/d/dev/logs/{service}.log").status_code == 404


@pytest.mark.parametrize(
    "branch, message",
    [
        ("nope", "Branch “nope” does not exist in the repository"),
        ("HEAD", "“HEAD” is not a valid branch name"),
        ("a..b", "is not a valid branch name"),
    ],
)
def test_a_branch_must_exist(cast, dev, branch: str, message: str) -> None:
    client = cast.client(cast.developer)
    r = client.post("/projects/shop/d/dev/branch/", {"branch": branch}, headers={"HX-Request": "true"})
    assert r.status_code == 200 and message in page_text(r)
    assert Deployment.objects.get(pk=dev.pk).branch == "main"
    r = client.post("/projects/shop/deployments/new/", {"name": "X", "stage": "development", "branch": branch})
    assert message in page_text(r) and not Deployment.objects.filter(slug="x").exists()


def test_a_branch_pushed_since_the_last_fetch_is_found(cast, dev, sample_repo: Path) -> None:
    from projects.git import run_git

    run_git("branch", "fresh", cwd=sample_repo)
    r = cast.client(cast.developer).post("/projects/shop/d/dev/branch/", {"branch": "fresh"})
    assert r.status_code == 302 and Deployment.objects.get(pk=dev.pk).branch == "fresh"


@pytest.mark.parametrize("name", ["xn--zz.com", "xn--a.example.com", "xn--.example.com"])
def test_a_punycode_label_must_decode(cast, dev, name: str) -> None:
    r = cast.client(cast.developer).post("/projects/shop/d/dev/domains/", {"name": name}, headers={"HX-Request": "true"})
    assert "is not a valid international domain name" in page_text(r) or "is not a valid domain name" in page_text(r)
    assert not dev.domains.exists()


@pytest.mark.parametrize(
    "name, stored",
    [
        ("straße.de", "xn--strae-oqa.de"),  # IDNA 2008 keeps ß (IDNA 2003 made it strasse.de, another owner's name)
        ("exa\u200bmple.com", None),  # a zero-width space is refused, not dropped
        ("exa\u200dmple.com", None),  # a zero-width joiner outside the scripts that use it
    ],
)
def test_domains_follow_idna_2008(cast, dev, name: str, stored: str | None) -> None:
    r = cast.client(cast.developer).post("/projects/shop/d/dev/domains/", {"name": name}, headers={"HX-Request": "true"})
    if stored is None:
        assert "is not a valid international domain name" in page_text(r) and not dev.domains.exists()
    else:
        assert [d.name for d in dev.domains.all()] == [stored] and dev.domains.get().display_name == name


def test_an_unreadable_repository_is_refused_at_creation_with_a_sentence(cast, tmp_path: Path, local_repositories) -> None:
    client = cast.client(cast.owner)
    r = client.post("/projects/new/", {"name": "Gone", "repository": str(tmp_path / "missing"), "default_branch": "main"})
    assert r.status_code == 200
    message = re.search(r"Could not read the repository: [^.]*\.", page_text(r)).group(0)
    assert "does not appear to be a git repository" in message and "and the repository exists" not in page_text(r)
    assert not Project.objects.filter(name="Gone").exists()
    r = client.post("/projects/new/", {"name": "Gone", "repository": cast.project.repository, "default_branch": "nope"})
    assert "Branch “nope” does not exist in the repository" in page_text(r) and not Project.objects.filter(name="Gone").exists()


def test_a_project_whose_repository_went_away_still_renders_and_can_be_moved_or_deleted(
    cast, sample_repo: Path, tmp_path, local_repositories
) -> None:
    from projects.stack import project_mirror

    shutil.rmtree(project_mirror(cast.project))
    moved = tmp_path / "moved"
    shutil.move(sample_repo, moved)
    client = cast.client(cast.owner)
    for url in ("/projects/", "/projects/shop/", "/projects/shop/settings/"):
        assert client.get(url).status_code == 200, url
    r = client.post("/projects/shop/settings/", {"name": "Shop", "repository": str(moved), "default_branch": "main"})
    assert r.status_code == 302 and Project.objects.get(pk=cast.project.pk).repository == str(moved)
    assert client.post("/projects/shop/delete/", {"confirm": "Shop"}).status_code == 302
    assert not Project.objects.filter(pk=cast.project.pk).exists()


def test_a_repository_address_with_a_control_character_is_refused_with_a_sentence(cast) -> None:
    client = cast.client(cast.owner)
    for address in ("/tmp/repo\x00", "https://example.com/a\x00b.git", "https://example.com/a\tb.git"):
        r = client.post("/projects/new/", {"name": "Nul", "repository": address, "default_branch": "main"})
        page = r.content.decode()
        assert r.status_code == 200 and ("This repository address is not allowed." in page or "Null characters are not allowed." in page), (
            address
        )
    assert not Project.objects.filter(name="Nul").exists()


def test_a_form_in_another_charset_is_refused_before_it_is_read(cast) -> None:
    client = cast.client(cast.owner)
    body = "name=Shop&repository=x"  # the test client encodes it in the charset named
    r = client.post("/projects/new/", data=body, content_type="application/x-www-form-urlencoded; charset=utf-16")
    assert r.status_code == 415 and "UTF-8" in r.content.decode()
    r = client.post("/accounts/login/", data=body, content_type="application/x-www-form-urlencoded; charset=UTF-16")
    assert r.status_code == 415
    ok = client.post("/projects/new/", data=b"name=", content_type="application/x-www-form-urlencoded; charset=UTF-8")
    assert ok.status_code == 200  # UTF-8, said or not, is read as before


def test_the_sandbox_starts_bubblewrap_by_its_path() -> None:
    from deployments.runtimes.local.sandbox import Sandbox

    argv = Sandbox(writable=(), cwd=Path("/")).argv(["true"])
    assert argv[0].startswith("/") and argv[0].endswith("/bwrap")  # never looked up on a PATH a deployment set
