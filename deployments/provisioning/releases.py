"""A staging/production deployment's build queue and release history (its Build rows).

Triggers queue a release; the newest queued one wins (older queued ones are superseded, and say
so); provisioning takes it under the deployment's lease, so builds never overlap. A build whose
worker died is found running when the next pass takes the lease: it is built again, up to
MAX_ATTEMPTS, then failed — never left running."""

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments.live.events import BUILD, publish
from deployments.models import Build, BuildStatus, Deployment
from projects.models import builds_externally

MAX_ATTEMPTS = 3
PENDING = (BuildStatus.QUEUED, BuildStatus.RUNNING)


def queue(deployment: Deployment, commit: str, trigger: str, actor: str, *, via: str = "", source: Build | None = None) -> Build:
    """A new queued release of `commit` ("" for the branch's tip when it starts); with `source`, that
    earlier release's artifact runs again instead of a build."""
    with transaction.atomic():
        supersede(deployment.pk, f"superseded by a newer {trigger}")
        build = Build.objects.create(
            deployment=deployment,
            commit=commit,
            trigger=trigger,
            via=via,
            actor=actor,
            source=source,
            images=source.images if source else {},
            package_locks=source.package_locks if source else (deployment.project.package_locks or {}),
            message=source.message if source else "",
            author=source.author if source else "",
        )
        transaction.on_commit(lambda: publish(deployment.pk, BUILD))
    return build


def supersede(deployment_id: int, why: str, newer_than: int | None = None) -> None:
    """The queued releases (older than `newer_than`, when given) will not run."""
    queued = Build.objects.filter(deployment_id=deployment_id, status=BuildStatus.QUEUED)
    if newer_than is not None:
        queued = queued.filter(pk__lt=newer_than)
    queued.update(status=BuildStatus.SUPERSEDED, error=why, finished=timezone.now())


def take_next(deployment: Deployment) -> Build | None:
    """The release to run now (with the deployment's lease held): the newest queued one, a build its
    worker left running, or one built whose switch its worker left half-way. Whatever is older will not run."""
    pending = list(Build.objects.filter(deployment=deployment, status__in=PENDING).select_related("source__deployment__project")[:50])
    if not pending:
        return _built_not_running(deployment)
    newest = pending[0]
    supersede(deployment.pk, "superseded by a newer release", newer_than=newest.pk)
    for left in pending[1:]:
        if left.status == BuildStatus.RUNNING:
            left.fail(_running_step(left), "interrupted: the worker running it stopped, and a newer release was queued")
    # (Waiting for CI, in external build mode, a build is running between passes by design.)
    if newest.status == BuildStatus.RUNNING and not builds_externally() and newest.attempts >= MAX_ATTEMPTS:
        newest.fail(_running_step(newest), f"the worker running this build stopped {newest.attempts} times; not trying again")
        return None
    return newest


def _built_not_running(deployment: Deployment) -> Build | None:
    """The newest release when it was built but never ran: its worker stopped between the build and
    the switch to it (a release the runtime refused is failed, not this)."""
    newest = Build.objects.filter(deployment=deployment).order_by("-pk").first()
    if newest is None or newest.status != BuildStatus.SUCCEEDED or newest.pk == deployment.release_id:
        return None
    return newest if deployment.release_id is None or newest.pk > deployment.release_id else None


def _running_step(build: Build) -> str:
    return next((s["name"] for s in build.steps if s["status"] == BuildStatus.RUNNING), "clone")


def prune(deployment: Deployment) -> set[str]:
    """Keep the artifacts of the last DIPLOI_RELEASES_KEPT successful releases (and the one running);
    the older ones are marked pruned. Returns the commits whose artifacts stay."""
    succeeded = Build.objects.filter(deployment=deployment, status=BuildStatus.SUCCEEDED, pruned=False).exclude(commit="")
    kept = list(succeeded.values_list("pk", "commit")[: settings.DIPLOI_RELEASES_KEPT])
    commits = {c for _, c in kept}
    running = Deployment.objects.filter(pk=deployment.pk).values_list("release__commit", flat=True).first()
    if running:
        commits.add(running)
    succeeded.exclude(pk__in=[pk for pk, _ in kept]).exclude(commit__in=commits).update(pruned=True)
    return commits
