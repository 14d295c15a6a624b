"""Every write to a deployment: views, the CLI, the CI API and the SSH gateway call these, nothing else.

Each action is `do_<verb>(deployment, ..., *, actor)`: it validates (ValidationError keyed by field,
or RuntimeFailure for an unknown service), writes in one transaction and enqueues the work once the
transaction commits. `actor` is the user who acts, or a word for the platform itself ("ci").
With `now=True` (the CLI's --wait) the work runs in this process instead of a worker.
"""

import json
import logging
import re
import secrets
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import User
from deployments import domains
from deployments.ci import reports
from deployments.models import (
    Build,
    BuildStatus,
    CIReport,
    Delivery,
    Deployment,
    Domain,
    EnvVar,
    Intent,
    RegistryCredential,
    Stage,
    State,
    Trigger,
    Webhook,
)
from deployments.provisioning import releases, tasks
from deployments.provisioning.outbox import QUEUE_ERRORS
from deployments.provisioning.spec import StackInvalid, current_spec, fetch_branch, load_stack, stored_keys
from deployments.triggers.webhooks import Push, canonical
from projects import demo
from projects.git import GitError
from projects.models import Project
from projects.validators import dns_label_error, validate_branch_name

Actor = User | str
log = logging.getLogger(__name__)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
COMMIT = re.compile(r"[0-9a-fA-F]{40}")
DELIVERIES_KEPT = timedelta(days=30)


def actor_label(actor: Actor) -> str:
    """How an actor is recorded on state transitions: user:<name>, or the platform's own word."""
    return f"user:{actor.username}" if isinstance(actor, User) else actor


# Set for the rest of a request when a change was saved but the task queue could not take its work.
queue_unreachable: ContextVar[bool] = ContextVar("queue_unreachable", default=False)
WAITING = "waiting for the task queue, which is unreachable; the change runs as soon as it is back"


def _enqueue(task: Any, deployment_id: int, *args: Any, actor: Actor, now: bool = False, **kwargs: Any) -> None:
    """Run the task once the transaction commits. Its intent is stored in the same transaction and
    removed once the queue has taken it: a queue that is away, or a process that dies in between,
    loses nothing — the monitor's reconciler sends what is left (reconcile.replay), and meanwhile
    the deployment says it is waiting for the queue."""
    label = actor_label(actor)
    intent = None
    if not now:
        intent = Intent.objects.create(deployment_id=deployment_id, task=task.name, args=list(args), kwargs={**kwargs, "actor": label})
    transaction.on_commit(partial(_send, task, deployment_id, args, label, now, kwargs, intent))


def _provision(deployment_id: int, *, actor: Actor, now: bool = False) -> None:
    """Count one more change that needs provisioning and queue a pass; passes coalesce (tasks.provision)."""
    Deployment.objects.filter(pk=deployment_id).update(wanted=F("wanted") + 1)
    _enqueue(tasks.provision, deployment_id, actor=actor, now=now)


def _send(task: Any, deployment_id: int, args: tuple, actor: str, now: bool, kwargs: dict[str, Any], intent: Intent | None) -> None:
    if now:
        task(deployment_id, *args, actor=actor, **kwargs)
        return
    try:
        task.delay(deployment_id, *args, actor=actor, **kwargs)
    except QUEUE_ERRORS as e:
        log.warning("task queue unreachable, deployment %s waits for it: %s", deployment_id, e)
        queue_unreachable.set(True)
        waiting(deployment_id, actor)
        return
    Intent.objects.filter(pk=intent.pk).delete()


def waiting(deployment_id: int, actor: str) -> None:
    """The deployment's work could not be queued: pending (or still deleting) from long ago, which it
    shows, and which makes the reconciler's next pass drive it again even if its intent were lost."""
    d = Deployment.objects.filter(pk=deployment_id).first()
    if d is None:
        return
    if d.state != State.DELETING:
        d.transition(State.PENDING, actor, WAITING)
    Deployment.objects.filter(pk=deployment_id).update(state_since=EPOCH)


# --- creating ------------------------------------------------------------------------------------


