"""The monitor: one batched look at every active deployment per tick.

Each tick stores a deployment's status tree when it changed, keeps a CPU/memory sample (and a point
per container for the resource graphs) when one is due, rolls those points up once a minute, and
tells the viewers of what moved, all in a few queries and one publish per tick. A failure on one
deployment is logged and the others carry on; an unreachable runtime skips the tick.
"""

import logging
import time
from collections.abc import Callable

from django.db import transaction
from django.db.models import OuterRef, Prefetch, Subquery
from django.utils import timezone

from deployments.live import events
from deployments.models import Build, Deployment, EnvVar, Sample, State, Usage
from deployments.provisioning.reconcile import reconcile
from deployments.provisioning.spec import current_spec
from deployments.runtimes import get_runtime
from deployments.runtimes.base import DeploymentSpec, TransientFailure
from deployments.status import store
from deployments.status.observe import RECENT_BUILDS, status_tree
from deployments.status.samples import forget_old, sample_due, sample_of
from deployments.status.usage import points_of, roll_up

log = logging.getLogger(__name__)
OBSERVED = (State.RUNNING, State.STOPPED)
RECONCILE_EVERY = 30.0  # seconds
ROLL_UP_EVERY = 60.0  # seconds: the resource graphs' per-minute averages
STATUS_BATCH = 500  # status trees written per statement
CHUNK = 100  # deployments observed, stored and published together (a change announced meanwhile waits for one chunk)
ENV_UPDATED = Subquery(EnvVar.objects.filter(deployment=OuterRef("pk")).order_by("-updated").values("updated")[:1])


class Monitor:
    def __init__(self) -> None:
        self.runtime = get_runtime()
        # Building a spec reads the stack file from git: do it again only when what it depends on changed.
        self._specs: dict[int, tuple[tuple, DeploymentSpec]] = {}
        self._reconciled = float("-inf")
        self._rolled_up = float("-inf")

    def spec(self, d: Deployment) -> DeploymentSpec:
        key = (d.commit, d.release_id, d.enabled, d.branch, d.env_updated)
        cached = self._specs.get(d.pk)
        if cached is None or cached[0] != key:
            cached = self._specs[d.pk] = (key, current_spec(d))
        return cached[1]

    def reconcile_if_due(self, now: float) -> None:
        """Drive stuck deployments again, at most every RECONCILE_EVERY seconds; a queue that is away
        is tried again next time."""
        if now - self._reconciled < RECONCILE_EVERY:
            return
        self._reconciled = now
        try:
            reconcile()
        except Exception as e:  # noqa: BLE001 - the queue being away must not stop the observing
            log.warning("monitor: reconciling failed, tried again later: %s", e)

    def roll_up_if_due(self, now: float) -> None:
        if now - self._rolled_up < ROLL_UP_EVERY:
            return
        self._rolled_up = now
        try:
            roll_up()
        except Exception:  # noqa: BLE001 - the graphs' averages must not stop the observing; tried next minute
            log.exception("monitor: rolling up resource points failed")

    def sync_routes(self) -> None:
        """A router that lost its routes (it restarted) gets every deployment's again from the database."""
        try:
            if self.runtime.sync_routes(self.routed_specs):
                log.info("monitor: the router had no routes; every deployment's was loaded again")
        except Exception:  # noqa: BLE001 - the router being away must not stop the observing; tried next tick
            log.exception("monitor: loading the router's routes failed")

    def routed_specs(self) -> list[DeploymentSpec]:
        routed = Deployment.objects.exclude(state=State.DELETING).select_related("project", "release").annotate(env_updated=ENV_UPDATED)
        return list(self.specs_of(routed).values())

    def specs_of(self, deployments) -> dict[int, DeploymentSpec]:
        """Each deployment's spec by id; one that cannot be described is logged and left out, not the others."""
        specs = {}
        for d in deployments:
            try:
                specs[d.pk] = self.spec(d)
            except Exception:  # noqa: BLE001 - one broken deployment must not stop the others
                log.exception("monitor: cannot describe deployment %s", d.pk)
        return specs

    def tick(self, only: set[int] | None = None, between: Callable[[], None] | None = None) -> int:
        """Observe every active deployment once (or `only` those, which the runtime said changed); with
        `between`, CHUNK at a time, calling it after each chunk (the monitor looks at what its watches
        saw meanwhile: a change waits for a chunk, not for a whole tick of ten thousand); returns how
        many were observed."""
        if only is None:
            self.reconcile_if_due(time.monotonic())
            self.roll_up_if_due(time.monotonic())
            self.sync_routes()
        observed = Deployment.objects.filter(state__in=OBSERVED)
        if only is not None:
            observed = observed.filter(pk__in=only)
        ids = list(observed.order_by("pk").values_list("pk", flat=True))
        size = CHUNK if between is not None else max(1, len(ids))  # without watches, one batched look
        count = 0
        for start in range(0, len(ids), size):
            try:
                count += self.look(ids[start : start + size])
            except TransientFailure as e:
                log.warning("monitor: runtime not answering, tick skipped: %s", e)
                return count
            if between is not None:
                between()
        if only is None:
            kept = set(ids)
            self._specs = {pk: v for pk, v in self._specs.items() if pk in kept}
        return count

    def look(self, ids: list[int]) -> int:
        """Observe these deployments, store what moved and tell their viewers (TransientFailure: the
        runtime is not answering)."""
        latest_sample = Sample.objects.filter(deployment=OuterRef("pk")).order_by("-at").values("at")[:1]
        deployments = list(
            Deployment.objects.filter(pk__in=ids, state__in=OBSERVED)
            .select_related("project", "release")
            .annotate(env_updated=ENV_UPDATED, last_sample=Subquery(latest_sample))
            .prefetch_related(
                Prefetch("builds", queryset=Build.objects.order_by("-created", "-pk")[:RECENT_BUILDS], to_attr="recent_builds")
            )
        )
        specs = self.specs_of(deployments)
        observations = self.runtime.observe([s for s in specs.values() if s.services])
        now = timezone.now()
        samples: list[Sample] = []
        points: list[Usage] = []
        changed: list[Deployment] = []
        moved_rows: list[Deployment] = []
        for d in deployments:
            if d.pk not in observations:
                continue
            try:
                tree = status_tree(d, observations[d.pk])
                status = store.to_json(tree)
                moved, due = status != d.status, sample_due(d.last_sample, now)
                if moved:
                    d.status = status
                    moved_rows.append(d)
                if due:
                    samples.append(sample_of(d, tree, now))
                    points += points_of(d, tree, now)
                if moved or due:  # the colour, the tree or the CPU figure changed
                    changed.append(d)
            except Exception:  # noqa: BLE001
                log.exception("monitor: cannot update deployment %s", d.pk)
        Deployment.objects.bulk_update(moved_rows, ["status"], batch_size=STATUS_BATCH)  # its batches in one transaction
        if samples:
            with transaction.atomic():  # a page that sees the new sample sees its graph points too
                Sample.objects.bulk_create(samples)
                Usage.objects.bulk_create(points, ignore_conflicts=True)
            forget_old([s.deployment_id for s in samples], now)
        events.publish_many([d.pk for d in changed], sorted({d.project_id for d in changed}))
        return len(observations)
