"""Provisioning as plain functions: bring a deployment to its branch's tip (build when needed, then
apply), and settle what a failure leaves. Celery's tasks (tasks.py) are thin wrappers around these;
every function takes a deployment re-read from the database and is safe to run twice."""

import logging
import time

from django.conf import settings

from deployments.models import Build, BuildStatus, Deployment, State
from deployments.provisioning.connections import store_connections
from deployments.provisioning.external import take_external_build
from deployments.provisioning.spec import StackInvalid, build_spec, current_spec, fetch_branch, load_stack, minimal_spec
from deployments.runtimes import get_runtime
from deployments.runtimes.base import BuildFailed, Colour, DeploymentSpec, RuntimeFailure, TransientFailure
from projects.git import GitError
from projects.models import builds_externally

log = logging.getLogger(__name__)
SAVE_EVERY = 0.5  # seconds between two saves of a running build's progress


def get(deployment_id: int) -> Deployment | None:
    return Deployment.objects.select_related("project", "release", "clone_of__project").filter(pk=deployment_id).first()


def provision(deployment: Deployment, actor: str, force_build: bool = False) -> None:
    """Bring the deployment to its branch's latest commit: build when needed, then apply."""
    deployment.transition(State.PROVISIONING, actor, f"updating to the tip of {deployment.branch}")
    release = deployment.release
    try:
        commit = fetch_branch(deployment)
        builds = deployment.builds_releases and (force_build or release is None or release.commit != commit)
        # A new build takes the project's package commits; a release runs the ones it was built with.
        stack = load_stack(deployment, commit, None if builds or release is None else release.package_locks)
    except (GitError, StackInvalid) as e:
        settle_after_failure(deployment, actor, str(e))
        return

    if builds:
        build = Build.objects.filter(deployment=deployment, commit=commit, status__in=[BuildStatus.QUEUED, BuildStatus.RUNNING]).first()
        build = build or Build.objects.create(deployment=deployment, commit=commit, package_locks=deployment.project.package_locks or {})
        if builds_externally():
            built = take_external_build(build, deployment.project_id, [s.identifier for s in stack.services if s.kind == "component"])
            if built is None:
                deployment.transition(State.BUILDING, actor, f"waiting for CI to report the images of {commit[:10]}")
                return  # each report from CI provisions again
        else:
            deployment.transition(State.BUILDING, actor, f"building {commit[:10]}")
            built = run_build(build, build_spec(deployment, stack, commit, release))
        if not built:
            settle_after_failure(deployment, actor, f"build of {commit[:10]}: {build.error}")
            return
        release = build

    spec = build_spec(deployment, stack, commit, release if deployment.builds_releases else None)
    try:
        if deployment.copy_storage_pending:
            if deployment.clone_of_id:
                get_runtime().copy_storage(minimal_spec(deployment.clone_of), spec)
            Deployment.objects.filter(pk=deployment.pk).update(copy_storage_pending=False)
        endpoints = get_runtime().apply(spec)
        store_connections(deployment, stack, spec, get_runtime().addresses(spec))
    except TransientFailure:
        raise
    except RuntimeFailure as e:
        settle_after_failure(deployment, actor, str(e))
        return
    running_release = release if deployment.builds_releases else None
    Deployment.objects.filter(pk=deployment.pk).update(commit=commit, release=running_release, endpoints=endpoints)
    if not deployment.enabled:
        deployment.transition(State.STOPPED, actor, "")
        return
    if problem := wait_until_answering(spec):  # it runs; the status says what does not answer, and turns green when it does
        log.warning("deployment %s: %s", deployment.pk, problem)
    deployment.transition(State.RUNNING, actor, "")


def wait_until_answering(spec: DeploymentSpec) -> str:
    """Running means answering: wait (at most DIPLOI_READY_TIMEOUT) until every public component passes
    its health check. "" when they do, else why not."""
    public = [s.identifier for s in spec.public_components]
    deadline = time.monotonic() + settings.DIPLOI_READY_TIMEOUT
    waiting: list[str] = []
    while public:
        try:
            services = {i.name: i for i in get_runtime().observe([spec])[spec.id].services}
        except TransientFailure as e:
            services, waiting = {}, [f"the runtime is not answering ({e})"]
        else:
            waiting = [f"{name}: {services[name].message}" for name in public if name in services and services[name].colour != Colour.GREEN]
            if not waiting:
                return ""
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return f"not answering after {settings.DIPLOI_READY_TIMEOUT} s: {'; '.join(waiting)}" if public else ""


def settle_after_failure(deployment: Deployment, actor: str, reason: str) -> None:
    """A deployment that was already running keeps running what it had (yellow); otherwise it failed."""
    deployment.refresh_from_db(fields=["commit", "release", "enabled"])
    if deployment.commit and (deployment.release_id or not deployment.builds_releases):
        still = State.RUNNING if deployment.enabled else State.STOPPED
        deployment.transition(still, actor, f"{reason}; still running {deployment.commit[:10]}")
    else:
        deployment.transition(State.FAILED, actor, reason)


def run_build(build: Build, spec: DeploymentSpec) -> bool:
    """Run the runtime's build, recording steps, progress and a bounded log on the Build row."""
    build.start()
    last_save = 0.0

    def progress(step: str, percent: int, line: str | None = None) -> None:
        nonlocal last_save
        build.advance(step, percent, line)
        if time.monotonic() - last_save > SAVE_EVERY or percent >= 100:
            build.save_progress()
            last_save = time.monotonic()

    try:
        images = get_runtime().build(spec, progress)
    except BuildFailed as e:
        build.fail(e.step, str(e))
        return False
    build.succeed(images=images or None)
    return True


def set_enabled(deployment: Deployment, actor: str) -> None:
    """Make the processes follow the deployment's `enabled` flag (stored by the action)."""
    get_runtime().set_enabled(current_spec(deployment), deployment.enabled)
    if deployment.state in (State.RUNNING, State.STOPPED):
        deployment.transition(State.RUNNING if deployment.enabled else State.STOPPED, actor)


def route(deployment: Deployment, actor: str) -> None:
    """Its host names to it again (a custom domain verified or removed); a refusal is shown on the deployment."""
    try:
        get_runtime().route(current_spec(deployment))
    except TransientFailure:
        raise
    except RuntimeFailure as e:
        settle_after_failure(deployment, actor, str(e))


def restart(deployment: Deployment, service: str) -> None:
    get_runtime().restart(current_spec(deployment), service)


def destroy(deployment: Deployment, actor: str) -> None:
    """Remove everything of the deployment, then its record. Re-running after a crash finishes the job."""
    deployment.transition(State.DELETING, actor, "deleting the deployment and its storage")
    get_runtime().destroy(minimal_spec(deployment))
    Deployment.objects.filter(pk=deployment.pk).delete()
