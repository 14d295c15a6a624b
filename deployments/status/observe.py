"""A deployment's status tree as it is now: the runtime's observation, with its latest builds."""

from deployments.models import Build, Deployment
from deployments.provisioning.spec import current_spec
from deployments.runtimes import get_runtime
from deployments.runtimes.base import Observation
from deployments.status.tree import BuildInfo, StatusTree, derive

RECENT_BUILDS = 5


def status_tree(d: Deployment, observation: Observation | None = None) -> StatusTree:
    """The tree for `d`, observing it unless the caller did (the monitor's batch)."""
    if observation is None:
        spec = current_spec(d)
        observation = get_runtime().observe([spec])[d.pk] if spec.services else Observation()
    return derive(observation, d.state, d.enabled, d.state_reason, build_infos(d))


def build_infos(d: Deployment) -> tuple[BuildInfo, ...]:
    return tuple(BuildInfo(b.commit, b.status, b.progress, b.error, is_release=b.pk == d.release_id) for b in recent_builds(d))


def recent_builds(d: Deployment) -> list[Build]:
    prefetched = getattr(d, "recent_builds", None)  # the monitor fetches them for all deployments at once
    return prefetched if prefetched is not None else list(d.builds.all()[:RECENT_BUILDS])
