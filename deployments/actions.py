"""Every write to a deployment: views, the CLI, the CI API and the SSH gateway call these, nothing else.

Each action is `do_<verb>(deployment, ..., *, actor)`: it validates (ValidationError keyed by field,
or RuntimeFailure for an unknown service), writes in one transaction and enqueues the work once the
transaction commits. `actor` is the user who acts, or a word for the platform itself ("ci").
With `now=True` (the CLI's --wait) the work runs in this process instead of a worker.
"""

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils.text import slugify

from accounts.models import User
from deployments import domains
from deployments.ci import reports
from deployments.models import CIReport, Deployment, Domain, EnvVar, Intent, Stage, State
from deployments.provisioning import tasks
from deployments.provisioning.outbox import QUEUE_ERRORS
from deployments.provisioning.spec import StackInvalid, current_spec, fetch_branch, load_stack
from projects.git import GitError
from projects.models import Project
from projects.validators import dns_label_error, validate_branch_name

Actor = User | str
log = logging.getLogger(__name__)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


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
    validate_branch_name(branch)
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(branch=branch)
        deployment.branch = branch
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
            stored.pop(f"{service}/{key}", None)
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


def do_rebuild(deployment: Deployment, *, actor: Actor, now: bool = False) -> None:
    """Build the branch's tip again, even when a release of it exists, and run it."""
    if not deployment.builds_releases:
        raise ValidationError("Development deployments run their code as it is; there is nothing to build.")
    _enqueue(tasks.build, deployment.pk, actor=actor, now=now)


def do_delete(deployment: Deployment, *, actor: Actor, now: bool = False) -> None:
    """The deployment goes to `deleting` at once; a task removes everything, storage included."""
    with transaction.atomic():
        deployment.transition(State.DELETING, actor_label(actor), "deletion requested")
        _enqueue(tasks.destroy, deployment.pk, actor=actor, now=now)


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
            _provision(d.pk, actor=actor)
    return report, waiting
