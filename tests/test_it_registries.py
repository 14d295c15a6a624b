"""A project's image registry logins: only owners see and change them, a password is never shown again
and is stored encrypted, bad input is refused with a reason, and the runtimes get them."""

import json

import pytest
from django.db import connection

from deployments.actions import do_set_registry_credential
from deployments.models import RegistryCredential

URL = "/projects/shop/registries/"


def add(client, host: str = "ghcr.io", username: str = "ci-bot", password: str = "ghp_secret-token"):
    return client.post(URL, {"host": host, "username": username, "password": password})


@pytest.mark.django_db
def test_only_owners_reach_the_logins(cast) -> None:
    login = do_set_registry_credential(cast.project, "ghcr.io", "ci-bot", "ghp_secret-token", actor=cast.owner)
    remove = f"{URL}{login.pk}/remove/"
    for user, status in ((cast.outsider, 404), (cast.viewer, 403), (cast.developer, 403)):
        client = cast.client(user)
        assert (client.get(URL).status_code, add(client, "quay.io").status_code, client.post(remove).status_code) == (status,) * 3
    assert list(RegistryCredential.objects.values_list("host", flat=True)) == ["ghcr.io"]
    other = cast.client(cast.owner).post(f"/projects/shop/registries/{login.pk + 1000}/remove/")
    assert other.status_code == 404
    anonymous = cast.client(None).get(URL)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


@pytest.mark.django_db
def test_an_owner_adds_replaces_and_removes_a_login_whose_password_is_never_shown(cast) -> None:
    owner = cast.client(cast.owner)
    assert add(owner).status_code == 302
    assert add(owner, "GHCR.io", "other-bot", "second-token").status_code == 302  # the same host: replaced
    page = owner.get(URL).content.decode()
    assert "other-bot" in page and "ghcr.io" in page and "second-token" not in page and "ghp_secret-token" not in page
    login = RegistryCredential.objects.get()
    assert (login.host, login.username, login.password) == ("ghcr.io", "other-bot", "second-token")
    with connection.cursor() as cursor:  # at rest: encrypted
        cursor.execute("SELECT password FROM deployments_registrycredential")
        assert "second-token" not in cursor.fetchone()[0]
    assert owner.post(f"{URL}{login.pk}/remove/").status_code == 302
    assert not RegistryCredential.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "host, username, password, message",
    [
        ("https://ghcr.io", "bot", "t", "without https://"),
        ("ghcr.io/acme/web", "bot", "t", "Not a registry host"),
        ("ghcr io", "bot", "t", "Not a registry host"),
        ("registry.example.com:99999", "bot", "t", "Not a registry host"),
        ("ghcr.io", "bot:admin", "t", "no &#x27;:&#x27;"),
        ("ghcr.io", "bot", "   ", "printable characters"),
        ("ghcr.io", "bot", "line\nbreak", "printable characters"),
        ("", "bot", "t", "This field is required"),
    ],
)
def test_bad_input_is_refused_with_a_reason_and_nothing_is_stored(cast, host: str, username: str, password: str, message: str) -> None:
    answer = add(cast.client(cast.owner), host, username, password)
    assert answer.status_code == 400 and message in answer.content.decode()
    assert not RegistryCredential.objects.exists()


@pytest.mark.django_db
def test_the_deployments_pull_with_the_projects_logins(cast, settings) -> None:
    """Both runtimes get the logins in the spec; on Kubernetes they are the namespace's pull secret,
    which every pod (and a chart's diploi-pull-secret) uses, and the builder's."""
    import base64

    from deployments.runtimes.kubernetes.manifests import build_manifests, manifests
    from tests.test_it_kubernetes import sample_spec

    do_set_registry_credential(cast.project, "registry.example.com:5000", "puller", "pull-token", actor=cast.owner)
    _, spec = sample_spec(cast, "production", "prod")
    assert spec.registries == (("registry.example.com:5000", "puller", "pull-token"),)
    objects = manifests(spec)
    secret = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "registry-pull")
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert config == {"auths": {"registry.example.com:5000": {"auth": base64.b64encode(b"puller:pull-token").decode()}}}
    pods = [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert pods and all(p["imagePullSecrets"] == [{"name": "registry-pull"}] for p in pods)
    settings.DIPLOI_K8S_REGISTRY_PUSH_AUTH = "pusher:push-token"
    pushed = next(o for o in build_manifests(spec, spec.service("web")) if o["kind"] == "Secret")
    hosts = json.loads(base64.b64decode(pushed["data"][".dockerconfigjson"]))["auths"]
    assert sorted(hosts) == ["registry.example.com:5000", "registry.localhost:5000"]  # the project's, and the platform's