def do_create_deployment(
    project: Project,
    name: str,
    stage: str,
    branch: str,
    *,
    actor: Actor,
    enabled: bool = True,
    clone_of: Deployment | None = None,
    copy_storage: bool = False,
    now: bool = False,
) -> Deployment:
    """Validate, save and enqueue provisioning; every check happens before anything is saved.

    A clone inherits its source's env vars and add-on passwords (so that copied databases still
    open); with `copy_storage` it starts from a copy of the source's storage."""
    slug = slugify(name).replace("_", "-")
    errors: dict[str, list[str]] = {}
    taken = f"This project already has a deployment called “{slug}”."
    if not slug:
        errors["name"] = ["The name must contain at least one letter or digit."]
    elif err := dns_label_error(slug):
        errors["name"] = [f"The name gives the address “{slug}”, which {err}."]
    elif Deployment.objects.filter(project=project, slug=slug).exists():
        errors["name"] = [taken]
    if stage not in Stage.values:
        errors["stage"] = [f"Choose one of: {', '.join(Stage.values)}."]
    try:
        validate_branch_name(branch)
    except ValidationError as e:
        errors["branch"] = e.messages
    if errors:
        raise ValidationError(errors)

    deployment = Deployment(
        project=project,
        name=name,
        slug=slug,
        stage=stage,
        branch=branch,
        enabled=enabled,
        created_by=actor if isinstance(actor, User) else None,
        clone_of=clone_of,
        copy_storage_pending=bool(clone_of and copy_storage),
    )
    if clone_of:
        deployment.credentials = clone_of.credentials
    try:
        load_stack(deployment, fetch_branch(deployment))
    except GitError as e:
        raise ValidationError({"branch": [str(e)]}) from None
    except StackInvalid as e:
        raise ValidationError({"branch": [f"The stack file on {branch} has problems: {e}"]}) from None

    try:
        with transaction.atomic():
            deployment.save()
            if clone_of:
                EnvVar.objects.bulk_create(
                    EnvVar(deployment=deployment, service=v.service, key=v.key, value=v.value, secret=v.secret)
                    for v in EnvVar.objects.filter(deployment=clone_of)
                )
            if deployment.builds_releases:
                releases.queue(deployment, "", Trigger.CREATE, actor_label(actor))
            _provision(deployment.pk, actor=actor, now=now)
    except IntegrityError:
        raise ValidationError({"name": [taken]}) from None
    return deployment


def do_clone(
    source: Deployment, name: str, stage: str, branch: str, *, actor: Actor, enabled: bool = True, copy_storage: bool = False
) -> Deployment:
    return do_create_deployment(
        source.project, name, stage, branch, actor=actor, enabled=enabled, clone_of=source, copy_storage=copy_storage
    )


# --- operating -----------------------------------------------------------------------------------


def do_set_enabled(deployment: Deployment, enabled: bool, *, actor: Actor) -> None:
    """Start or stop every service; stopping keeps storage."""
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(enabled=enabled)
        deployment.enabled = enabled
        _enqueue(tasks.set_enabled, deployment.pk, actor=actor)


def do_follow_branch(deployment: Deployment, branch: str, *, actor: Actor) -> None:
    """Follow another branch: its tip is deployed (a release built, or the checkout switched)."""
    validate_branch_name(branch)
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(branch=branch, seen_commit="")
        deployment.branch = branch
        if deployment.builds_releases:
            releases.queue(deployment, "", Trigger.BRANCH, actor_label(actor))
        _provision(deployment.pk, actor=actor)


def do_save_env(deployment: Deployment, service: str, values: dict[str, tuple[str, bool]], *, actor: Actor) -> None:
    """Store {key: (value, secret)} for `service` ("" = every component) and provision again, which
    restarts the services whose environment changed."""
    with transaction.atomic():
        for key, (value, secret) in values.items():
            EnvVar.objects.update_or_create(deployment=deployment, service=service, key=key, defaults={"value": value, "secret": secret})
        _provision(deployment.pk, actor=actor)


