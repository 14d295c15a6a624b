"""CPU and memory samples of deployments, for the Overview's chart and the project list."""

from datetime import datetime, timedelta

from django.utils import timezone

from deployments.models import Deployment, Sample
from deployments.status.tree import StatusTree

SAMPLE_EVERY = timedelta(seconds=10)
KEEP_SAMPLES = timedelta(hours=24)


def sample_of(d: Deployment, tree: StatusTree, at: datetime) -> Sample:
    cpu = sum(c.cpu_percent or 0 for c in tree.containers)
    memory = sum(c.memory_bytes or 0 for c in tree.containers)
    return Sample(deployment=d, at=at, cpu_percent=cpu, memory_bytes=memory)


def sample_due(last: datetime | None, now: datetime) -> bool:
    """One CPU/memory sample per SAMPLE_EVERY is kept for the chart."""
    return last is None or last <= now - SAMPLE_EVERY


def record_sample(d: Deployment, tree: StatusTree) -> Sample:
    """The page's own observation, kept as a sample when one is due; returned either way."""
    now = timezone.now()
    sample = sample_of(d, tree, now)
    if sample_due(Sample.objects.filter(deployment=d).order_by("-at").values_list("at", flat=True).first(), now):
        sample.save()
        Sample.objects.filter(deployment=d, at__lt=now - KEEP_SAMPLES).delete()
    return sample


def forget_old(deployment_ids: list[int], now: datetime) -> None:
    Sample.objects.filter(deployment__in=deployment_ids, at__lt=now - KEEP_SAMPLES).delete()
