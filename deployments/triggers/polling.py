"""Polling: push to deploy for repositories that cannot call back (a local path, a host without
webhooks). Each followed repository's branch tips are read with one `git ls-remote` however many
deployments follow it, every DIPLOI_POLL_INTERVAL seconds; errors back off; a repository whose
webhook has been heard from is only looked at as a slow safety net."""

import logging
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from deployments import actions
from deployments.models import Deployment, Poll, State, Trigger, Webhook
from projects import git
from projects.models import Project

log = logging.getLogger(__name__)
SAFETY_NET = 10  # times the interval, for a repository whose webhook works
HEARD_WITHIN = timedelta(days=1)
MAX_BACKOFF = timedelta(hours=1)
POLLED = [s for s in State.values if s != State.DELETING]


def followed() -> dict[str, list[Project]]:
    """Repository → the projects with a deployment that deploys its pushes."""
    projects = Project.objects.filter(
        deployments__auto_deploy=True, deployments__pinned_at__isnull=True, deployments__state__in=POLLED
    ).distinct()
    found: dict[str, list[Project]] = {}
    for project in projects:
        found.setdefault(project.repository, []).append(project)
    return found


def poll_due(now: datetime | None = None) -> int:
    """Look at every followed repository whose turn has come; returns how many were read."""
    now = now or timezone.now()
    read = 0
    for repository, projects in followed().items():
        poll, _ = Poll.objects.get_or_create(repository=repository, defaults={"next_at": now})
        if poll.next_at > now:
            continue
        read += 1
        try:
            heads = git.ls_remote_heads(repository)
        except git.GitError as e:
            poll.failures += 1
            poll.last_error = str(e)[:500]
            delay = min(timedelta(seconds=settings.DIPLOI_POLL_INTERVAL) * 2**poll.failures, MAX_BACKOFF)
            poll.next_at = now + delay
            poll.save()
            log.warning("polling %s failed (%s times); next look in %s: %s", repository, poll.failures, delay, e)
            continue
        for project in projects:
            for branch in Deployment.objects.filter(project=project).values_list("branch", flat=True).distinct():
                if branch in heads:
                    actions.do_receive_push(project, branch, heads[branch], trigger=Trigger.POLL, actor="poll")
        heard = Webhook.objects.filter(project__in=projects, last_delivery__gte=now - HEARD_WITHIN).exists()
        poll.failures, poll.last_error, poll.checked = 0, "", now
        poll.next_at = now + timedelta(seconds=settings.DIPLOI_POLL_INTERVAL * (SAFETY_NET if heard else 1))
        poll.save()
    return read


def run(stop: threading.Event, every: float = 1.0) -> None:
    """The poller's loop (a thread of the monitor), until `stop` is set: a slow repository delays
    only the polling of others, never the monitor's observation."""
    while not stop.wait(every):
        try:
            poll_due()
        except Exception:  # noqa: BLE001 - e.g. the database restarting: try again next second
            log.exception("polling failed")
        finally:
            close_old_connections()
