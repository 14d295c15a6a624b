"""Nothing stuck: a deployment whose state has not moved for longer than its step can take is driven
again by the monitor's reconciler (a worker killed mid-task, a task that was never queued)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments.models import Deployment, State, StateTransition
from deployments.provisioning.reconcile import reconcile


@pytest.fixture
def eager(monkeypatch):
    """The tasks the reconciler queues run here, at once (the worker's side)."""
    from diploi.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)


def stuck(cast, slug: str, state: str, minutes: float) -> Deployment:
    d = Deployment.objects.create(project=cast.project, name=slug, slug=slug, branch="main", state=state)
    Deployment.objects.filter(pk=d.pk).update(state_since=timezone.now() - timedelta(minutes=minutes))
    return d


def test_stuck_deployments_are_driven_again_and_the_history_says_so(cast, runtime, eager, settings) -> None:
    settings.DIPLOI_RECONCILE_AFTER = 600
    pending = stuck(cast, "pending", State.PENDING, 20)  # its provision task was lost
    deleting = stuck(cast, "deleting", State.DELETING, 20)  # its worker was killed half-way
    recent = stuck(cast, "recent", State.PROVISIONING, 2)  # still within its bound
    running = stuck(cast, "running", State.RUNNING, 600)

    assert sorted(reconcile()) == sorted([pending.pk, deleting.pk])
    pending.refresh_from_db()
    assert pending.state == State.RUNNING, pending.state_reason
    note = StateTransition.objects.get(deployment=pending, actor="reconciler", from_state=State.PENDING, to_state=State.PENDING)
    assert (note.from_state, note.to_state, note.reason) == ("pending", "pending", "no progress for 20 min: provisioning again")
    assert not Deployment.objects.filter(pk=deleting.pk).exists()
    assert Deployment.objects.get(pk=recent.pk).state == State.PROVISIONING
    assert Deployment.objects.get(pk=running.pk).state == State.RUNNING
    assert reconcile() == []  # nothing left to drive; the clock restarted for what was driven


def test_a_build_may_take_its_steps_time_and_waiting_for_ci_is_not_stuck(cast, runtime, eager, settings) -> None:
    settings.DIPLOI_RECONCILE_AFTER, settings.DIPLOI_BUILD_STEP_TIMEOUT = 600, 600
    building = stuck(cast, "building", State.BUILDING, 30)  # 30 min < 10 + 3 × 10
    assert reconcile() == []
    Deployment.objects.filter(pk=building.pk).update(state_since=timezone.now() - timedelta(minutes=41))
    settings.DIPLOI_RUNTIME, settings.DIPLOI_K8S_BUILD_MODE = "kubernetes", "external"
    assert reconcile() == []  # CI takes as long as it takes
    settings.DIPLOI_RUNTIME = "local"
    assert reconcile() == [building.pk]


def test_a_lease_whose_worker_died_is_taken_over_at_once(cast) -> None:
    """A worker killed mid-task leaves its lease on the deployment; a process of this machine that is
    gone holds nothing, while a live one, or one on another machine, keeps it until it lapses."""
    import subprocess

    from deployments.provisioning.lease import HOST, acquire, release

    d = stuck(cast, "leased", State.PROVISIONING, 1)
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        for holder, free in ((f"{HOST}:{alive.pid}:a1", False), (f"elsewhere:{gone.pid}:a2", False), (f"{HOST}:{gone.pid}:a3", True)):
            Deployment.objects.filter(pk=d.pk).update(lease_owner=holder, lease_until=timezone.now() + timedelta(hours=1))
            token = acquire(d.pk)
            assert (token is not None) == free, holder
        release(d.pk, token)
        assert Deployment.objects.get(pk=d.pk).lease_owner == ""
    finally:
        alive.kill()


def test_a_starting_worker_drives_at_once_what_a_killed_one_left(cast, runtime, eager, settings) -> None:
    from deployments.provisioning.tasks import drive_what_a_killed_worker_left

    settings.DIPLOI_RECONCILE_AFTER = 600
    left = stuck(cast, "left", State.PROVISIONING, 0.1)  # its worker was killed a moment ago
    running = stuck(cast, "running", State.RUNNING, 0.1)
    drive_what_a_killed_worker_left()
    left.refresh_from_db()
    assert left.state == State.RUNNING, left.state_reason
    assert StateTransition.objects.filter(deployment=left, actor="reconciler", reason="a worker started: provisioning again").exists()
    assert Deployment.objects.get(pk=running.pk).state == State.RUNNING
