"""The outbox: a change's work (an Intent row, written in the change's transaction by the actions)
reaches the task queue even when the queue was away or the process died before sending it."""

import logging
from datetime import datetime, timedelta

import kombu.exceptions
import redis
from celery import current_app
from django.utils import timezone

from deployments.models import Intent

log = logging.getLogger(__name__)
QUEUE_ERRORS = (kombu.exceptions.OperationalError, redis.RedisError, OSError)
REPLAY_AFTER = timedelta(seconds=10)  # younger intents are still being sent by the request that made them
REPLAY_BATCH = 200


def replay(now: datetime | None = None) -> int:
    """Send the intents the task queue could not take when they were made (oldest first); stops at
    the first refusal (the queue is still away). Returns how many were sent."""
    now = now or timezone.now()
    sent = 0
    for intent in Intent.objects.filter(created__lt=now - REPLAY_AFTER)[:REPLAY_BATCH]:
        try:
            current_app.send_task(intent.task, args=[intent.deployment_id, *intent.args], kwargs=intent.kwargs)
        except QUEUE_ERRORS as e:
            log.warning("reconciler: the task queue is still unreachable (%s); %s waits", e, intent.task)
            break
        Intent.objects.filter(pk=intent.pk).delete()
        sent += 1
    return sent
