"""A project's push webhook: GitHub, GitLab, Gitea/Forgejo and Bitbucket payloads, signatures,
ignored events and malformed bodies, replays, and who may see or rotate the secret."""

import hashlib
import hmac
import json
import uuid

import pytest

from deployments import actions
from deployments.models import Build, BuildStatus, Delivery, Deployment, Trigger, Webhook
from deployments.triggers import webhooks
from projects.sample import commit_all

SHA = "a" * 40


@pytest.fixture
def hook(cast) -> Webhook:
    return actions.do_rotate_webhook_secret(cast.project, actor=cast.owner)


@pytest.fixture
def staging(cast) -> Deployment:
    """A staging deployment that has run the branch's tip (so pushes after it are new)."""
    d = actions.do_create_deployment(cast.project, "Staging", "staging", "main", actor=cast.owner)
    Build.objects.filter(deployment=d).delete()
    Deployment.objects.filter(pk=d.pk).update(commit="b" * 40, seen_commit="b" * 40)
    return d


def payload(host: str, repository: str, branch: str = "main", commit: str = SHA) -> dict:
    """Each host's documented push payload (the fields Diploi reads, and a few it does not)."""
    ref = f"refs/heads/{branch}"
    if host in ("github", "gitea"):
        return {
            "ref": ref,
            "before": "0" * 40,
            "after": commit,
            "repository": {"clone_url": repository, "html_url": "https://example.com/x", "full_name": "team/shop"},
            "head_commit": {"id": commit, "message": "Change", "author": {"name": "Ada"}},
            "pusher": {"name": "ada"},
        }
    if host == "gitlab":
        return {"object_kind": "push", "ref": ref, "after": commit, "checkout_sha": commit, "project": {"git_http_url": repository}}
    return {
        "repository": {"full_name": "team/shop", "links": {"html": {"href": repository}}},
        "push": {"changes": [{"new": {"type": "branch", "name": branch, "target": {"hash": commit, "message": "Change"}}, "old": None}]},
    }


EVENTS = {"github": "push", "gitea": "push", "gitlab": "Push Hook", "bitbucket": "repo:push"}
OTHER_EVENTS = {"github": "issues", "gitea": "issues", "gitlab": "Issue Hook", "bitbucket": "repo:fork"}


def headers(host: str, body: bytes, secret: str, event: str | None = None, delivery: str | None = None) -> dict[str, str]:
    event = event or EVENTS[host]
    delivery = delivery or str(uuid.uuid4())
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "github": {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": f"sha256={digest}"},
        "gitea": {"X-Gitea-Event": event, "X-GitHub-Event": event, "X-Gitea-Delivery": delivery, "X-Gitea-Signature": digest},
        "gitlab": {"X-Gitlab-Event": event, "X-Gitlab-Event-UUID": delivery, "X-Gitlab-Token": secret},
        "bitbucket": {"X-Event-Key": event, "X-Request-UUID": delivery, "X-Hub-Signature": f"sha256={digest}"},
    }[host]


def post(client, hook: Webhook, body: bytes, hdrs: dict[str, str]):
    return client.post(f"/hooks/{hook.token}/", data=body, content_type="application/json", headers=hdrs)


HOSTS = ["github", "gitlab", "gitea", "bitbucket"]


@pytest.mark.parametrize("host", HOSTS)
def test_a_signed_push_queues_a_release_of_the_pushed_commit(host, cast, hook, staging, client) -> None:
    body = json.dumps(payload(host, cast.project.repository)).encode()
    r = post(client, hook, body, headers(host, body, hook.secret))
    assert r.status_code == 202, r.content
    assert r.json()["outcome"] == f"deploying staging ← {SHA[:10]}"
    [build] = Build.objects.filter(deployment=staging)
    assert (build.commit, build.status, build.trigger, build.via, build.actor) == (
        SHA,
        BuildStatus.QUEUED,
        Trigger.PUSH,
        host,
        f"webhook:{host}",
    )
    hook.refresh_from_db()
    assert hook.last_delivery and host in hook.last_outcome


@pytest.mark.parametrize("host", HOSTS)
def test_a_wrong_or_missing_signature_is_401_and_does_nothing(host, cast, hook, staging, client) -> None:
    body = json.dumps(payload(host, cast.project.repository)).encode()
    assert post(client, hook, body, headers(host, body, "not-the-secret")).status_code == 401
    unsigned = {k: v for k, v in headers(host, body, hook.secret).items() if "Signature" not in k and "Token" not in k}
    assert post(client, hook, body, unsigned).status_code == 401
    if host != "gitlab":  # GitLab sends the secret itself, not a signature of the body
        tampered = body.replace(SHA.encode(), b"c" * 40)
        assert post(client, hook, tampered, headers(host, body, hook.secret)).status_code == 401
    assert not Build.objects.filter(deployment=staging).exists()


