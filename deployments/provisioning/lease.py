"""One worker at a time changes a deployment's processes: a lease on its row, taken with a single
conditional UPDATE (so it holds across worker processes and machines, on SQLite and PostgreSQL
alike), never waited for, renewed while the work goes on, and lapsing when its worker dies."""

import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psutil
from django.db import DatabaseError, close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from deployments.models import Deployment
from deployments.runtimes.base import TransientFailure

LEASE = timedelta(seconds=120)
HOST = socket.gethostname()[:40]
RENEW_EVERY = 30.0  # seconds


class Busy(TransientFailure):
    """Another worker is changing this deployment; the task is retried later."""

    def __init__(self, deployment_id: int) -> None:
        super().__init__(f"deployment {deployment_id} is being changed by another worker")


def acquire(deployment_id: int) -> str | None:
    """A token when the lease is ours now, None when someone else's has not lapsed. A lease whose
    holder was a process of this machine that is gone (a worker killed mid-task) is taken over at
    once instead of after it lapses."""
    token, now = f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}", timezone.now()
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    taken = Deployment.objects.filter(free, pk=deployment_id).update(lease_owner=token, lease_until=now + LEASE)
    if not taken:
        holder = Deployment.objects.filter(pk=deployment_id).values_list("lease_owner", flat=True).first()
        if holder and _dead_here(holder):
            taken = Deployment.objects.filter(pk=deployment_id, lease_owner=holder).update(lease_owner=token, lease_until=now + LEASE)
    return token if taken else None


def _dead_here(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != HOST or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        return psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def release(deployment_id: int, token: str) -> None:
    Deployment.objects.filter(pk=deployment_id, lease_owner=token).update(lease_owner="", lease_until=None)


@contextmanager
def held(deployment_id: int) -> Iterator[bool]:
    """True inside when the lease is ours (renewed until the block ends), False when it is taken."""
    token = acquire(deployment_id)
    if token is None:
        yield False
        return
    done = threading.Event()

    def renew() -> None:
        try:
            while not done.wait(RENEW_EVERY):
                try:
                    Deployment.objects.filter(pk=deployment_id, lease_owner=token).update(lease_until=timezone.now() + LEASE)
                except DatabaseError:
                    logging.getLogger(__name__).warning("could not renew the lease on deployment %s", deployment_id)
                    close_old_connections()
        finally:
            connection.close()  # this thread's own

    renewer = threading.Thread(target=renew, name=f"lease-{deployment_id}", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        done.set()
        renewer.join()
        release(deployment_id, token)
