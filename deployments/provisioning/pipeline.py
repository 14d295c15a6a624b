"""Provisioning as plain functions: bring a deployment to its branch's tip (build when needed, then
apply), and settle what a failure leaves. Celery's tasks (tasks.py) are thin wrappers around these;
every function takes a deployment re-read from the database and is safe to run twice."""

import logging
import time
from dataclasses import replace

from django.conf import settings

from deployments.models import Build, BuildStatus, Deployment, State, Trigger
from deployments.provisioning import releases
from deployments.provisioning.connections import store_connections
from deployments.provisioning.external import take_external_build
from deployments.provisioning.spec import StackInvalid, build_spec, current_spec, fetch_branch, load_stack, minimal_spec
from deployments.runtimes import get_runtime
from deployments.runtimes.base import BuildFailed, Colour, DeploymentSpec, RuntimeFailure, TransientFailure
from projects import git
from projects.git import GitError
from projects.models import builds_externally
from projects.stack import project_mirror
from projects.stackfile import Stack

log = logging.getLogger(__name__)
SAVE_EVERY = 0.5  # seconds between two saves of a running build's progress


def get(deployment_id: int) -> Deployment | None:
    return Deployment.objects.select_related("project", "release", "clone_of__project").filter(pk=deployment_id).first()


def provision(deployment: Deployment, actor: str) -> None:
    """Bring the deployment to what was asked: staging/production run the newest queued release
    (built, or an earlier artifact run again), else keep their release with the new settings;
    development runs its code, fast-forwarded when a trigger asked."""
    deployment.transition(State.PROVISIONING, actor, f"updating {deployment.name}")
    if deployment.builds_releases:
        _provision_release(deployment, actor)
    else:
        _provision_code(deployment, actor)


def _provision_release(deployment: Deployment, actor: str) -> None:
    target = releases.take_next(deployment)
    if target is None and deployment.release is None:  # nothing runs yet: the branch's tip
        target = releases.queue(deployment, "", Trigger.CREATE, actor)
    release = deployment.release
    try:
        if target is None:
            commit = release.commit
            stack = load_stack(deployment, commit, release.package_locks)
        else:
            commit = _target_commit(deployment, target)
            stack = load_stack(deployment, commit, target.package_locks)
    except (GitError, StackInvalid) as e:
        if target is not None:
            target.fail("clone", str(e))
        settle_after_failure(deployment, actor, str(e))
        return

    if target is not None:
        built = _release(deployment, target, stack, commit, actor)
        if built is None:
            return  # waiting for CI
        if not built:
            settle_after_failure(deployment, actor, f"{'release' if target.source else 'build'} of {commit[:10]}: {target.error}")
            return
        release = target
    if _apply(deployment, build_spec(deployment, stack, commit, release), stack, actor, release):
        get_runtime().prune_releases(minimal_spec(deployment), releases.prune(deployment))


def _target_commit(deployment: Deployment, target: Build) -> str:
    """The queued release's commit, fetched (the branch's tip when it names none), with its author
    and message recorded."""
    tip = _fetch_tip(deployment)
    fields = []
    if not target.commit:
        target.commit = tip
        fields.append("commit")
    elif not git.has_commit(project_mirror(deployment.project), target.commit):
        raise GitError(f"Commit {target.commit[:10]} is not in the repository (force-pushed away?).")
    if not target.message:
        target.author, target.message = (v[:200] for v in git.commit_info(project_mirror(deployment.project), target.commit))
        fields += ["author", "message"]
    if fields:
        target.save(update_fields=fields)
    return target.commit


def _fetch_tip(deployment: Deployment) -> str:
    """The branch's tip, fetched now: the newest commit triggers need not report again."""
    tip = fetch_branch(deployment)
    Deployment.objects.filter(pk=deployment.pk).update(seen_commit=tip)
    return tip


def _release(deployment: Deployment, target: Build, stack: Stack, commit: str, actor: str) -> bool | None:
    """Turn the queued release into an artifact: an earlier one run again, CI's images, or a build
    here. True when it is ready, False when it failed, None while CI has not reported."""
    if target.status == BuildStatus.SUCCEEDED:  # built already; its worker stopped before it ran
        return True
    source = target.source
    if source is not None:
        try:
            if source.deployment_id != deployment.pk:
                get_runtime().import_release(
                    replace(minimal_spec(source.deployment), release=commit), replace(minimal_spec(deployment), release=commit)
                )
        except RuntimeFailure as e:
            target.fail("release", str(e))
            return False
        target.reuse(f"Runs the artifact of release #{source.pk} ({commit[:10]}, {source.deployment.name}) again: no build.")
        return True
    if builds_externally():
        built = take_external_build(target, deployment.project_id, [s.identifier for s in stack.services if s.kind == "component"])
        if built is None:
            deployment.transition(State.BUILDING, actor, f"waiting for CI to report the images of {commit[:10]}")
        return built
    deployment.transition(State.BUILDING, actor, f"building {commit[:10]}")
    return run_build(target, build_spec(deployment, stack, commit, deployment.release))