@pytest.mark.parametrize("host", HOSTS)
def test_other_events_are_answered_and_ignored(host, cast, hook, staging, client) -> None:
    body = json.dumps({"action": "opened"}).encode()
    r = post(client, hook, body, headers(host, body, hook.secret, event=OTHER_EVENTS[host]))
    assert r.status_code == 200 and "ignored" in r.json()
    assert not Build.objects.filter(deployment=staging).exists()


@pytest.mark.parametrize("host", HOSTS)
def test_a_malformed_body_is_400_naming_the_problem(host, cast, hook, staging, client) -> None:
    for body, problem in (
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"ref": "refs/heads/main"}).encode(), "is missing"),
    ):
        r = post(client, hook, body, headers(host, body, hook.secret))
        assert r.status_code == 400 and problem in r.json()["error"], (body, r.content)
        assert host in r.json()["error"]
    bad_commit = payload(host, cast.project.repository, commit="not-a-commit")
    body = json.dumps(bad_commit).encode()
    r = post(client, hook, body, headers(host, body, hook.secret))
    assert r.status_code == 400 and "commit id" in r.json()["error"]
    assert not Build.objects.filter(deployment=staging).exists()


@pytest.mark.parametrize("host", HOSTS)
def test_unknown_repositories_and_branches_are_ignored(host, cast, hook, staging, client) -> None:
    for data in (payload(host, "https://github.com/someone/else.git"), payload(host, cast.project.repository, branch="feature")):
        body = json.dumps(data).encode()
        r = post(client, hook, body, headers(host, body, hook.secret))
        assert r.status_code == 200 and "ignored" in r.json()["outcome"], r.content
    assert not Build.objects.filter(deployment=staging).exists()


@pytest.mark.parametrize("host", HOSTS)
def test_a_replayed_delivery_is_not_acted_on_twice(host, cast, hook, staging, client) -> None:
    body = json.dumps(payload(host, cast.project.repository)).encode()
    hdrs = headers(host, body, hook.secret, delivery="delivery-1")
    assert post(client, hook, body, hdrs).status_code == 202
    r = post(client, hook, body, hdrs)
    assert r.status_code == 200 and r.json() == {"replay": True, "outcome": f"deploying staging ← {SHA[:10]}"}
    assert Build.objects.filter(deployment=staging).count() == 1
    assert Delivery.objects.filter(webhook=hook, delivery_id="delivery-1").count() == 1


def test_delivery_ids_are_kept_thirty_days(cast, hook, staging, client) -> None:
    from datetime import timedelta

    from django.utils import timezone

    old = Delivery.objects.create(webhook=hook, host="github", delivery_id="long-ago")
    Delivery.objects.filter(pk=old.pk).update(received=timezone.now() - timedelta(days=31))
    body = json.dumps(payload("github", cast.project.repository)).encode()
    assert post(client, hook, body, headers("github", body, hook.secret)).status_code == 202
    assert not Delivery.objects.filter(pk=old.pk).exists() and Delivery.objects.filter(webhook=hook).count() == 1


def test_deleted_branches_and_tags_deploy_nothing(cast, hook, staging, client) -> None:
    for data in (
        {**payload("github", cast.project.repository), "after": "0" * 40, "deleted": True},
        {**payload("github", cast.project.repository), "ref": "refs/tags/v1"},
    ):
        body = json.dumps(data).encode()
        assert post(client, hook, body, headers("github", body, hook.secret)).status_code == 200
    assert not Build.objects.filter(deployment=staging).exists()


def test_unknown_hooks_senders_and_big_bodies(cast, hook, client) -> None:
    body = json.dumps(payload("github", cast.project.repository)).encode()
    assert post(client, Webhook(token="nope"), body, headers("github", body, hook.secret)).status_code == 404
    r = post(client, hook, body, {})
    assert r.status_code == 400 and "X-GitHub-Event" in r.json()["error"]
    big = b" " * (webhooks.MAX_BODY + 1)
    assert post(client, hook, big, headers("github", big, hook.secret)).status_code == 413
    assert client.get(f"/hooks/{hook.token}/").status_code == 405


def test_a_paused_or_pinned_deployment_is_left_alone(cast, hook, staging, client) -> None:
    actions.do_set_auto_deploy(staging, False, actor=cast.owner)
    body = json.dumps(payload("github", cast.project.repository)).encode()
    r = post(client, hook, body, headers("github", body, hook.secret))
    assert r.status_code == 200 and "no deployment follows it with auto-deploy on" in r.json()["outcome"]
    actions.do_set_auto_deploy(staging, True, actor=cast.owner)
    Deployment.objects.filter(pk=staging.pk).update(pinned_at="2026-01-01T00:00Z")
    assert post(client, hook, body, headers("github", body, hook.secret)).status_code == 200
    assert not Build.objects.filter(deployment=staging).exists()


