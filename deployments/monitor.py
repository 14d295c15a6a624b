"""The monitor: one batched look at every active deployment per tick.

Each tick stores a deployment's status tree when it changed, keeps a CPU/memory sample, and tells
its viewers (the status event re-renders the live part, CPU included). A failure on one deployment
is logged and the others carry on; an unreachable runtime skips the tick.
"""

import logging

from django.db.models import Max

from deployments import events
from deployments.live import record_sample, status_tree
from deployments.models import Deployment, State
from deployments.runtimes import get_runtime
from deployments.runtimes.base import DeploymentSpec, TransientFailure
from deployments.spec import current_spec
from deployments.status import StatusTree

log = logging.getLogger(__name__)
OBSERVED = (State.RUNNING, State.STOPPED)


class Monitor:
    def __init__(self) -> None:
        self.runtime = get_runtime()
        # Building a spec reads the stack file from git: do it again only when what it depends on changed.
        self._specs: dict[int, tuple[tuple, DeploymentSpec]] = {}

    def spec(self, d: Deployment) -> DeploymentSpec:
        key = (d.commit, d.release_id, d.enabled, d.branch, d.env_updated)
        cached = self._specs.get(d.pk)
        if cached is None or cached[0] != key:
            cached = self._specs[d.pk] = (key, current_spec(d))
        return cached[1]

    def tick(self) -> int:
        """Observe every active deployment once; returns how many were observed."""
        deployments = list(
            Deployment.objects.filter(state__in=OBSERVED).select_related("project", "release").annotate(env_updated=Max("env_vars__updated"))
        )
        specs = {}
        for d in deployments:
            try:
                specs[d.pk] = self.spec(d)
            except Exception:  # noqa: BLE001 - one broken deployment must not stop the others
                log.exception("monitor: cannot describe deployment %s", d.pk)
        try:
            observations = self.runtime.observe([s for s in specs.values() if s.services])
        except TransientFailure as e:
            log.warning("monitor: runtime not answering, tick skipped: %s", e)
            return 0
        projects: set[int] = set()
        for d in deployments:
            if d.pk not in observations:
                continue
            try:
                tree = status_tree(d, observations[d.pk])
                record_sample(d, tree)
                status = stored_status(tree)
                if status != d.status:
                    Deployment.objects.filter(pk=d.pk).update(status=status)
                events.publish(d.pk, events.STATUS)
                projects.add(d.project_id)
            except Exception:  # noqa: BLE001
                log.exception("monitor: cannot update deployment %s", d.pk)
        for project_id in projects:
            events.publish_project(project_id)
        self._specs = {pk: v for pk, v in self._specs.items() if pk in specs}
        return len(observations)


def stored_status(tree: StatusTree) -> dict:
    """The tree as stored: colours and messages, not the samples that change every tick."""
    return {
        "colour": tree.colour.value,
        "reason": tree.reason,
        "tree": {branch: [[i.name, i.colour.value, i.message] for i in getattr(tree, branch)] for branch in tree.branches},
    }
