"""A build's state machine: queued → running → succeeded | failed, owned by the Build model."""

import pytest

from deployments.models import Build, BuildStatus, Deployment, State

pytestmark = pytest.mark.django_db


@pytest.fixture
def build(cast) -> Build:
    d = Deployment.objects.create(project=cast.project, name="Prod", slug="prod", stage="production", branch="main", state=State.BUILDING)
    return Build.objects.create(deployment=d, commit="a" * 40)


def statuses(build: Build) -> list[str]:
    return [s["status"] for s in build.steps]


def test_a_new_build_is_queued_with_every_step_queued(build) -> None:
    assert build.status == BuildStatus.QUEUED and build.progress == 0
    assert [s["name"] for s in build.steps] == ["clone", "install", "build", "release"]
    assert statuses(build) == ["queued"] * 4


def test_advancing_runs_a_step_and_finishes_the_running_ones_before_it(build) -> None:
    build.start()
    build.advance("clone", 0, "Checking out")
    assert statuses(build) == ["running", "queued", "queued", "queued"]
    build.advance("build", 60, "compiling")
    assert statuses(build) == ["succeeded", "queued", "running", "queued"]  # install never ran: it stays queued
    build.advance("build", 40)
    assert build.progress == 60  # progress never goes back
    assert build.log == "Checking out\ncompiling\n"
    build.save_progress()
    build.refresh_from_db()
    assert build.status == BuildStatus.RUNNING and statuses(build) == ["succeeded", "queued", "running", "queued"]


def test_a_failure_names_its_step_and_keeps_the_release(build) -> None:
    previous = Build.objects.create(deployment=build.deployment, commit="b" * 40, status=BuildStatus.SUCCEEDED)
    Deployment.objects.filter(pk=build.deployment_id).update(release=previous)
    build.start()
    build.advance("install", 30)
    build.fail("install", "install failed: pip exited with code 1")
    build.refresh_from_db()
    assert build.status == BuildStatus.FAILED and build.error == "install failed: pip exited with code 1"
    assert statuses(build) == ["queued", "failed", "queued", "queued"] and build.finished
    assert build.log.endswith("install failed: pip exited with code 1\n")
    assert Deployment.objects.get(pk=build.deployment_id).release_id == previous.pk


def test_success_finishes_every_step_and_leaves_running_it_to_provisioning(build) -> None:
    build.start()
    build.advance("clone", 10)
    build.succeed(images={"web": "registry.example.com/shop/web:1"})
    build.refresh_from_db()
    assert build.status == BuildStatus.SUCCEEDED and build.progress == 100 and build.finished
    assert all(s["status"] == "succeeded" and s["started"] and s["finished"] for s in build.steps)
    assert build.images == {"web": "registry.example.com/shop/web:1"}
    assert Deployment.objects.get(pk=build.deployment_id).release_id is None  # until it runs


def test_starting_again_begins_from_queued_steps(build) -> None:
    build.start()
    build.advance("build", 70, "half way")
    build.start()  # its worker died; the next pass builds it again
    assert statuses(build) == ["queued"] * 4 and build.progress == 0 and build.status == BuildStatus.RUNNING
    assert build.attempts == 2 and build.log.startswith("half way\n") and "building again (attempt 2)" in build.log


def test_the_queue_takes_the_newest_and_settles_the_rest(build, settings) -> None:
    """A build its dead worker left running, then two pushes: the newest runs, the queued one before
    it is superseded, the abandoned one is failed — none is left queued or running."""
    from deployments.provisioning import releases

    d = build.deployment
    Build.objects.filter(pk=build.pk).update(status=BuildStatus.RUNNING, attempts=1)
    middle = releases.queue(d, "b" * 40, "push", "webhook:github")
    Build.objects.filter(pk=middle.pk).update(status=BuildStatus.QUEUED)  # two deliveries at once: both queued
    newest = Build.objects.create(deployment=d, commit="c" * 40, trigger="push")
    assert releases.take_next(d) == newest
    build.refresh_from_db()
    middle.refresh_from_db()
    assert build.status == BuildStatus.FAILED and "interrupted" in build.error
    assert middle.status == BuildStatus.SUPERSEDED and "newer" in middle.error
    assert releases.take_next(d) == newest  # asked again before it started: the same one, nothing else changes
    assert Build.objects.filter(deployment=d, status=BuildStatus.QUEUED).count() == 1


def test_queueing_supersedes_what_waits_but_not_what_runs(build) -> None:
    from deployments.provisioning import releases

    d = build.deployment
    build.start()
    first = releases.queue(d, "b" * 40, "push", "webhook:github")
    second = releases.queue(d, "c" * 40, "poll", "poll")
    first.refresh_from_db()
    build.refresh_from_db()
    assert first.status == BuildStatus.SUPERSEDED and first.error == "superseded by a newer poll"
    assert build.status == BuildStatus.RUNNING and second.status == BuildStatus.QUEUED
