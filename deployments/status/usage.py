"""CPU and memory per container over time, for the Overview's resource graphs.

The monitor keeps a raw point per container every SAMPLE_EVERY (with the deployment's Sample), and once a
minute rolls complete buckets up into averages: raw points into per-minute ones, per-minute ones into
per-10-minute ones. Each tier is kept for its own time, so a container has at most ROWS_PER_CONTAINER
rows (360 raw + 1,440 per minute + 1,008 per 10 minutes = 2,808). A window of the graph reads its own
tier, and the finer ones after that tier's newest point.
"""

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Avg, Max, Min
from django.utils import timezone

from deployments.models import Deployment, Usage
from deployments.status.samples import SAMPLE_EVERY
from deployments.status.tree import StatusTree

RAW = int(SAMPLE_EVERY.total_seconds())


@dataclass(frozen=True)
class Tier:
    step: int  # seconds a point stands for
    keep: timedelta


TIERS = (  # each after the first is rolled up from the one before it
    Tier(RAW, timedelta(hours=1)),
    Tier(60, timedelta(days=1)),
    Tier(600, timedelta(days=7)),
)
ROWS_PER_CONTAINER = sum(int(t.keep.total_seconds()) // t.step for t in TIERS)


@dataclass(frozen=True)
class Window:
    label: str
    span: timedelta
    step: int  # the tier read


WINDOWS = {
    "1m": Window("1 min", timedelta(minutes=1), RAW),
    "1h": Window("1 hour", timedelta(hours=1), RAW),
    "1d": Window("1 day", timedelta(days=1), 60),
    "7d": Window("7 days", timedelta(days=7), 600),
}
DEFAULT_WINDOW = "1h"


def points_of(d: Deployment, tree: StatusTree, at: datetime) -> list[Usage]:
    """The raw points of a deployment's observation: one per container the runtime gave figures for."""
    return [
        Usage(deployment=d, container=c.name, step=RAW, at=at, cpu_percent=c.cpu_percent or 0.0, memory_bytes=c.memory_bytes or 0)
        for c in tree.containers
        if c.cpu_percent is not None or c.memory_bytes is not None
    ]


def _floor(at: datetime, step: int) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // step * step, tz=at.tzinfo)


def roll_up(now: datetime | None = None) -> int:
    """Average every complete bucket not yet rolled up (also those a stopped monitor missed, while their
    source points are kept), then forget what each tier keeps no longer. Safe to run twice or in two
    processes at once: a bucket is one row per container (a unique constraint), written once."""
    now = now or timezone.now()
    written = 0
    for source, tier in itertools.pairwise(TIERS):
        first = Usage.objects.filter(step=source.step, at__gte=now - source.keep).aggregate(first=Min("at"))["first"]
        if first is None:
            continue
        done = Usage.objects.filter(step=tier.step).aggregate(last=Max("at"))["last"]
        bucket = _floor(max(done + timedelta(seconds=tier.step), first) if done else first, tier.step)
        while bucket + timedelta(seconds=tier.step) <= now:
            end = bucket + timedelta(seconds=tier.step)
            averages = (
                Usage.objects.filter(step=source.step, at__gte=bucket, at__lt=end)
                .values("deployment_id", "container")
                .annotate(cpu=Avg("cpu_percent"), memory=Avg("memory_bytes"))
            )
            rows = [
                Usage(
                    deployment_id=a["deployment_id"],
                    container=a["container"],
                    step=tier.step,
                    at=bucket,
                    cpu_percent=a["cpu"],
                    memory_bytes=round(a["memory"]),
                )
                for a in averages
            ]
            Usage.objects.bulk_create(rows, ignore_conflicts=True)
            written += len(rows)
            bucket = end
    for tier in TIERS:
        Usage.objects.filter(step=tier.step, at__lt=now - tier.keep).delete()
    return written


def series(d: Deployment, window: Window, now: datetime | None = None) -> dict:
    """The window's points of every container, as the graph draws them: times (Unix seconds) and, per
    container, CPU % and memory bytes at each time (None where a container has no point). Read from the
    window's tier, and after its newest point from the finer tiers (what is not rolled up yet), so every
    window reaches the newest point. A query per tier."""
    now = now or timezone.now()
    since = now - window.span
    found: list[tuple[str, datetime, float, int]] = []
    for tier in sorted((t for t in TIERS if t.step <= window.step), key=lambda t: -t.step):
        rows = list(
            Usage.objects.filter(deployment=d, step=tier.step, at__gte=since)
            .order_by("at", "container")
            .values_list("container", "at", "cpu_percent", "memory_bytes")
        )
        if rows:
            found += rows
            since = rows[-1][1] + timedelta(seconds=tier.step)
    times: list[int] = []
    cpu: dict[str, dict[int, float]] = {}
    memory: dict[str, dict[int, int]] = {}
    for container, at, c, m in found:
        t = int(at.timestamp())
        if not times or times[-1] != t:
            times.append(t)
        cpu.setdefault(container, {})[t] = round(c, 1)
        memory.setdefault(container, {})[t] = m
    containers = sorted(cpu)
    return {
        "step": window.step,
        "from": int((now - window.span).timestamp()),
        "to": int(now.timestamp()),
        "times": times,
        "containers": containers,
        "cpu": [[cpu[name].get(t) for t in times] for name in containers],
        "memory": [[memory[name].get(t) for t in times] for name in containers],
    }