def _provision_code(deployment: Deployment, actor: str) -> None:
    """Development: the checkout runs as it is; a trigger's pull fast-forwards it when nothing of the
    developer's is in the way, and otherwise the deployment says how far behind it is and why."""
    synced = not deployment.commit  # (_fetch_tip syncs the project's mirror, which the checkout fetches from)
    try:
        commit = deployment.commit or _fetch_tip(deployment)
        if not synced and not git.has_branch(project_mirror(deployment.project), deployment.branch):
            fetch_branch(deployment)  # a branch it follows now: the checkout switches to it from the mirror
            synced = True
        stack = load_stack(deployment, commit)
    except (GitError, StackInvalid) as e:
        settle_after_failure(deployment, actor, str(e))
        return
    spec = build_spec(deployment, stack, commit)
    if not _apply(deployment, spec, stack, actor, wait=False):
        return
    pull = Deployment.objects.filter(pk=deployment.pk, pull_wanted=True).update(pull_wanted=False) > 0
    try:
        if pull and not synced:  # the checkout fetches from the project's mirror: up to date first
            fetch_branch(deployment)
        state = get_runtime().update_code(spec, pull)
        if state.head != commit and _fetched(deployment, state.head):
            commit, stack = state.head, load_stack(deployment, state.head)
            spec = build_spec(deployment, stack, commit)
            if not _apply(deployment, spec, stack, actor, wait=False):
                return
    except TransientFailure:
        raise
    except (GitError, StackInvalid, RuntimeFailure) as e:
        settle_after_failure(deployment, actor, f"could not update the code: {e}")
        return
    behind = {"behind": state.behind, "files": list(state.in_the_way), "branch": deployment.branch} if state.behind else {}
    Deployment.objects.filter(pk=deployment.pk).update(commit=commit, code_behind=behind)
    _running(deployment, spec, actor)


def _fetched(deployment: Deployment, commit: str) -> bool:
    """Whether the project's mirror has `commit` (fetched now if not): a commit made in the checkout
    and not pushed has no stack the platform can read."""
    mirror = project_mirror(deployment.project)
    if git.has_commit(mirror, commit):
        return True
    fetch_branch(deployment)
    return git.has_commit(mirror, commit)


def _apply(deployment: Deployment, spec: DeploymentSpec, stack: Stack, actor: str, release: Build | None = None, wait: bool = True) -> bool:
    """Make the runtime run `spec` (of `release`); record what runs. False (the deployment settled)
    when the runtime refused."""
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
        if release is not None and release.pk != deployment.release_id:  # a new release the runtime would not run
            release.fail("release", str(e))
        settle_after_failure(deployment, actor, str(e))
        return False
    update = {"commit": spec.commit, "endpoints": endpoints}
    if release is not None:
        update["release"] = release
    Deployment.objects.filter(pk=deployment.pk).update(**update)
    if wait:
        _running(deployment, spec, actor)
    return True


def _running(deployment: Deployment, spec: DeploymentSpec, actor: str) -> None:
    if not deployment.enabled:
        deployment.transition(State.STOPPED, actor, "")
        return
    if problem := wait_until_answering(spec):  # it runs; the status says what does not answer, and turns green when it does
        log.warning("deployment %s: %s", deployment.pk, problem)
    deployment.transition(State.RUNNING, actor, "")


def wait_until_answering(spec: DeploymentSpec) -> str:
    """Running means answering: wait (at most DIPLOI_READY_TIMEOUT) until every service with a port —
    components and add-ons — passes its health check (a component may answer while its database still
    starts). "" when they do, else why not."""
    answering = [s.identifier for s in spec.services if s.ports]
    deadline = time.monotonic() + settings.DIPLOI_READY_TIMEOUT
    waiting: list[str] = []
    # Most components answer within a second: look often then (a doubling delay would leave up to half
    # of the time already waited unseen), less often later.
    delay = 0.05
    while answering:
        try:
            services = {i.name: i for i in get_runtime().observe([spec])[spec.id].services}
        except TransientFailure as e:
            services, waiting = {}, [f"the runtime is not answering ({e})"]
        else:
            waiting = [f"{n}: {services[n].message}" for n in answering if n in services and services[n].colour != Colour.GREEN]
            if not waiting:
                return ""
        if time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(0.5, delay * 1.25)
    return f"not answering after {settings.DIPLOI_READY_TIMEOUT} s: {'; '.join(waiting)}" if answering else ""


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
    last_save, last_step = 0.0, ""

    def progress(step: str, percent: int, line: str | None = None) -> None:
        nonlocal last_save, last_step
        build.advance(step, percent, line)
        # A new step, or a command starting ("$ …"), is shown at once: the next call may be far away
        # (a command that prints nothing for a while).
        starts = step != last_step or (line or "").startswith("$ ")
        if starts or time.monotonic() - last_save > SAVE_EVERY or percent >= 100:
            build.save_progress()
            last_save, last_step = time.monotonic(), step

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
