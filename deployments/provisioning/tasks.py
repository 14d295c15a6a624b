"""Celery tasks: thin wrappers around pipeline.py. They take ids, re-read the database, return
quietly when the deployment is gone (or going), are safe to run twice and retry only transient
errors."""

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.db.models import F

from deployments.models import Deployment, State
from deployments.provisioning import heartbeat, lease, pipeline
from deployments.runtimes.base import TransientFailure

log = logging.getLogger(__name__)
SETTLED = (State.RUNNING, State.STOPPED, State.FAILED)  # an in-between state is driven again (the reconciler)
RETRY = {"autoretry_for": (TransientFailure,), "retry_backoff": 2, "retry_backoff_max": 120, "retry_jitter": True, "max_retries": 8}


@shared_task(acks_late=True, **RETRY)
def provision(deployment_id: int, actor: str = "task:provision") -> None:
    """Provision until the deployment has caught up with every change asked for. Changes asked for
    while another worker provisions it coalesce: their tasks return at once, and that worker runs
    one more pass covering them all (a queued release is one such change)."""
    while True:
        with lease.held(deployment_id) as ours:
            if not ours:
                return
            while (deployment := pipeline.get(deployment_id)) is not None and deployment.state != State.DELETING:
                if deployment.state in SETTLED and deployment.provisioned >= deployment.wanted:
                    break  # a pass covered every change asked for (this task came after it, or twice)
                covered = deployment.wanted
                pipeline.provision(deployment, actor)
                Deployment.objects.filter(pk=deployment_id, provisioned__lt=covered).update(provisioned=covered)
                if not _behind(deployment_id):
                    break
        # A change whose task found the lease taken just before it was given back is ours to do.
        if not _behind(deployment_id):
            return


def _behind(deployment_id: int) -> bool:
    """A change was asked for that no provisioning pass has covered yet."""
    return Deployment.objects.filter(pk=deployment_id, wanted__gt=F("provisioned")).exclude(state=State.DELETING).exists()


@shared_task(acks_late=True, **RETRY)
def restart(deployment_id: int, service: str, actor: str = "task:restart") -> None:
    deployment = pipeline.get(deployment_id)
    if deployment is not None and deployment.state != State.DELETING:
        pipeline.restart(deployment, service)


@shared_task(acks_late=True, **RETRY)
def set_enabled(deployment_id: int, actor: str = "task:set_enabled") -> None:
    with lease.held(deployment_id) as ours:
        if not ours:
            raise lease.Busy(deployment_id)
        deployment = pipeline.get(deployment_id)
        if deployment is not None and deployment.state != State.DELETING:
            pipeline.set_enabled(deployment, actor)


@shared_task(acks_late=True, **RETRY)
def route(deployment_id: int, actor: str = "task:route") -> None:
    deployment = pipeline.get(deployment_id)
    if deployment is not None and deployment.state not in (State.DELETING, State.PENDING):
        pipeline.route(deployment, actor)


@shared_task(acks_late=True, **RETRY)
def destroy(deployment_id: int, actor: str = "task:destroy") -> None:
    """After the pass that runs now, if one does (a provisioning loop stops at a deletion)."""
    with lease.held(deployment_id) as ours:
        deployment = pipeline.get(deployment_id)
        if deployment is None:
            return
        if not ours:
            raise lease.Busy(deployment_id)
        pipeline.destroy(deployment, actor)


@worker_ready.connect
def say_alive(**_: object) -> None:
    """Every page says when no worker has been heard of lately (heartbeat.py)."""
    heartbeat.start()


@worker_ready.connect
def drive_what_a_killed_worker_left(**_: object) -> None:
    """A worker killed mid-task takes its task with it (unacknowledged until Redis's visibility
    timeout): when a worker starts, every deployment in between states is driven again at once,
    instead of after DIPLOI_RECONCILE_AFTER."""
    from deployments.provisioning.reconcile import reconcile  # it queues these tasks

    try:
        reconcile(restarted=True)
    except Exception as e:  # noqa: BLE001 - the monitor's reconciler tries again later
        log.warning("could not drive deployments again at worker start: %s", e)
