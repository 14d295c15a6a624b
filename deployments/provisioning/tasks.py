"""Celery tasks: thin wrappers around pipeline.py. They take ids, re-read the database, return
quietly when the deployment is gone (or going), are safe to run twice and retry only transient
errors."""

from celery import shared_task

from deployments.models import State
from deployments.provisioning import pipeline
from deployments.runtimes.base import TransientFailure

RETRY = {"autoretry_for": (TransientFailure,), "retry_backoff": 2, "retry_backoff_max": 120, "retry_jitter": True, "max_retries": 8}


@shared_task(acks_late=True, **RETRY)
def provision(deployment_id: int, force_build: bool = False, actor: str = "task:provision") -> None:
    deployment = pipeline.get(deployment_id)
    if deployment is not None and deployment.state != State.DELETING:
        pipeline.provision(deployment, actor, force_build=force_build)


@shared_task(acks_late=True, **RETRY)
def build(deployment_id: int, actor: str = "task:build") -> None:
    """Build the branch's latest commit even when a release of it exists, then run it."""
    provision(deployment_id, force_build=True, actor=actor)


@shared_task(acks_late=True, **RETRY)
def restart(deployment_id: int, service: str, actor: str = "task:restart") -> None:
    deployment = pipeline.get(deployment_id)
    if deployment is not None and deployment.state != State.DELETING:
        pipeline.restart(deployment, service)


@shared_task(acks_late=True, **RETRY)
def set_enabled(deployment_id: int, actor: str = "task:set_enabled") -> None:
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
    deployment = pipeline.get(deployment_id)
    if deployment is not None:
        pipeline.destroy(deployment, actor)
