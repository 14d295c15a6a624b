"""External build mode's edges: the project's CI token (who may create it, shown once, replaced) and
the report endpoint's refusals. The whole flow, with a cluster, is in test_it_kubernetes.py."""

import json

import pytest

from deployments.models import Build, BuildStatus, CIReport, Deployment, State

pytestmark = pytest.mark.django_db
COMMIT = "a" * 40
URL = "/api/ci/builds/"


def report(client, token: str | None, body, content_type: str = "application/json"):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(URL, data=data, content_type=content_type, **headers)


def good(**changes) -> dict:
    return {
        "commit": COMMIT,
        "component": "web",
        "status": "succeeded",
        "image": f"registry.example.com/shop/web:{COMMIT}@sha256:{'a' * 64}",
        "url": "https://ci.example.com/runs/7",
        **changes,
    }


def test_only_owners_create_the_token_and_see_it_once(cast) -> None:
    assert cast.client(cast.outsider).post("/projects/shop/ci-token/").status_code == 404
    for user in (cast.viewer, cast.developer):
        assert cast.client(user).post("/projects/shop/ci-token/").status_code == 403
    cast.project.refresh_from_db()
    assert cast.project.ci_token_hash == ""

    owner = cast.client(cast.owner)
    page = owner.post("/projects/shop/ci-token/").content.decode()
    token = page.split('<pre class="copy" id="ci-token">')[1].split("</pre>")[0]
    assert token.startswith("diploi_ci_") and len(token) > 40
    cast.project.refresh_from_db()
    assert token not in cast.project.ci_token_hash  # only the hash is kept
    again = owner.get("/projects/shop/settings/").content.decode()
    assert token not in again and "A token exists" in again and "Replace token" in again
    assert "Create token" not in cast.client(cast.developer).get("/projects/shop/settings/").content.decode()

    assert report(owner, token, good()).status_code == 202
    replaced = owner.post("/projects/shop/ci-token/").content.decode().split('id="ci-token">')[1].split("</pre>")[0]
    assert replaced != token
    assert report(owner, token, good()).status_code == 401  # the old token stops at once
    assert report(owner, replaced, good()).status_code == 202


def test_reports_without_a_valid_token_are_refused_alike(cast, client) -> None:
    token = cast.project.rotate_ci_token()
    for bad in (None, "", "diploi_ci_wrong", token + "x", token.removeprefix("diploi_ci_")):
        response = report(client, bad, good())
        assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer", bad
        assert "CI token" in response.json()["error"]
    basic = client.post(URL, data=json.dumps(good()), content_type="application/json", HTTP_AUTHORIZATION=f"Basic {token}")
    assert basic.status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 405
    assert not CIReport.objects.exists()


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ("{not json", None, "not JSON"),
        ([good()], "body", "JSON object"),
        (good(extra="x"), "body", "Unknown fields: extra"),
        (good(commit="abc123"), "commit", "40-character"),
        (good(commit="A" * 40), "commit", "lower case"),
        (good(component="Web_1"), "component", "“Web_1”"),
        (good(status="done"), "status", "running, succeeded, failed"),
        (good(image=""), "image", "names its image"),
        (good(image="registry.example.com/shop/web"), "image", "pinned by digest"),
        (good(image=f"registry.example.com/shop/web:{COMMIT}"), "image", "a tag alone can move"),
        (good(image="Registry.example.com/Shop/web:1 ; rm -rf /"), "image", "pinned by digest"),
        (good(url="ftp://ci.example.com/run"), "url", "http(s) URL"),
        (good(message=["not", "text"]), "message", "Must be a string"),
        (good(commit=COMMIT + "\n"), "commit", "40-character"),  # a trailing newline is not part of it
        (good(component="web\n"), "component", "“web\n”"),
        (good(image=f"registry.example.com/shop/web@sha256:{'a' * 64}\n"), "image", "pinned by digest"),
        ("[" * 5_000 + "]" * 5_000, None, "nests too deeply"),
    ],
)
def test_malformed_reports_are_refused_with_the_reason_and_store_nothing(cast, client, body, field, says) -> None:
    token = cast.project.rotate_ci_token()
    response = report(client, token, body if isinstance(body, str) else body)
    assert response.status_code == 400
    answer = response.json()
    assert says in (answer["fields"][field] if field else answer["error"]), answer
    assert not CIReport.objects.exists()


def test_an_oversized_report_is_refused(cast, client) -> None:
    token = cast.project.rotate_ci_token()
    response = report(client, token, good(message="x" * 20000))
    assert response.status_code == 413 and not CIReport.objects.exists()


def test_reports_are_kept_per_commit_and_wake_the_deployments_waiting_for_them(
    cast, client, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    from deployments.provisioning import tasks

    token = cast.project.rotate_ci_token()
    prod = Deployment.objects.create(
        project=cast.project, name="Prod", slug="prod", stage="production", branch="main", state=State.BUILDING
    )
    Deployment.objects.create(project=cast.project, name="Stage", slug="stage", stage="staging", branch="main", state=State.RUNNING)
    Build.objects.create(deployment=prod, commit=COMMIT, status=BuildStatus.RUNNING)
    queued = []
    # The worker's side (provisioning with the reported image) is in test_it_kubernetes.
    monkeypatch.setattr(tasks.provision, "delay", lambda *args, **kwargs: queued.append((args, kwargs)))
    with django_capture_on_commit_callbacks(execute=True):
        first = report(client, token, good(status="running", image=""))
    assert first.status_code == 202 and first.json()["deployments"] == ["prod"] and queued == [((prod.pk,), {"actor": "ci"})]
    with django_capture_on_commit_callbacks(execute=True):
        assert report(client, token, good()).status_code == 202
    other = report(client, token, good(commit="b" * 40, status="failed", image="", message="tests failed"))
    assert other.json()["deployments"] == []  # nobody waits for that commit; the report is kept for later
    assert len(queued) == 2
    assert [(r.commit[0], r.component, r.status, r.image != "") for r in CIReport.objects.order_by("commit")] == [
        ("a", "web", "succeeded", True),
        ("b", "web", "failed", False),
    ]
