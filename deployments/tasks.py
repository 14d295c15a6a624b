"""Celery tasks: take ids, re-read the database, are safe to run twice, retry only transient errors."""

import logging
import time

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from deployments import ci, events
from deployments.models import Build, BuildStatus, Deployment, State
from deployments.runtimes import builds_externally, get_runtime
from deployments.runtimes.base import BuildFailed, DeploymentSpec, RuntimeFailure, TransientFailure
from deployments.spec import StackInvalid, build_spec, current_spec, fetch_branch, load_stack, minimal_spec
from projects.git import GitError

log = logging.getLogger(__name__)
RETRY = {"autoretry_for": (TransientFailure,), "retry_backoff": 2, "retry_backoff_max": 120, "retry_jitter": True, "max_retries": 8}


def _get(deployment_id: int) -> Deployment | None:
    return Deployment.objects.select_related("project", "release", "clone_of__project").filter(pk=deployment_id).first()


@shared_task(acks_late=True, **RETRY)
def provision(deployment_id: int, force_build: bool = False, actor: str = "task:provision") -> None:
    """Bring the deployment to its branch's latest commit: build when needed, then apply."""
    deployment = _get(deployment_id)
    if deployment is None or deployment.state == State.DELETING:
        return
    deployment.transition(State.PROVISIONING, actor, f"updating to the tip of {deployment.branch}")
    try:
        commit = fetch_branch(deployment)
        stack = load_stack(deployment, commit)
    except (GitError, StackInvalid) as e:
        _settle_after_failure(deployment, actor, str(e))
        return

    release = deployment.release
    if deployment.builds_releases and (force_build or release is None or release.commit != commit):
        build = Build.objects.filter(deployment=deployment, commit=commit, status__in=[BuildStatus.QUEUED, BuildStatus.RUNNING]).first()
        build = build or Build.objects.create(deployment=deployment, commit=commit)
        if builds_externally():
            built = ci.take_external_build(build, deployment.project_id, [s.identifier for s in stack.services if s.kind == "component"])
            if built is None:
                deployment.transition(State.BUILDING, actor, f"waiting for CI to report the images of {commit[:10]}")
                return  # each report from CI provisions again
        else:
            deployment.transition(State.BUILDING, actor, f"building {commit[:10]}")
            built = run_build(build, build_spec(deployment, stack, commit, release))
        if not built:
            _settle_after_failure(deployment, actor, f"build of {commit[:10]}: {build.error}")
            return
        release = build

    spec = build_spec(deployment, stack, commit, release if deployment.builds_releases else None)
    try:
        if deployment.copy_storage_pending:
            if deployment.clone_of_id:
                get_runtime().copy_storage(minimal_spec(deployment.clone_of), spec)
            Deployment.objects.filter(pk=deployment.pk).update(copy_storage_pending=False)
        endpoints = get_runtime().apply(spec)
    except TransientFailure:
        raise
    except RuntimeFailure as e:
        _settle_after_failure(deployment, actor, str(e))
        return
    Deployment.objects.filter(pk=deployment.pk).update(commit=commit, release=release if deployment.builds_releases else None, endpoints=endpoints)
    deployment.transition(State.RUNNING if deployment.enabled else State.STOPPED, actor, "")


@shared_task(acks_late=True, **RETRY)
def build(deployment_id: int, actor: str = "task:build") -> None:
    """Build the branch's latest commit even when a release of it exists, then run it."""
    provision(deployment_id, force_build=True, actor=actor)


def _settle_after_failure(deployment: Deployment, actor: str, reason: str) -> None:
    """A deployment that was already running keeps running what it had (yellow); otherwise it failed."""
    deployment.refresh_from_db(fields=["commit", "release", "enabled"])
    if deployment.commit and (deployment.release_id or not deployment.builds_releases):
        still = State.RUNNING if deployment.enabled else State.STOPPED
        deployment.transition(still, actor, f"{reason}; still running {deployment.commit[:10]}")
    else:
        deployment.transition(State.FAILED, actor, reason)


def run_build(build: Build, spec: DeploymentSpec) -> bool:
    """Run the runtime's build, recording steps, progress and a bounded log on the Build row."""
    build.status = BuildStatus.RUNNING
    build.started, build.finished, build.progress, build.log, build.error = timezone.now(), None, 0, "", ""
    build.steps = [{"name": s["name"], "status": BuildStatus.QUEUED, "started": None, "finished": None} for s in build.steps]
    build.save()
    last_save = 0.0

    def step_named(name: str) -> dict:
        return next(s for s in build.steps if s["name"] == name)

    def progress(step: str, percent: int, line: str | None = None) -> None:
        nonlocal last_save
        now = timezone.now().isoformat()
        for s in build.steps:
            if s["name"] == step:
                break
            if s["status"] == BuildStatus.RUNNING:
                s["status"], s["finished"] = BuildStatus.SUCCEEDED, now
        current = step_named(step)
        if current["status"] == BuildStatus.QUEUED:
            current["status"], current["started"] = BuildStatus.RUNNING, now
        build.progress = max(build.progress, min(percent, 100))
        if line is not None:
            build.append_log(line + "\n")
        if time.monotonic() - last_save > 0.5 or percent >= 100:
            build.save(update_fields=["steps", "progress", "log"])
            events.publish(build.deployment_id, events.BUILD)
            last_save = time.monotonic()

    try:
        get_runtime().build(spec, progress)
    except BuildFailed as e:
        failed = step_named(e.step)
        failed["status"], failed["finished"] = BuildStatus.FAILED, timezone.now().isoformat()
        build.append_log(f"\n{e}\n")
        build.status, build.error, build.finished = BuildStatus.FAILED, str(e)[:500], timezone.now()
        build.save()
        return False
    for s in build.steps:
        if s["status"] in (BuildStatus.RUNNING, BuildStatus.QUEUED):
            s["status"], s["finished"] = BuildStatus.SUCCEEDED, s["finished"] or timezone.now().isoformat()
    build.status, build.progress, build.finished = BuildStatus.SUCCEEDED, 100, timezone.now()
    build.save()
    Deployment.objects.filter(pk=build.deployment_id).update(release=build)
    return True


@shared_task(acks_late=True, **RETRY)
def restart(deployment_id: int, service: str, actor: str = "task:restart") -> None:
    deployment = _get(deployment_id)
    if deployment is None or deployment.state == State.DELETING:
        return
    get_runtime().restart(current_spec(deployment), service)


@shared_task(acks_late=True, **RETRY)
def set_enabled(deployment_id: int, actor: str = "task:set_enabled") -> None:
    """Make the processes follow the deployment's `enabled` flag (stored by the caller)."""
    deployment = _get(deployment_id)
    if deployment is None or deployment.state == State.DELETING:
        return
    get_runtime().set_enabled(current_spec(deployment), deployment.enabled)
    if deployment.state in (State.RUNNING, State.STOPPED):
        deployment.transition(State.RUNNING if deployment.enabled else State.STOPPED, actor)


@shared_task(acks_late=True, **RETRY)
def destroy(deployment_id: int, actor: str = "task:destroy") -> None:
    """Remove everything of the deployment, then its record. Re-running after a crash finishes the job."""
    deployment = _get(deployment_id)
    if deployment is None:
        return
    deployment.transition(State.DELETING, actor, "deleting the deployment and its storage")
    get_runtime().destroy(minimal_spec(deployment))
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment_id).delete()
