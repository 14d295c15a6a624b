"""What a deployment looks like right now: the runtime's observation turned into a status tree."""

from datetime import datetime, timedelta

from django.utils import timezone

from deployments.models import Deployment, Sample
from deployments.runtimes import get_runtime
from deployments.runtimes.base import Colour, ItemState, Observation
from deployments.spec import current_spec
from deployments.status import BuildInfo, StatusTree, derive

SAMPLE_EVERY = timedelta(seconds=10)
KEEP_SAMPLES = timedelta(hours=24)


def status_tree(d: Deployment, observation: Observation | None = None) -> StatusTree:
    """The tree for `d`; its five latest builds may come prefetched (the monitor's batch)."""
    if observation is None:
        spec = current_spec(d)
        observation = get_runtime().observe([spec])[d.pk] if spec.services else Observation()
    builds = tuple(BuildInfo(b.commit, b.status, b.progress, b.error, is_release=b.pk == d.release_id) for b in recent_builds(d))
    return derive(observation, d.state, d.enabled, d.state_reason, builds)


def recent_builds(d: Deployment) -> list:
    prefetched = getattr(d, "recent_builds", None)  # the monitor fetches them for all deployments at once
    return prefetched if prefetched is not None else list(d.builds.all()[:5])


def stored_tree(d: Deployment) -> StatusTree:
    """The tree the monitor stored last (no runtime call): what the websocket renders from."""
    status = d.status or {}
    tree = status.get("tree", {})

    def items(branch: str) -> tuple[ItemState, ...]:
        # [name, colour, message, restarts, started_at]; trees stored before restarts were kept have three fields.
        rows = [(*row, 0, None)[:5] for row in tree.get(branch, [])]
        return tuple(ItemState(name, Colour(colour), message, restarts=restarts, started_at=started) for name, colour, message, restarts, started in rows)

    colour = Colour(status["colour"]) if status.get("colour") else Colour.PENDING
    return StatusTree(colour, status.get("reason", "Waiting for the monitor"), items("storage"), items("builds"), items("containers"), items("services"))


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