def do_regenerate(deployment: Deployment, service: str, keys: list[str], *, actor: Actor) -> None:
    """Forget the generated values (and saved overrides) of `service`'s parameters `keys`: the next
    provisioning generates new ones and restarts what uses them."""
    if not keys:
        return
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        stored = json.loads(locked.credentials or "{}")
        for key in keys:
            for name in stored_keys(stored, service, key):
                del stored[name]
        locked.credentials = json.dumps(stored)
        locked.save(update_fields=["credentials"])
        EnvVar.objects.filter(deployment=deployment, service=service, key__in=keys).delete()
        _provision(deployment.pk, actor=actor)


def do_delete_env(deployment: Deployment, var: EnvVar, *, actor: Actor) -> None:
    with transaction.atomic():
        EnvVar.objects.filter(pk=var.pk, deployment=deployment).delete()
        _provision(deployment.pk, actor=actor)


def do_restart(deployment: Deployment, service: str, *, actor: Actor, now: bool = False) -> None:
    """RuntimeFailure (UnknownService) when the deployment's stack has no such service."""
    current_spec(deployment).service(service)
    _enqueue(tasks.restart, deployment.pk, service, actor=actor, now=now)


# --- releases: deploy, rebuild, rollback, promote ------------------------------------------------


def do_deploy(
    deployment: Deployment, *, actor: Actor, commit: str = "", trigger: str = Trigger.MANUAL, via: str = "", now: bool = False
) -> Build | None:
    """Move the deployment to `commit` ("" for its branch's tip): staging/production queue a release
    (built when its turn comes; it supersedes a queued one), development fast-forwards its code when
    nothing of the developer's is in the way. Returns the queued release (None for development)."""
    if commit and not COMMIT.fullmatch(commit):
        raise ValidationError({"commit": ["A commit is 40 hexadecimal characters (git rev-parse gives it)."]})
    with transaction.atomic():
        build = None
        if deployment.builds_releases:
            build = releases.queue(deployment, commit.lower(), trigger, actor_label(actor), via=via)
        else:
            Deployment.objects.filter(pk=deployment.pk).update(pull_wanted=True)
        if commit and trigger in (Trigger.PUSH, Trigger.POLL):
            Deployment.objects.filter(pk=deployment.pk).update(seen_commit=commit.lower())
        _provision(deployment.pk, actor=actor, now=now)
    return build


def do_rebuild(deployment: Deployment, *, actor: Actor, now: bool = False) -> Build:
    """Build the commit that runs again (fresh, e.g. after its build settings changed) and run it."""
    if not deployment.builds_releases:
        raise ValidationError("Development deployments run their code as it is; there is nothing to build.")
    commit = deployment.release.commit if deployment.release else ""
    build = do_deploy(deployment, actor=actor, commit=commit, trigger=Trigger.REBUILD, now=now)
    assert build is not None
    return build


def _runnable(deployment: Deployment, release_id: int) -> Build:
    """A release of `deployment` whose artifact is kept (ValidationError otherwise)."""
    build = Build.objects.filter(pk=release_id, deployment=deployment).first()
    if build is None:
        raise ValidationError({"release": ["No such release of this deployment."]})
    if build.status != BuildStatus.SUCCEEDED or build.pruned or not build.commit:
        why = "was pruned (beyond DIPLOI_RELEASES_KEPT)" if build.pruned else f"is {build.get_status_display().lower()}"
        raise ValidationError({"release": [f"Release #{build.pk} {why}; only kept, successful releases can run again."]})
    return build


def do_rollback(deployment: Deployment, release_id: int, *, actor: Actor, now: bool = False) -> Build:
    """Run an earlier release again, without a build; the deployment is pinned to it (new pushes are
    not deployed) until someone resumes."""
    if not deployment.builds_releases:
        raise ValidationError("Development deployments have no releases to roll back to.")
    source = _runnable(deployment, release_id)
    with transaction.atomic():
        build = releases.queue(deployment, source.commit, Trigger.ROLLBACK, actor_label(actor), source=source)
        by = actor if isinstance(actor, User) else None
        Deployment.objects.filter(pk=deployment.pk).update(pinned_at=timezone.now(), pinned_by=by)
        _provision(deployment.pk, actor=actor, now=now)
    return build


