"""CPU and memory samples of deployments (all containers together), for the figures on the Overview and
the project list: only the latest is read. The graphs' points per container are in usage.py."""

from datetime import datetime, timedelta

from deployments.models import Deployment, Sample
from deployments.status.tree import StatusTree

SAMPLE_EVERY = timedelta(seconds=10)
KEEP_SAMPLES = timedelta(hours=1)


def sample_of(d: Deployment, tree: StatusTree, at: datetime) -> Sample:
    cpu = sum(c.cpu_percent or 0 for c in tree.containers)
    memory = sum(c.memory_bytes or 0 for c in tree.containers)
    return Sample(deployment=d, at=at, cpu_percent=cpu, memory_bytes=memory)


def sample_due(last: datetime | None, now: datetime) -> bool:
    """One CPU/memory sample (and graph point) per SAMPLE_EVERY is kept."""
    return last is None or last <= now - SAMPLE_EVERY


def forget_old(deployment_ids: list[int], now: datetime) -> None:
    Sample.objects.filter(deployment__in=deployment_ids, at__lt=now - KEEP_SAMPLES).delete()
