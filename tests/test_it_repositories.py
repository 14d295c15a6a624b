"""Which repositories a project may use: not the platform's own files, not its internal services,
and never with the platform's own credentials."""

import pytest
from django.core.exceptions import ValidationError

import gitsafe
from projects.validators import validate_repository


@pytest.mark.parametrize(
    "address",
    [
        "/etc",
        "/work/diploi/data",
        "file:///etc",
        "file:///root/.ssh",
        "/tmp/../etc",
    ],
)
def test_local_repositories_need_a_folder_the_operator_allows(settings, tmp_path, address) -> None:
    settings.DATA_DIR = tmp_path / "data"
    with pytest.raises(ValidationError, match="DIPLOI_LOCAL_REPOSITORIES"):
        validate_repository(address)


def test_allowed_folders_and_the_demos_own_repository_are_accepted(settings, tmp_path) -> None:
    settings.DATA_DIR = tmp_path / "data"
    validate_repository(str(tmp_path / "data" / "repos" / "diploi-sample"))  # the demo's own, always
    with pytest.raises(ValidationError):
        validate_repository(str(tmp_path / "mine" / "shop"))
    settings.DIPLOI_LOCAL_REPOSITORIES = [str(tmp_path / "mine")]
    validate_repository(str(tmp_path / "mine" / "shop"))
    validate_repository(f"file://{tmp_path}/mine/shop")
    with pytest.raises(ValidationError):
        validate_repository(str(tmp_path / "mine-not"))  # a prefix of the name is not the folder
    with pytest.raises(ValidationError):
        validate_repository(str(tmp_path / "mine" / ".." / "elsewhere"))


@pytest.mark.parametrize(
    "address",
    [
        "http://127.0.0.1:6379/x.git",
        "https://localhost/repo.git",
        "http://169.254.169.254/latest/meta-data",
        "https://10.0.0.5/shop.git",
        "git://192.168.1.2/shop.git",
        "ssh://git@[::1]:22/shop.git",
        "git@127.0.0.1:shop.git",
        "https://user:pw@172.16.0.1/shop.git",
    ],
)
def test_servers_on_this_machine_or_private_networks_are_refused(address) -> None:
    with pytest.raises(ValidationError, match="private network"):
        validate_repository(address)


def test_the_operator_can_allow_private_servers(settings) -> None:
    settings.DIPLOI_ALLOW_PRIVATE_REPOSITORIES = True
    validate_repository("https://10.0.0.5/shop.git")
    validate_repository("git@127.0.0.1:shop.git")


@pytest.mark.parametrize(
    "address", ["https://github.com/diploi/starter-web-app.git", "git@github.com:diploi/starter-web-app.git", "https://93.184.215.14/x.git"]
)
def test_public_servers_are_accepted(address) -> None:
    validate_repository(address)  # (a name that does not resolve here is left for git to report)


def test_git_runs_without_the_platforms_credentials(tmp_path, monkeypatch) -> None:
    """A ~/.gitconfig credential helper or ssh key of the platform's user is never used."""
    import subprocess

    from projects.git import GitError, run_git

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".gitconfig").write_text(
        '[credential]\n\thelper = !echo password=leaked; echo username=platform; true\n[url "/nonexistent/"]\n\tinsteadOf = https://example.invalid/\n'
    )
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(GitError) as e:
        run_git("ls-remote", "https://example.invalid/shop.git")
    assert "nonexistent" not in str(e.value)  # the platform user's git config was not read
    out = subprocess.run(
        ["git", "config", "--list", "--show-origin"],
        env=gitsafe.environment(),
        capture_output=True,
        text=True,
    )
    assert "leaked" not in out.stdout and str(home) not in out.stdout


def test_credentials_in_a_repository_address_are_not_shown_to_members(cast) -> None:
    from projects.models import Project

    Project.objects.filter(pk=cast.project.pk).update(repository="https://bob:s3cret-token@git.example.com/shop.git")
    for user in (cast.viewer, cast.developer):
        client = cast.client(user)
        for url in ("/projects/", "/projects/shop/", "/projects/shop/d/nope/"):
            page = client.get(url).content.decode()
            assert "s3cret-token" not in page, (user, url)
        assert "https://…@git.example.com/shop.git" in client.get("/projects/").content.decode()