def do_promote(source_deployment: Deployment, release_id: int, target: Deployment, *, actor: Actor, now: bool = False) -> Build:
    """Run the exact artifact of a staging release on a production deployment of the same project."""
    if source_deployment.stage != Stage.STAGING or target.stage != Stage.PRODUCTION or target.project_id != source_deployment.project_id:
        raise ValidationError({"target": ["Promote runs a staging release on a production deployment of the same project."]})
    source = _runnable(source_deployment, release_id)
    with transaction.atomic():
        build = releases.queue(target, source.commit, Trigger.PROMOTE, actor_label(actor), source=source)
        _provision(target.pk, actor=actor, now=now)
    return build


def do_set_auto_deploy(deployment: Deployment, on: bool, *, actor: Actor) -> None:
    """Whether pushes to the branch are deployed; turning it on also lifts a rollback's pin."""
    fields: dict[str, object] = {"auto_deploy": on}
    if on:
        fields.update(pinned_at=None, pinned_by=None)
    Deployment.objects.filter(pk=deployment.pk).update(**fields)
    for name, value in fields.items():
        setattr(deployment, name, value)


def do_resume(deployment: Deployment, *, actor: Actor, now: bool = False) -> None:
    """Lift the pin and deploy the branch's tip."""
    with transaction.atomic():
        do_set_auto_deploy(deployment, True, actor=actor)
        do_deploy(deployment, actor=actor, now=now)


def do_receive_push(project: Project, branch: str, commit: str, *, trigger: str, via: str = "", actor: Actor) -> list[Deployment]:
    """A push to `branch` of the project's repository (webhook or polling): every deployment that
    follows it deploys `commit`, unless paused or pinned, or already there. Returns those."""
    moved = []
    for d in Deployment.objects.filter(project=project, branch=branch).exclude(state=State.DELETING).select_related("project"):
        # (One whose first provisioning has not read the branch yet will take its tip anyway.)
        if not d.follows_pushes or commit.lower() in (d.seen_commit, d.commit) or not (d.seen_commit or d.commit):
            continue
        do_deploy(d, actor=actor, commit=commit, trigger=trigger, via=via)
        moved.append(d)
    return moved


def do_delete(deployment: Deployment, *, actor: Actor, now: bool = False) -> None:
    """The deployment goes to `deleting` at once; a task removes everything, storage included."""
    with transaction.atomic():
        deployment.transition(State.DELETING, actor_label(actor), "deletion requested")
        _enqueue(tasks.destroy, deployment.pk, actor=actor, now=now)


# --- push webhooks ----------------------------------------------------------------------------


def do_rotate_webhook_secret(project: Project, *, actor: Actor) -> Webhook:
    """The project's webhook (made on first use) with a new secret: deliveries signed with the old
    one are refused from now on. Its URL stays."""
    webhook = Webhook.objects.filter(project=project).first() or Webhook(project=project, token=secrets.token_urlsafe(24))
    webhook.secret = secrets.token_urlsafe(32)
    webhook.save()
    log.info("webhook secret of %s rotated by %s", project.slug, actor_label(actor))
    return webhook


def do_set_registry_credential(project: Project, host: str, username: str, password: str, *, actor: Actor) -> RegistryCredential:
    """The project's login to `host` (made, or replaced); the deployments use it from their next apply
    or build on."""
    login = {"username": username, "password": password}
    credential, _ = RegistryCredential.objects.update_or_create(project=project, host=host, defaults=login)
    log.info("registry login for %s of %s set by %s", host, project.slug, actor_label(actor))
    return credential


def do_remove_registry_credential(credential: RegistryCredential, *, actor: Actor) -> None:
    credential.delete()
    log.info("registry login for %s of %s removed by %s", credential.host, credential.project.slug, actor_label(actor))


