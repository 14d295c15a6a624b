"""Releases on the local runtime (real processes, real git): the build queue, rollback and promote
without a build, pinning, pruning, development fast-forward, and polling."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from deployments import actions
from deployments.models import Build, BuildStatus, Deployment, Poll, State, Trigger, Webhook
from deployments.provisioning import tasks
from deployments.provisioning.spec import current_spec
from deployments.triggers import polling
from projects.sample import commit_all
from tests.conftest import http_get, wait_until


def deploy(cast, name: str, stage: str) -> Deployment:
    d = actions.do_create_deployment(cast.project, name, stage, "main", actor=cast.developer)
    tasks.provision(d.pk)
    d = Deployment.objects.select_related("release", "project").get(pk=d.pk)
    assert d.state == State.RUNNING, d.state_reason
    return d


def push(repo: Path, text: str) -> str:
    (repo / "CHANGES").write_text(text)
    return commit_all(repo, text)


def serving(d: Deployment, commit: str) -> bool:
    return commit[:10] in http_get(d.endpoints["web"])


def test_ten_rapid_pushes_run_the_last_commit_with_none_lost(cast, runtime, sample_repo: Path) -> None:
    d = deploy(cast, "Staging", "staging")
    commits = [push(sample_repo, f"change {i}") for i in range(10)]
    for c in commits:
        actions.do_receive_push(cast.project, "main", c, trigger=Trigger.PUSH, via="github", actor="webhook:github")
    actions.do_receive_push(cast.project, "main", commits[-1], trigger=Trigger.PUSH, via="github", actor="webhook:github")  # a duplicate
    tasks.provision(d.pk)

    d.refresh_from_db()
    assert d.commit == commits[-1] and d.release.commit == commits[-1] and d.state == State.RUNNING
    pushed = Build.objects.filter(deployment=d, trigger=Trigger.PUSH).order_by("pk")
    assert [b.commit for b in pushed] == commits  # each push recorded once, in order
    assert [b.status for b in pushed] == [BuildStatus.SUPERSEDED] * 9 + [BuildStatus.SUCCEEDED]
    assert not Build.objects.filter(deployment=d, status__in=[BuildStatus.QUEUED, BuildStatus.RUNNING]).exists()
    built = sorted(Build.objects.filter(deployment=d, started__isnull=False), key=lambda b: b.started)
    assert all(a.finished <= b.started for a, b in zip(built, built[1:], strict=False))  # never two at once
    wait_until(lambda: serving(d, commits[-1]), what="the last commit serving")


def test_a_build_its_worker_left_running_is_built_again_then_failed(cast, runtime, sample_repo: Path) -> None:
    d = deploy(cast, "Staging", "staging")
    commit = push(sample_repo, "change")
    build = actions.do_deploy(d, actor=cast.developer)
    # What a worker killed half-way leaves: the build running, its lease lapsed.
    Build.objects.filter(pk=build.pk).update(status=BuildStatus.RUNNING, attempts=1, log="half way\n", started=timezone.now())
    tasks.provision(d.pk)
    build.refresh_from_db()
    assert build.status == BuildStatus.SUCCEEDED and build.attempts == 2 and build.commit == commit
    assert build.log.startswith("half way\n") and "building again (attempt 2)" in build.log

    again = actions.do_deploy(d, actor=cast.developer)
    Build.objects.filter(pk=again.pk).update(status=BuildStatus.RUNNING, attempts=3)
    tasks.provision(d.pk)
    again.refresh_from_db()
    d.refresh_from_db()
    assert again.status == BuildStatus.FAILED and "stopped 3 times" in again.error
    assert d.release == build  # the last good release still runs


def test_a_release_built_whose_worker_stopped_before_the_switch_runs_at_the_next_pass(
    cast, runtime, sample_repo: Path, monkeypatch
) -> None:
    from deployments.provisioning import pipeline

    d = deploy(cast, "Staging", "staging")
    old = d.release
    commit = push(sample_repo, "change")
    build = actions.do_deploy(d, actor=cast.developer)

    class WorkerKilled(BaseException):  # what no handler of the pass catches, as a SIGKILL would not be
        pass

    def killed(*args, **kwargs):
        raise WorkerKilled

    monkeypatch.setattr(pipeline, "_apply", killed)  # right after the build, before the switch
    with pytest.raises(WorkerKilled):
        tasks.provision(d.pk)
    monkeypatch.undo()
    build.refresh_from_db()
    d.refresh_from_db()
    assert build.status == BuildStatus.SUCCEEDED and d.release == old

    tasks.provision(d.pk)  # the next pass (the reconciler's, or a restarted worker's)
    d.refresh_from_db()
    build.refresh_from_db()
    assert d.release == build and d.commit == commit and build.attempts == 1  # run, not built again
    wait_until(lambda: serving(d, commit), what="the release to serve")


def test_a_failed_build_keeps_the_failing_commands_output(cast, runtime, sample_repo: Path) -> None:
    d = deploy(cast, "Prod", "production")
    (sample_repo / "web" / "requirements.txt").write_text("this is not a requirement !!!\n")
    commit_all(sample_repo, "Break the build")
    build = actions.do_deploy(d, actor=cast.developer)
    tasks.provision(d.pk)
    page = cast.client(cast.viewer).get(f"/projects/shop/d/{d.slug}/releases/{build.pk}/").content.decode()
    assert "Failed" in page and "exited with code" in page
    assert "requirements.txt" in page or "Invalid requirement" in page  # pip's own words, after the build
    build.refresh_from_db()  # the reason shown with the release quotes the installer's error, not its command
    assert build.error.startswith("install failed: web: exited with code") and "error: " in build.error.lower(), build.error


def test_rollback_runs_an_old_release_without_a_build_and_pins(cast, runtime, sample_repo: Path) -> None:
    d = deploy(cast, "Prod", "production")
    first = d.release
    second_commit = push(sample_repo, "second")
    actions.do_deploy(d, actor=cast.developer)
    tasks.provision(d.pk)
    wait_until(lambda: serving(d, second_commit), what="the second release")
    release_dir = runtime.layout.releases(current_spec(d)) / first.commit
    made = release_dir.stat().st_mtime_ns

    rollback = actions.do_rollback(d, first.pk, actor=cast.developer)
    tasks.provision(d.pk)
    rollback.refresh_from_db()
    d = Deployment.objects.select_related("release").get(pk=d.pk)
    assert d.release == rollback and d.commit == first.commit and rollback.source == first
    assert [s["name"] for s in rollback.steps] == ["release"] and "no build" in rollback.log  # no build ran
    assert release_dir.stat().st_mtime_ns == made  # the artifact itself, untouched
    wait_until(lambda: serving(d, first.commit), what="the old release serving")
    assert d.pinned_at and d.pinned_by == cast.developer

    third = push(sample_repo, "third")
    assert actions.do_receive_push(cast.project, "main", third, trigger=Trigger.PUSH, actor="webhook:github") == []
    page = cast.client(cast.viewer).get(d.get_absolute_url()).content.decode()
    assert "Pinned to" in page and "new pushes are not deployed" in page and "Resume" not in page  # viewers cannot resume

    assert cast.client(cast.viewer).post(f"/projects/shop/d/{d.slug}/resume/").status_code == 403
    assert cast.client(cast.outsider).post(f"/projects/shop/d/{d.slug}/releases/{first.pk}/rollback/").status_code == 404
    assert cast.client(cast.developer).post(f"/projects/shop/d/{d.slug}/resume/").status_code == 302
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.pinned_at is None and d.commit == third


def test_promote_runs_the_staging_artifact_on_production(cast, runtime, sample_repo: Path) -> None:
    staging = deploy(cast, "Staging", "staging")
    production = deploy(cast, "Prod", "production")
    tested = push(sample_repo, "tested on staging")
    actions.do_deploy(staging, actor=cast.developer)
    tasks.provision(staging.pk)
    staging.refresh_from_db()
    push(sample_repo, "not tested yet")

    assert (
        cast.client(cast.viewer).post(f"/projects/shop/d/staging/releases/{staging.release_id}/promote/", {"target": "prod"}).status_code
        == 403
    )
    r = cast.client(cast.developer).post(f"/projects/shop/d/staging/releases/{staging.release_id}/promote/", {"target": "prod"})
    assert r.status_code == 302 and r.url.endswith("/d/prod/")
    tasks.provision(production.pk)
    production = Deployment.objects.select_related("release").get(pk=production.pk)
    promoted = production.release
    assert promoted.trigger == Trigger.PROMOTE and promoted.source_id == staging.release_id and promoted.commit == tested
    assert [s["name"] for s in promoted.steps] == ["release"]  # no build
    assert (runtime.layout.releases(current_spec(production)) / tested).is_dir()  # its own copy of the artifact
    wait_until(lambda: serving(production, tested), what="the promoted release serving")
    with pytest.raises(ValidationError):
        actions.do_promote(production, promoted.pk, staging, actor=cast.developer)  # only staging → production


def test_pruning_keeps_the_configured_number_of_artifacts(cast, runtime, sample_repo: Path, settings) -> None:
    settings.DIPLOI_RELEASES_KEPT = 2
    d = deploy(cast, "Prod", "production")
    for i in range(3):
        push(sample_repo, f"release {i}")
        actions.do_deploy(d, actor=cast.developer)
        tasks.provision(d.pk)
    succeeded = list(Build.objects.filter(deployment=d, status=BuildStatus.SUCCEEDED).order_by("pk"))
    assert [b.pruned for b in succeeded] == [True, True, False, False]
    releases = runtime.layout.releases(current_spec(d))
    assert sorted(p.name for p in releases.iterdir()) == sorted(b.commit for b in succeeded[2:])
    with pytest.raises(ValidationError, match="pruned"):
        actions.do_rollback(d, succeeded[0].pk, actor=cast.developer)


def test_development_fast_forwards_clean_code_and_keeps_edits(cast, runtime, sample_repo: Path) -> None:
    d = deploy(cast, "Dev", "development")
    code = runtime.layout.code(current_spec(d))
    newer = push(sample_repo, "newer")
    assert actions.do_receive_push(cast.project, "main", newer, trigger=Trigger.POLL, actor="poll") == [d]
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.commit == newer and (code / "CHANGES").read_text() == "newer" and d.code_behind == {}
    wait_until(lambda: serving(d, newer), what="the new code serving")

    app = code / "web" / "app.py"
    app.write_text(app.read_text() + "\n# my edit\n")
    newest = push(sample_repo, "newest")
    actions.do_receive_push(cast.project, "main", newest, trigger=Trigger.POLL, actor="poll")
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.commit == newer and d.code_behind["behind"] == 1 and d.code_behind["files"] == ["web/app.py"]
    assert app.read_text().endswith("# my edit\n")  # never lost
    page = cast.client(cast.viewer).get(d.get_absolute_url()).content.decode()
    assert "1 commit behind" in page and "web/app.py" in page


def test_polling_finds_a_push_once_and_backs_off_on_errors(cast, runtime, sample_repo: Path, settings) -> None:
    settings.DIPLOI_POLL_INTERVAL = 30
    d = deploy(cast, "Staging", "staging")
    now = timezone.now()
    assert polling.poll_due(now) == 1 and not Build.objects.filter(deployment=d, trigger=Trigger.POLL).exists()
    commit = push(sample_repo, "found by polling")
    assert polling.poll_due(now + timedelta(seconds=10)) == 0  # not its turn yet
    assert polling.poll_due(now + timedelta(seconds=31)) == 1  # within one interval
    [found] = Build.objects.filter(deployment=d, trigger=Trigger.POLL)
    assert found.commit == commit and found.actor == "poll"
    polling.poll_due(now + timedelta(seconds=62))
    assert Build.objects.filter(deployment=d, trigger=Trigger.POLL).count() == 1  # no duplicate
    Poll.objects.filter(repository=cast.project.repository).update(next_at=now)

    # A repository whose webhook is heard from is read ten times less often (a safety net).
    Webhook.objects.create(project=cast.project, token="t", secret="s", last_delivery=now)
    polling.poll_due(now + timedelta(seconds=62))
    poll = Poll.objects.get(repository=cast.project.repository)
    assert poll.next_at == now + timedelta(seconds=62 + 300)
    Webhook.objects.filter(project=cast.project).delete()
    Poll.objects.filter(pk=poll.pk).update(next_at=now)

    (sample_repo / ".git").rename(sample_repo / "git-away")
    polling.poll_due(now + timedelta(seconds=93))
    poll = Poll.objects.get(repository=cast.project.repository)
    assert poll.failures == 1 and "Could not read" in poll.last_error
    assert poll.next_at == now + timedelta(seconds=93 + 60)  # backed off: twice the interval
