"""The reconciler: a deployment whose state has not moved for longer than its step can take is driven
again. A worker killed mid-task, a task lost with Redis, or a queue that was away when the change was
made leave nothing stuck: the tasks are idempotent, so running one again finishes the job."""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments.models import Deployment, State, StateTransition
from deployments.provisioning import tasks
from deployments.provisioning.outbox import replay
from projects.models import builds_externally

log = logging.getLogger(__name__)


def bounds() -> dict[str, timedelta]:
    """How long each in-between state may last before it counts as stuck."""
    step = timedelta(seconds=settings.DIPLOI_RECONCILE_AFTER)
    bounded = {State.PENDING: step, State.PROVISIONING: step, State.DELETING: step}
    if not builds_externally():  # waiting for CI may take as long as CI takes
        bounded[State.BUILDING] = step + timedelta(seconds=3 * settings.DIPLOI_BUILD_STEP_TIMEOUT)
    return bounded


def reconcile(now: datetime | None = None, restarted: bool = False) -> list[int]:
    """Send what the queue could not take, then re-drive every stuck deployment once (its clock
    restarts, and its history says so); returns their ids. With `restarted` (a worker has just
    started: what a killed one was doing is lost with it) every deployment in between states is
    driven at once; one another worker is still changing keeps its turn (the lease)."""
    now = now or timezone.now()
    replay(now)
    driven = []
    for state, bound in bounds().items():
        before = now if restarted else now - bound
        for d in Deployment.objects.filter(state=state, state_since__lt=before).only("pk", "state", "state_since"):
            with transaction.atomic():
                if not Deployment.objects.filter(pk=d.pk, state=state, state_since=d.state_since).update(state_since=now):
                    continue  # moved meanwhile
                minutes = max(1, round((now - d.state_since).total_seconds() / 60))
                why = "a worker started" if restarted else f"no progress for {minutes} min"
                reason = f"{why}: {'deleting' if state == State.DELETING else 'provisioning'} again"
                StateTransition.objects.create(deployment_id=d.pk, from_state=state, to_state=state, actor="reconciler", reason=reason)
                # Queued inside the transaction: if the queue is away this raises, nothing is
                # recorded, and the next pass tries again (a task queued twice is harmless).
                (tasks.destroy if state == State.DELETING else tasks.provision).delay(d.pk, actor="reconciler")
            log.warning("reconciler: deployment %s was %s for %s min; driven again", d.pk, state, minutes)
            driven.append(d.pk)
    return driven