def test_addresses_of_one_repository_compare_equal(tmp_path) -> None:
    forms = [
        "https://github.com/Team/Shop.git",
        "git@github.com:team/shop.git",
        "ssh://git@github.com:22/team/shop",
        "https://u:t@github.com/team/shop/",
    ]
    assert {webhooks.canonical(a) for a in forms} == {"github.com/team/shop"}
    assert webhooks.canonical(str(tmp_path / "repo")) == webhooks.canonical(f"file://{tmp_path}/repo/")


def test_only_owners_see_and_rotate_the_secret(cast, hook, staging, client) -> None:
    url = f"/projects/{cast.project.slug}/push/"
    assert cast.client(cast.outsider).get(url).status_code == 404
    assert cast.client(cast.viewer).get(url).status_code == 403
    assert cast.client(cast.developer).post(url).status_code == 403
    page = cast.client(cast.owner).get(url)
    assert page.status_code == 200 and f"/hooks/{hook.token}/" in page.content.decode() and hook.secret not in page.content.decode()
    old = hook.secret
    page = cast.client(cast.owner).post(url).content.decode()
    hook.refresh_from_db()
    assert hook.secret != old and hook.secret in page  # shown once, after it is made
    body = json.dumps(payload("github", cast.project.repository)).encode()
    assert post(client, hook, body, headers("github", body, old)).status_code == 401
    assert post(client, hook, body, headers("github", body, hook.secret)).status_code == 202


def test_a_real_git_push_through_a_post_receive_hook(cast, hook, staging, live_server, tmp_path) -> None:
    """git's own post-receive hook posts GitHub's payload, signed, to the running server."""
    import subprocess
    import sys

    bare = tmp_path / "shop.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", cast.project.repository, str(bare)], check=True)
    hook_script = bare / "hooks" / "post-receive"
    hook_script.write_text(
        f"#!{sys.executable}\n"
        "import hashlib, hmac, json, sys, urllib.request\n"
        "for line in sys.stdin:\n"
        "    old, new, ref = line.split()\n"
        f"    body = json.dumps({{'ref': ref, 'before': old, 'after': new, 'repository': {{'clone_url': {str(bare)!r}}}}}).encode()\n"
        f"    sig = 'sha256=' + hmac.new({hook.secret!r}.encode(), body, hashlib.sha256).hexdigest()\n"
        f"    req = urllib.request.Request({live_server.url + '/hooks/' + hook.token + '/'!r}, data=body, headers={{\n"
        "        'Content-Type': 'application/json', 'X-GitHub-Event': 'push', 'X-GitHub-Delivery': new,\n"
        "        'X-Hub-Signature-256': sig})\n"
        "    print('diploi:', urllib.request.urlopen(req).read().decode())\n"
    )
    hook_script.chmod(0o755)
    cast.project.repository = str(bare)
    cast.project.save()

    work = tmp_path / "work"
    subprocess.run(["git", "clone", "--quiet", str(bare), str(work)], check=True)
    (work / "CHANGES").write_text("a change\n")
    pushed = commit_all(work, "A change")
    out = subprocess.run(["git", "push", "origin", "main"], cwd=work, capture_output=True, text=True, check=True)
    assert f"deploying staging \\u2190 {pushed[:10]}" in out.stderr, out.stderr  # the server's answer, through git
    [build] = Build.objects.filter(deployment=staging)
    assert (build.commit, build.trigger, build.via, build.status) == (pushed, Trigger.PUSH, "github", BuildStatus.QUEUED)


@pytest.mark.parametrize(
    "host, body, says",
    [
        ("github", b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (
            "bitbucket",
            b'{"repository": {}, "push": {"changes": [{"new": {"type": "branch", "name": "main", "target": "x"}}]}}',
            "not a commit id",
        ),
        (
            "bitbucket",
            b'{"repository": {}, "push": {"changes": [{"new": {"type": "branch", "name": "main", "target": [1]}}]}}',
            "not a commit id",
        ),
    ],
)
def test_a_signed_body_of_the_wrong_shape_is_refused_with_the_field_not_a_500(host, body, says, cast, hook, staging, client) -> None:
    response = post(client, hook, body, headers(host, body, hook.secret))
    assert response.status_code == 400 and says in response.content.decode(), response.content[:300]
    assert not Build.objects.filter(deployment=staging).exists()


def test_bitbucket_data_center_changes_of_the_wrong_type_are_skipped(cast, hook, staging, client) -> None:
    body = json.dumps({"repository": {}, "changes": [{"ref": "main", "toHash": SHA}, "text", {"ref": {"type": "BRANCH"}}]}).encode()
    response = post(client, hook, body, headers("bitbucket", body, hook.secret, event="repo:refs_changed"))
    assert response.status_code < 300 and not Build.objects.filter(deployment=staging).exists()
