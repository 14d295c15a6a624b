import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from deployments.models import Deployment, State


def cli(*args: str) -> str:
    out = StringIO()
    call_command("deployments", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def dev(cast) -> Deployment:
    return Deployment.objects.create(project=cast.project, name="Dev", slug="dev", branch="main", state=State.RUNNING)


def test_members_list_and_see_status(cast, dev) -> None:
    for user in ("owner", "developer", "viewer"):
        rows = json.loads(cli("--user", user, "list", "--json"))
        assert [(r["project"], r["slug"], r["state"]) for r in rows] == [("shop", "dev", "running")]
        status = json.loads(cli("--user", user, "status", "shop/dev", "--json"))
        assert status["stage"] == "development" and status["branch"] == "main"


def test_outsiders_see_nothing(cast, dev) -> None:
    assert json.loads(cli("--user", "outsider", "list", "--json")) == []
    for args in (["status", "shop/dev"], ["restart", "shop/dev", "web"], ["destroy", "shop/dev"], ["list", "shop"]):
        with pytest.raises(CommandError, match="not found"):
            cli("--user", "outsider", *args)


def test_viewers_cannot_change_anything(cast, dev) -> None:
    with pytest.raises(CommandError, match="permission denied"):
        cli("--user", "viewer", "restart", "shop/dev", "web")
    with pytest.raises(CommandError, match="permission denied"):
        cli("--user", "viewer", "create", "shop", "another")
    with pytest.raises(CommandError, match="permission denied"):
        cli("--user", "developer", "destroy", "shop/dev")  # deleting is for owners
    assert Deployment.objects.get(pk=dev.pk).state == State.RUNNING
    assert Deployment.objects.count() == 1


def test_bad_input_is_a_clear_error(cast, dev) -> None:
    with pytest.raises(CommandError, match="no active user “nobody”"):
        cli("--user", "nobody", "list")
    with pytest.raises(CommandError, match="<project>/<deployment>"):
        cli("--user", "owner", "status", "dev")
    with pytest.raises(CommandError, match="already has a deployment called “dev”"):
        cli("--user", "owner", "create", "shop", "Dev")
    with pytest.raises(CommandError, match="branch: Branch “gone” does not exist"):
        cli("--user", "owner", "create", "shop", "other", "--branch", "gone")


def test_create_saves_and_queues(cast) -> None:
    out = cli("--user", "developer", "create", "shop", "Feature X", "--stage", "staging")
    d = Deployment.objects.get()
    assert (d.slug, d.stage, d.state, d.created_by) == ("feature-x", "staging", State.PENDING, cast.developer)
    assert out.strip() == "shop/feature-x: Starting — Making its processes and storage"


def test_releases_deploy_rollback_and_promote_from_the_command_line(cast) -> None:
    from deployments.models import Build, BuildStatus

    prod = Deployment.objects.create(project=cast.project, name="Prod", slug="prod", stage="production", branch="main", state=State.RUNNING)
    old = Build.objects.create(deployment=prod, commit="a" * 40, status=BuildStatus.SUCCEEDED, message="First")
    Build.objects.create(deployment=prod, commit="b" * 40, status=BuildStatus.FAILED, error="pip failed")
    rows = json.loads(cli("--user", "viewer", "releases", "shop/prod", "--json"))
    assert [(r["commit"][:1], r["status"], r["message"]) for r in rows] == [("b", "failed", ""), ("a", "succeeded", "First")]

    with pytest.raises(CommandError, match="permission denied"):
        cli("--user", "viewer", "deploy", "shop/prod")
    with pytest.raises(CommandError, match="permission denied"):
        cli("--user", "viewer", "rollback", "shop/prod", str(old.pk))
    with pytest.raises(CommandError, match="not found"):
        cli("--user", "outsider", "releases", "shop/prod")
    with pytest.raises(CommandError, match="40 hexadecimal"):
        cli("--user", "developer", "deploy", "shop/prod", "--commit", "main; rm -rf /")
    with pytest.raises(CommandError, match="only kept, successful releases"):
        cli("--user", "developer", "rollback", "shop/prod", str(Build.objects.get(status=BuildStatus.FAILED).pk))
    with pytest.raises(CommandError, match="No such release"):
        cli("--user", "developer", "rollback", "shop/prod", "99999")
    with pytest.raises(CommandError, match="staging release on a production deployment"):
        cli("--user", "developer", "promote", "shop/prod", str(old.pk), "prod")

    assert "release #" in cli("--user", "developer", "deploy", "shop/prod", "--commit", "C" * 40)
    assert Build.objects.filter(deployment=prod, commit="c" * 40, status=BuildStatus.QUEUED).exists()
    assert "pinned" in cli("--user", "developer", "rollback", "shop/prod", str(old.pk))
    prod.refresh_from_db()
    assert prod.pinned_at and prod.pinned_by == cast.developer
    assert Build.objects.get(commit="c" * 40).status == BuildStatus.SUPERSEDED  # the newer rollback wins
    assert "pinned to" in cli("--user", "viewer", "releases", "shop/prod")
    cli("--user", "developer", "resume", "shop/prod")
    prod.refresh_from_db()
    assert prod.pinned_at is None and prod.auto_deploy
