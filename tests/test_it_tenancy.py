"""Single-user mode: while the runtime cannot confine deployments, the platform serves one user —
sign-up and new members are refused with the reason, every page says so — unless the operator sets
DIPLOI_ALLOW_UNCONFINED=1."""

import html
import os

import pytest
from django.test import Client

from accounts.models import User
from projects.models import Invitation, Membership

SIGNUP = {"email": "eve@example.com", "username": "eve", "password1": "correct-horse-9", "password2": "correct-horse-9"}


def test_each_runtime_says_what_it_does_not_confine(settings) -> None:
    from deployments.runtimes import get_runtime
    from deployments.runtimes.base import CONFINEMENT_PARTS
    from deployments.runtimes.local import sandbox

    local = get_runtime().confinement()
    if sandbox.available():
        expected = list(CONFINEMENT_PARTS)
    else:
        network = sandbox.network_limits() or sandbox.firewall()
        expected = (["network"] if network else []) + (["resources"] if sandbox.cgroups_available() else [])
    assert [part for part, _ in local.missing] == expected
    assert local.describe().startswith(f"deployments are NOT confined: {expected[0]}: " if expected else "deployments are confined: ")
    settings.DIPLOI_CONFINE = "off"
    assert [part for part, _ in get_runtime().confinement().missing] == list(CONFINEMENT_PARTS)
    settings.DIPLOI_RUNTIME = "kubernetes"
    get_runtime.cache_clear()
    try:
        from deployments.runtimes.kubernetes.runtime import KubernetesRuntime

        cluster = KubernetesRuntime.confinement(None)  # namespaces, policies and quotas: nothing to probe
        assert cluster.complete and cluster.describe() == "deployments are confined: files, processes, network, resources"
    finally:
        get_runtime.cache_clear()


@pytest.mark.django_db
def test_sign_up_is_refused_with_the_reason(unconfined) -> None:
    client = Client()
    page = html.unescape(client.get("/accounts/signup/").content.decode())
    assert "Sign-up is closed" in page and "single-user mode" in page and "files:" in page
    client.post("/accounts/signup/", SIGNUP)
    assert not User.objects.filter(username="eve").exists()
    assert "single-user mode" in html.unescape(client.get("/accounts/login/").content.decode())  # the banner


def test_members_are_refused_and_every_page_says_why(cast, unconfined) -> None:
    client = cast.client(cast.owner)
    r = client.post(f"/projects/{cast.project.slug}/members/", {"who": "outsider", "role": "viewer"})
    body = html.unescape(r.content.decode())
    assert r.status_code == 200 and "Members cannot be added: This Diploi runs in single-user mode" in body
    assert not Invitation.objects.exists() and not Membership.objects.filter(user=cast.outsider).exists()
    # …without telling whether the address has an account
    other = html.unescape(
        client.post(f"/projects/{cast.project.slug}/members/", {"who": "nobody@example.com", "role": "viewer"}).content.decode()
    )
    assert "Members cannot be added" in other
    for url in ("/projects/", f"/projects/{cast.project.slug}/", f"/projects/{cast.project.slug}/settings/"):
        assert 'class="banner" role="status">This Diploi runs in single-user mode' in html.unescape(client.get(url).content.decode())


def test_the_operator_can_allow_teams_and_the_pages_still_warn(cast, teams, unconfined) -> None:
    client = Client()
    assert client.post("/accounts/signup/", SIGNUP).status_code == 302
    assert User.objects.filter(username="eve").exists()
    owner = cast.client(cast.owner)
    assert owner.post(f"/projects/{cast.project.slug}/members/", {"who": "outsider", "role": "viewer"}).status_code == 200
    invitation = Invitation.objects.get(invitee="outsider")
    assert cast.client(cast.outsider).post(f"/invitations/mine/{invitation.pk}/", {"answer": "accept"}).status_code == 302
    assert Membership.objects.filter(user=cast.outsider).exists()
    page = html.unescape(owner.get("/projects/").content.decode())
    assert "The operator allowed teams on this Diploi although deployments are NOT confined" in page


def test_up_says_whether_deployments_are_confined(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import BASE_DIR

    env = {**os.environ, "DIPLOI_DATA_DIR": str(tmp_path), "DIPLOI_CONFINE": "off"}
    env.pop("DIPLOI_ALLOW_UNCONFINED", None)
    # a port that is taken stops `up` right after its first lines
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "manage.py", "up", "--port", str(port)], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
        )
    assert "deployments are NOT confined: files: " in r.stdout
    assert "single-user mode (sign-up and new members refused)" in r.stdout


def test_a_machine_that_confines_everything_serves_teams(cast, settings) -> None:
    from deployments.tenancy import mode

    confinement = mode().confinement
    if not confinement.complete:
        pytest.skip(f"this machine does not confine everything: {confinement.describe()}")
    assert mode().teams and not mode().overridden and mode().notice == ""
    assert Client().post("/accounts/signup/", SIGNUP).status_code == 302
    assert 'class="banner"' not in cast.client(cast.owner).get("/projects/").content.decode()


@pytest.mark.skipif(os.geteuid() == 0, reason="the unprivileged path (CI runs it as a regular user too)")
def test_a_platform_not_run_as_root_names_its_gaps_and_serves_one_user(cast, settings) -> None:
    """As a regular user, files and processes are confined (bubblewrap) and TCP is limited (Landlock), but
    addresses, UDP and resources need root: the platform says so and stays single-user."""
    from deployments.tenancy import mode

    settings.DIPLOI_ALLOW_UNCONFINED = False
    current = mode()
    assert [name for name, _ in current.confinement.missing] == ["network", "resources"]
    assert "address rules need Diploi to run as root" in current.confinement.describe()
    assert "cgroups need Diploi to run as root" in current.confinement.describe()
    assert not current.teams
    assert Client().post("/accounts/signup/", SIGNUP).status_code != 302
    assert not User.objects.filter(username="eve").exists()