def do_receive_webhook(webhook: Webhook, host: str, delivery: str, found: list[Push]) -> tuple[str, bool]:
    """Deploy what a signed push delivery reports to the deployments following its branches. A
    delivery id seen before is not acted on again. Returns (what was done, whether it was a replay)."""
    repository = canonical(webhook.project.repository)
    try:
        with transaction.atomic():
            record = Delivery.objects.create(webhook=webhook, host=host, delivery_id=delivery[:100]) if delivery else None
            moved: list[str] = []
            ignored: list[str] = []
            for push in found:
                if repository not in push.repositories:
                    ignored.append(f"{push.branch}: another repository")
                    continue
                names = [
                    d.slug
                    for d in do_receive_push(
                        webhook.project, push.branch, push.commit, trigger=Trigger.PUSH, via=host, actor=f"webhook:{host}"
                    )
                ]
                moved += [f"{n} ← {push.commit[:10]}" for n in names]
                if not names:
                    ignored.append(f"{push.branch}: no deployment follows it with auto-deploy on (or it runs that commit already)")
            outcome = "; ".join([*(f"deploying {m}" for m in moved), *(f"ignored {i}" for i in ignored)]) or "nothing to deploy"
            if record is not None:
                Delivery.objects.filter(pk=record.pk).update(outcome=outcome[:300])
            Webhook.objects.filter(pk=webhook.pk).update(last_delivery=timezone.now(), last_outcome=f"{host}: {outcome}"[:300])
            # Hosts redeliver within hours or days: ids older than that are not kept.
            Delivery.objects.filter(webhook=webhook, received__lt=timezone.now() - DELIVERIES_KEPT).delete()
    except IntegrityError:
        earlier = Delivery.objects.filter(webhook=webhook, host=host, delivery_id=delivery[:100]).values_list("outcome", flat=True).first()
        return earlier or "", True
    if ignored:
        log.info("webhook of %s (%s): %s", webhook.project.slug, host, outcome)
    return outcome, False


# --- custom domains ------------------------------------------------------------------------------


def do_add_domain(deployment: Deployment, name: str, *, actor: Actor) -> Domain:
    """ValidationError with the reason when the name is not a usable host name or is taken."""
    ascii_name = domains.normalise_domain(name)
    try:
        with transaction.atomic():
            return Domain.objects.create(deployment=deployment, name=ascii_name)
    except IntegrityError:
        raise ValidationError(f"{name} is already in use by a deployment.") from None


def do_verify_domain(domain: Domain, *, actor: Actor) -> Domain:
    """Check DNS now and record the outcome; a domain that became (or stopped being) verified is
    routed (or no longer)."""
    was = domain.verified
    outcome = domains.check_domain(domain)  # DNS first: no transaction stays open across the lookups
    with transaction.atomic():
        domain.verified, domain.check_result, domain.checked = outcome
        domain.save(update_fields=["verified", "check_result", "checked"])
        if domain.verified != was:
            _enqueue(tasks.route, domain.deployment_id, actor=actor)
    return domain


def do_remove_domain(domain: Domain, *, actor: Actor) -> None:
    with transaction.atomic():
        domain.delete()
        if domain.verified:
            _enqueue(tasks.route, domain.deployment_id, actor=actor)


# --- CI reports (external build mode) -----------------------------------------------------------


def do_record_ci_report(project: Project, data: object, *, actor: Actor = "ci") -> tuple[CIReport, list[Deployment]]:
    """Store one report from CI (ValidationError naming the fields) and provision again the
    deployments waiting at its commit."""
    with transaction.atomic():
        report = reports.record_report(project, data)
        waiting = reports.waiting_deployments(project, report.commit)
        for d in waiting:
            if d.build_status == BuildStatus.FAILED:  # CI ran again and passed: a new release of the commit
                releases.queue(d, report.commit, Trigger.REBUILD, actor_label(actor))
            _provision(d.pk, actor=actor)
    return report, waiting


# --- the demo ------------------------------------------------------------------------------------


def do_try_demo(user: User) -> Deployment:
    """The user's own copy of the sample project — its own Git repository, so pushes and edits are
    theirs — with a development deployment on its way to running. Again (a double click too): the one
    they have."""
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).first()  # one at a time per user
        project = demo.users_demo(user) or demo.create_demo(user)
    existing = project.deployments.filter(stage=Stage.DEVELOPMENT).exclude(state=State.DELETING).first()
    return existing or do_create_deployment(project, "dev", Stage.DEVELOPMENT, project.default_branch, actor=user)
